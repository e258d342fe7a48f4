"""``python -m cifar_lab.bench experiment=p1a [overrides]``: the bench, one table of pipelines (:data:`PIPELINES`).

Each pipeline trains the same model on the same arrays in this process, for warm-up epochs and
then timed epochs (a training epoch plus a validation pass), and gives its rows:

- ``seed_style``: the seed's loader: PIL image + ToTensor + Normalize per image, a DataLoader with
  workers, pin_memory and persistent_workers, and a plain PyTorch loop;
- ``classic``: cifar_lab through Lightning with its DataLoader path (``data.loader=classic``);
- ``fast``: cifar_lab through Lightning with the fast path (``data.loader=gpu`` + ``speed``);
- ``raw``: a plain PyTorch loop over the same device-resident data, no Lightning;
- ``packed`` (added by ``bench.pack=N``): N runs (seeds seed..seed+N-1) one after another through
  Lightning on the fast path, then the same N as one pack: runs·epochs per second both ways;
- ``steps``: the packed numerical core's micro-bench, no Lightning and no data loading: N solo
  optimizer steps one after another against one packed step (member or grouped convolutions, with
  and without isolation), member-steps per second, the fastest of ``bench.epochs`` steps.

The bench data is the configured source (synthetic by default, so it runs anywhere); only
its size matters for timing. The clocks are in :mod:`cifar_lab.timing`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lab.build import build, build_data, build_module, capturable, element_dropout, seed_and_backends, use_host
from cifar_lab.configs import CONF_DIR
from cifar_lab.console import filter_warnings
from cifar_lab.distributed import placement
from cifar_lab.errors import EXIT_USER_ERROR, UserError, print_user_error
from cifar_lab.fast import StepEngine
from cifar_lab.files import write_bytes_atomic
from cifar_lab.plan import SpeedPlan, resolve_plan
from cifar_lab.schema import validate
from cifar_lab.timing import fastest, images_per_epoch, split_images, timed_epochs, timed_fit

Epoch = Callable[[int], None]
Row = dict[str, Any]


def prepared_data(cfg: DictConfig, plan: SpeedPlan):
    """The datamodule of ``cfg`` for ``plan``, its data loaded (the bench runs in one process)."""
    datamodule = build_data(cfg, plan)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def seed_style(cfg: DictConfig, device: torch.device) -> tuple[Epoch, Any]:
    """The seed's pipeline: per-image PIL + torchvision transforms in DataLoader workers."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from cifar_lab.data import CIFAR_MEAN, CIFAR_STD
    from cifar_lab.data.loaders import available_cpus

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])

    class PILDataset(Dataset):
        def __init__(self, x, y) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(self.x[i])), int(self.y[i])

    plan = SpeedPlan(device=str(device))  # the seed's own loop: fp32, eager, its own DataLoader, torch's defaults
    use_host(plan)
    datamodule = prepared_data(cfg, plan)
    module = build_module(cfg, datamodule.classes, plan)
    cpus = available_cpus()
    loaders = {}
    for split, shuffle, workers in (
        ("train", True, cfg.bench.seed_style_workers[0]),
        ("val", False, cfg.bench.seed_style_workers[1]),
    ):
        x, y = datamodule.tensors[split]
        w = min(workers, cpus)
        loaders[split] = DataLoader(
            PILDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy()),
            batch_size=cfg.data.batch_size,
            shuffle=shuffle,
            num_workers=w,
            pin_memory=device.type == "cuda",
            persistent_workers=w > 0,
        )
    net = module.net.to(device)
    opt = module.configure_optimizers()

    def epoch(e: int) -> None:
        net.train()
        for x, y in loaders["train"]:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad()
            objective, _ = module.loss_fn(net(x), y)
            objective.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for x, y in loaders["val"]:
                module.loss_fn(net(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
        net.train()

    return epoch, datamodule


def raw(cfg: DictConfig, device: torch.device) -> tuple[Epoch, Any]:
    """The fast path's own public pieces with no framework: its plan, datamodule (resident loader,
    device transform), module and StepEngine (K steps per call; a CUDA graph on CUDA), in a plain
    loop. ``fast`` against ``raw`` is then what Lightning costs."""
    import contextlib

    plan = resolve_plan(
        OmegaConf.to_container(cfg.speed),
        "gpu",
        device,
        1,
        str(cfg.trainer.precision),
        capturable(cfg),
        keep_nchw=element_dropout(cfg),
    )
    use_host(plan)
    datamodule = prepared_data(cfg, plan)
    module = build_module(cfg, datamodule.classes, plan).to(device)
    engine = StepEngine(module, module.configure_optimizers(), module.loss_fn, plan)
    train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    # cache_enabled=False: a cached cast would outlive the optimizer step that changes the weights.
    autocast = (
        (lambda: torch.autocast(device.type, dtype=plan.autocast_dtype, cache_enabled=False))
        if plan.autocast_dtype
        else contextlib.nullcontext
    )

    def epoch(e: int) -> None:
        module.train()
        train.sampler.set_epoch(e)
        for chunk in train:
            xs, ys = datamodule.on_after_batch_transfer(chunk, 0)
            with autocast():
                engine.run(xs, ys)
        module.eval()
        with torch.no_grad(), autocast():
            for chunk in val:
                for x, y in module.batches(datamodule.on_after_batch_transfer(chunk, 0)):
                    module.loss_fn(module(x), y)
        module.train()

    return epoch, datamodule


def lightning_pipeline(cfg: DictConfig, loader: str) -> tuple[float, Any]:
    """cifar_lab's own Trainer path, as ``python -m cifar_lab`` builds it, minus logging/checkpoints."""
    with open_dict(cfg):
        cfg.data.loader = loader
    return timed_fit(cfg, lambda **extras: build(cfg, **extras))


def common(cfg: DictConfig, device: torch.device) -> Row:
    from cifar_lab.recording import device_name

    return {"device": device_name(device), "batch_size": cfg.data.batch_size, "experiment": cfg.name,
            "precision": str(cfg.trainer.precision), "data": cfg.data.source,
            "synthetic": cfg.data.source == "synthetic"}  # fmt: skip


def epoch_row(cfg: DictConfig, device: torch.device, name: str) -> list[Row]:
    """One row of the main table: seconds per epoch of pipeline ``name``."""
    if name in ("classic", "fast"):
        seconds, parts = lightning_pipeline(copy.deepcopy(cfg), "classic" if name == "classic" else "gpu")
        n_images = images_per_epoch(parts.datamodule)
        n_train, n_val = split_images(parts.datamodule)
    else:
        epoch, datamodule = (seed_style if name == "seed_style" else raw)(cfg, device)
        n_images, (n_train, n_val) = images_per_epoch(datamodule), split_images(datamodule)
        seconds = timed_epochs(epoch, cfg.bench.warmup_epochs, cfg.bench.epochs, device)
    print(f"  {name}: {seconds:.4f} s/epoch", flush=True)
    row = {"pipeline": name, "s_per_epoch": round(seconds, 4), "images_per_s": round(n_images / seconds, 1),
           "images_per_epoch": n_images, "train_images": n_train, "val_images": n_val,
           **common(cfg, device)}  # fmt: skip
    if name == "seed_style":
        row["precision"] = "32-true"  # the seed ran fp32
    return [row]


def members(cfg: DictConfig, n: int) -> list[DictConfig]:
    """The bench's config N times, with seeds seed .. seed+N-1, on the fast path."""
    out = []
    for k in range(n):
        member = copy.deepcopy(cfg)
        with open_dict(member):
            member.seed, member.data.loader = int(cfg.seed) + k, "gpu"
        out.append(member)
    return out


def packed(cfg: DictConfig, device: torch.device) -> list[Row]:
    """``sequential xN`` and ``packed xN``: the N runs one after another, then as one pack (``bench.pack=N``);
    ``s_per_epoch`` is one epoch of all N runs; ``member_steps`` the optimizer steps the pack's members took."""
    from cifar_lab.configs import flatten
    from cifar_lab.packing.build import build_pack
    from cifar_lab.packing.grouping import unpackable

    n = int(cfg.bench.pack)
    if n < 1:
        raise UserError("bench.pipelines names packed: set bench.pack=N (N >= 1), the runs to pack.")
    reason = unpackable(flatten(OmegaConf.to_container(cfg, resolve=True)), {})
    if reason is not None:  # the launcher would run these one by one; a packed row would time something else
        raise UserError(f"bench.pack={n}: these settings do not pack ({reason}). Time a packable configuration.")
    runs, sequential, steps = members(cfg, n), 0.0, {"sequential": 0, "packed": 0}
    for member in runs:
        seconds, parts = lightning_pipeline(copy.deepcopy(member), "gpu")
        sequential, steps["sequential"] = sequential + seconds, steps["sequential"] + parts.trainer.global_step
    n_images, (n_train, n_val) = images_per_epoch(parts.datamodule), split_images(parts.datamodule)
    print(f"  sequential x{n}: {sequential:.4f} s/epoch (all {n} runs)", flush=True)
    pack_seconds, parts = timed_fit(cfg, lambda **extras: build_pack(runs, **extras))
    print(f"  packed x{n}: {pack_seconds:.4f} s/epoch (all {n} runs)", flush=True)
    steps["packed"] = parts.module.net.n * parts.trainer.global_step  # optimizer steps, counted by Lightning
    return [
        {"pipeline": f"{name} x{n}", "pack": n, "s_per_epoch": round(s, 4), "images_per_s": round(n * n_images / s, 1),
         "runs_epochs_per_s": round(n / s, 4), "vs_sequential": round(sequential / s, 3), "member_steps": steps[name],
         "images_per_epoch": n_images, "train_images": n * n_train,
         "val_images": n * n_val, **common(cfg, device)}
        for name, s in (("sequential", sequential), ("packed", pack_seconds))
    ]  # fmt: skip


def steps(cfg: DictConfig, device: torch.device) -> list[Row]:
    """The micro-bench: member-steps per second of N = ``bench.pack`` (5 if 0) members of the experiment's model,
    random float32 batches, SGD momentum 0.9: solo steps one after another against packed steps."""
    from cifar_lab.packing.loss import PackedLoss
    from cifar_lab.packing.stack import PackedNet
    from cifar_lab.packing.step import PackedStepEngine, member_param_groups

    n, batch, plan = int(cfg.bench.pack) or 5, int(cfg.data.batch_size), SpeedPlan(device=str(device))
    use_host(plan)
    nets = []
    for member in members(cfg, n):
        seed_and_backends(member)
        nets.append(build_module(member, [str(c) for c in range(10)], plan).net.to(device).float())
    x, y = torch.randn(n, batch, 3, 32, 32, device=device), torch.randint(0, 10, (n, batch), device=device)

    def solo() -> Callable[[], None]:
        def loss(logits: torch.Tensor, t: torch.Tensor):
            return (torch.nn.functional.cross_entropy(logits, t),) * 2

        engines = [StepEngine(m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), loss, plan)
                   for m in copy.deepcopy(nets)]  # fmt: skip
        return lambda: [e.step(x[k], y[k]) for k, e in enumerate(engines)] and None

    def pack(isolate: bool, conv: str = "member") -> Callable[[], None]:
        net = PackedNet(nets, conv=conv).to(device).train()
        opt = torch.optim.SGD(member_param_groups(net, lr=[0.01] * n, momentum=[0.9] * n))
        engine = PackedStepEngine(net, opt, PackedLoss([0.0] * n), isolate=isolate)
        return lambda: engine.step(x, y) and None

    timings = {"solo": solo(), "member": pack(True), "grouped": pack(True, "grouped"), "bare": pack(False)}
    rate = {k: round(n / fastest(f, max(cfg.bench.warmup_epochs, 1), cfg.bench.epochs, device), 2)
            for k, f in timings.items()}  # fmt: skip
    print(f"  steps: {rate} member-steps/s", flush=True)
    return [{"pipeline": "steps", "pack": n, **{f"{k}_member_steps_per_s": v for k, v in rate.items()},
             **common(cfg, device), "precision": "32-true"}]  # fmt: skip


# The bench's pipelines, in the order of bench.pipelines (bench.pack=N adds ``packed`` unless it names packed or
# steps): name -> rows.
PIPELINES: dict[str, Callable[[DictConfig, torch.device], list[Row]]] = {
    "seed_style": lambda cfg, device: epoch_row(cfg, device, "seed_style"),
    "classic": lambda cfg, device: epoch_row(cfg, device, "classic"),
    "fast": lambda cfg, device: epoch_row(cfg, device, "fast"),
    "raw": lambda cfg, device: epoch_row(cfg, device, "raw"),
    "packed": packed,
    "steps": steps,
}


def variant_cfg(cfg: DictConfig, variant: str) -> DictConfig:
    """``cfg`` with one ``bench.variants`` entry's ``key=value`` overrides (space-separated) applied and checked."""
    out = copy.deepcopy(cfg)
    items = variant.split()
    for item in items:
        key = item.partition("=")[0]
        if "=" not in item or OmegaConf.select(cfg, key, default=KeyError) is KeyError:
            raise UserError(
                f"bench.variants: {item!r} is not key=value with a key of the config (e.g. speed.cpu_threads=1)."
            )
    with open_dict(out):
        out.merge_with(OmegaConf.from_dotlist(items))
    validate(out)
    return out


def flops_per_image(cfg: DictConfig) -> tuple[float, float]:
    """FLOPs per image of a training step (forward, loss, backward) and of evaluation (forward), counted by
    :func:`cifar_lab.flops.count_flops` on the CPU in float32 on a batch of 2 (both are linear in the batch)."""
    from cifar_lab.flops import count_flops

    module = build_module(cfg, [str(c) for c in range(10)], SpeedPlan())
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])

    def train_step() -> None:
        module.loss_fn(module.net(x), y)[0].backward()

    def evaluate() -> None:
        with torch.no_grad():
            module.net(x)

    module.net.train()
    train = count_flops(train_step)
    module.net.eval()
    return train / 2, count_flops(evaluate) / 2


