"""The bench's packed row (``bench.pack=N``): N members packed against the same N runs one after another.

Both sides run on the fast path (``data.loader=gpu``, K steps per Lightning step, a CUDA graph on
CUDA) in this process, with the bench's warm-up and timed epochs: the N runs are the bench's config
with seeds ``seed .. seed+N-1``, each trained by itself through Lightning (``sequential``), then all
N as one pack (``packed``). Reported: runs·epochs per second both ways (N runs trained for one epoch
count N) and their ratio, packed / sequential.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lab.bench import lightning_pipeline, timed_fit
from cifar_lab.errors import UserError
from cifar_lab.packing.build import build_pack
from cifar_lab.packing.grouping import unpackable
from cifar_lab.resume import flatten


def member_configs(cfg: DictConfig, n: int) -> list[DictConfig]:
    """The bench's config N times, with seeds seed .. seed+N-1, on the fast path."""
    out = []
    for k in range(n):
        member = copy.deepcopy(cfg)
        with open_dict(member):
            member.seed = int(cfg.seed) + k
            member.data.loader = "gpu"
        out.append(member)
    return out


def packed_rows(cfg: DictConfig, device: torch.device) -> list[dict[str, Any]]:
    """Two bench rows, ``sequential xN`` and ``packed xN``; ``s_per_epoch`` is one epoch of all N runs."""
    from cifar_lab.recording import device_name

    n = int(cfg.bench.pack)
    reason = unpackable(flatten(OmegaConf.to_container(cfg, resolve=True)), {})
    if reason is not None:  # the launcher would run these one by one; a packed row would time something else
        raise UserError(f"bench.pack={n}: these settings do not pack ({reason}). Time a packable configuration.")
    members = member_configs(cfg, n)
    sequential, n_images = 0.0, 0
    for member in members:
        seconds, n_images = lightning_pipeline(copy.deepcopy(member), "gpu")
        sequential += seconds
    print(f"  sequential x{n}: {sequential:.4f} s/epoch (all {n} runs)", flush=True)
    packed, _ = timed_fit(cfg, lambda **extras: build_pack(members, **extras))
    print(f"  packed x{n}: {packed:.4f} s/epoch (all {n} runs)", flush=True)
    common = {
        "pack": n,
        "device": device_name(device),
        "batch_size": cfg.data.batch_size,
        "experiment": cfg.name,
        "precision": str(cfg.trainer.precision),
        "images_per_epoch": n_images,
        "data": cfg.data.source,
        "synthetic": cfg.data.source == "synthetic",
    }
    return [
        {"pipeline": f"{name} x{n}", "s_per_epoch": round(s, 4), "images_per_s": round(n * n_images / s, 1),
         "runs_epochs_per_s": round(n / s, 4), "vs_sequential": round(sequential / s, 3), **common}
        for name, s in (("sequential", sequential), ("packed", packed))
    ]  # fmt: skip


def print_packed(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    first = rows[0]
    title = (
        f"{first['experiment']} x{first['pack']} runs (seeds), fast path, batch {first['batch_size']}, "
        f"{first['device']}" + (", SYNTHETIC data" if first["synthetic"] else "")
    )
    table = Table(title=title)
    for col in ("pipeline", "s per epoch of all runs", "runs·epochs/s", "packed / sequential"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    for r in rows:
        table.add_row(
            r["pipeline"], f"{r['s_per_epoch']:.4f}", f"{r['runs_epochs_per_s']:.3f}", f"{r['vs_sequential']:.2f}x"
        )
    Console(width=120).print(table)