def dtype_of(precision: str) -> torch.dtype:
    """The matmul dtype a run's precision computes in (its peak is measured in it)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    return torch.float64 if precision.startswith("64") else torch.float32


def measure_peaks(
    device: torch.device, dtypes: set[torch.dtype], peaks: dict[torch.dtype, float], size: int | None
) -> None:
    """The machine's matmul peak per dtype with all of torch's default threads; the best of every call."""
    from cifar_lab.flops import peak_flops

    use_host(SpeedPlan(device=str(device)))
    for dtype in sorted(dtypes, key=str):
        peaks[dtype] = max(peaks.get(dtype, 0.0), peak_flops(device, dtype, size))


def add_flops(row: Row, per_image: tuple[float, float], peak: float) -> Row:
    """The row's counted GFLOP per epoch, achieved GFLOP/s and % of the measured peak."""
    if "s_per_epoch" not in row or "train_images" not in row:
        return row
    gflop = (row["train_images"] * per_image[0] + row["val_images"] * per_image[1]) / 1e9
    achieved = gflop / row["s_per_epoch"]
    return {**row, "train_mflop_per_image": round(per_image[0] / 1e6, 3),
            "eval_mflop_per_image": round(per_image[1] / 1e6, 3), "gflop_per_epoch": round(gflop, 3),
            "achieved_gflop_s": round(achieved, 3), "peak_gflop_s": round(peak / 1e9, 3),
            "pct_of_peak": round(100 * achieved / (peak / 1e9), 3)}  # fmt: skip


def run_bench(cfg: DictConfig) -> list[Row]:
    """Time every requested pipeline for every variant on the one device of ``cfg.trainer``, round-robin
    ``bench.rounds`` times (the fastest of each counts), with the machine's peak measured before and after."""
    where = placement(cfg.trainer)
    if not where.one_device:
        raise UserError("the bench times one device: set trainer.devices=1 (no strategy, one node), e.g. trainer=cpu.")
    on_gpu = torch.cuda.is_available() and where.accelerator != "cpu"
    device = torch.device("cuda" if on_gpu else "cpu")
    with open_dict(cfg):
        if cfg.data.source == "synthetic":
            cfg.data.n_train = cfg.data.n_train or (50_000 if on_gpu else 5_000)
            cfg.data.n_test = cfg.data.n_test or (10_000 if on_gpu else 1_000)
    validate(cfg)
    names = list(cfg.bench.pipelines)
    if cfg.bench.pack and not {"packed", "steps"} & set(names):  # bench.pack=N alone asks for the packed rows
        names.append("packed")
    variants = {v: variant_cfg(cfg, v) for v in dict.fromkeys(cfg.bench.variants or [""])}
    dtypes = {dtype_of(str(c.trainer.precision)) for c in variants.values()} | {torch.float32}
    peaks: dict[torch.dtype, float] = {}
    measure_peaks(device, dtypes, peaks, cfg.bench.peak_size)
    best: dict[tuple[str, str], Row] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    order = [(variant, name) for variant in variants for name in names]
    for r in range(cfg.bench.rounds):  # every other round backwards: a drifting load hits early and late rows alike
        for variant, name in order if r % 2 == 0 else order[::-1]:
            seed_and_backends(variants[variant])
            for row in PIPELINES[name](variants[variant], device):
                key, row = (variant, row["pipeline"]), {**row, "variant": variant}
                seconds.setdefault(key, []).append(row.get("s_per_epoch", 0.0))
                if key not in best or row.get("s_per_epoch", 0) < best[key].get("s_per_epoch", 0):
                    best[key] = row
    best = {key: best[key] for key in sorted(best, key=lambda k: order.index(k) if k in order else len(order))}
    measure_peaks(device, dtypes, peaks, cfg.bench.peak_size)
    per_image = {v: flops_per_image(c) for v, c in variants.items()}
    return [add_flops({**row, "rounds": cfg.bench.rounds, "s_per_epoch_each_round": seconds[key]},
                      per_image[key[0]], peaks[dtype_of(row["precision"])])
            for key, row in best.items()]  # fmt: skip


def print_table(rows: list[Row]) -> None:
    """The epoch pipelines' table, then the packed rows' and the micro-bench's."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=220)  # wide enough that headers and variants never wrap in logs
    epochs = [r for r in rows if "pack" not in r]
    if epochs:
        first = epochs[0]
        cuda = first["device"].startswith("cuda")
        unit, scale = ("TFLOP/s", 1e-3) if cuda else ("GFLOP/s", 1.0)
        synthetic = ", SYNTHETIC data" if first["synthetic"] else ""
        peaks = ", ".join(sorted({f"{r['precision']} {r['peak_gflop_s'] * scale:,.1f}" for r in epochs}))
        table = Table(title=f"{first['experiment']}, batch {first['batch_size']}, {first['images_per_epoch']:,} "
                      f"images/epoch (train + val), {first['device']}{synthetic}; counted MFLOP/image: train step "
                      f"{first['train_mflop_per_image']:.2f}, eval {first['eval_mflop_per_image']:.2f}; measured "
                      f"matmul peak, {unit}: {peaks}")  # fmt: skip
        variants = len({r["variant"] for r in epochs}) > 1
        columns = ["pipeline", *(["variant"] if variants else []), "precision", "s/epoch", "images/s", unit,
                   "% of peak", "vs first row", "speed-up over seed_style", "time / raw"]  # fmt: skip
        for col in columns:
            table.add_column(col, justify="left" if col in ("pipeline", "variant", "precision") else "right")
        for r in epochs:
            same = {x["pipeline"]: x["s_per_epoch"] for x in epochs if x["variant"] == r["variant"]}
            s = r["s_per_epoch"]
            speedup = f"{same['seed_style'] / s:.2f}x" if "seed_style" in same else "-"
            vs_raw = f"{s / same['raw']:.2f}" if "raw" in same else "-"
            table.add_row(r["pipeline"], *([r["variant"] or "(as given)"] if variants else []), r["precision"],
                          f"{s:.4f}", f"{r['images_per_s']:,.0f}", f"{r['achieved_gflop_s'] * scale:,.2f}",
                          f"{r['pct_of_peak']:.1f}%", f"{first['s_per_epoch'] / s:.2f}x", speedup, vs_raw)  # fmt: skip
        console.print(table)
    packs = [r for r in rows if "vs_sequential" in r]
    if packs:
        first = packs[0]
        synthetic = ", SYNTHETIC data" if first["synthetic"] else ""
        table = Table(title=f"{first['experiment']} x{first['pack']} runs (seeds), fast path, "
                      f"batch {first['batch_size']}, {first['device']}{synthetic}")  # fmt: skip
        for col in ("pipeline", "s per epoch of all runs", "runs·epochs/s", "packed / sequential"):
            table.add_column(col, justify="left" if col == "pipeline" else "right")
        for r in packs:
            table.add_row(r["pipeline"], f"{r['s_per_epoch']:.4f}", f"{r['runs_epochs_per_s']:.3f}",
                          f"{r['vs_sequential']:.2f}x")  # fmt: skip
        console.print(table)
    for r in (r for r in rows if r["pipeline"] == "steps"):
        solo, member, grouped, bare = (r[f"{k}_member_steps_per_s"] for k in ("solo", "member", "grouped", "bare"))
        print(f"{r['experiment']} x{r['pack']}, batch {r['batch_size']}, {r['device']}, float32, SGD momentum 0.9, "
              "member-steps/s\n| preset | batch | solo, one after another | pack, member convs | pack, grouped convs "
              "| pack, member convs, no isolation | member / solo | grouped / solo |\n"
              "|---|---|---|---|---|---|---|---|\n"
              f"| {r['experiment']} | {r['batch_size']} | {solo:.2f} | {member:.2f} | {grouped:.2f} | {bare:.2f} "
              f"| {member / solo:.2f}x | {grouped / solo:.2f}x |")  # fmt: skip


filter_warnings()  # as train.py: only warnings a user can act on


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def bench_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        rows = run_bench(cfg)
    except UserError as err:
        print_user_error(err)
        raise SystemExit(EXIT_USER_ERROR) from None
    write_bytes_atomic(out_dir / "bench.json", (json.dumps(rows, indent=2) + "\n").encode())
    print_table(rows)
    print(f"bench.json: {out_dir / 'bench.json'}")


if __name__ == "__main__":
    bench_main()
