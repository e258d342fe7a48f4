"""Which jobs of a multirun train together: a job's pack key, and the packs and single runs of a sweep.

Jobs pack when everything that shapes the computation is equal; members may differ only in
:data:`MEMBER_OPTIONS` (and what Hydra interpolates from them, :data:`FOLLOWERS`); a job with a
setting a pack cannot run (:func:`unpackable`) runs on its own. Where a pack measured slower than its
jobs one after another (:data:`SLOWER_PACKED`, by device), or with ``hydra.launcher.pack=false``, a pack's
jobs run one after another (:func:`one_by_one`). The rules and their reasons for users:
docs/packed.md, "When jobs pack". Light: torch is imported only to ask whether CUDA is there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifar_lab.configs import CONF_DIR, flatten
from cifar_lab.distributed import placement
from cifar_lab.errors import UserError
from cifar_lab.plan import OPTIMIZERS, optimizer_capability
from cifar_lab.schema import RULES

# What may differ between the members of one pack: each member gets its own value.
MEMBER_OPTIONS = (
    "seed",  # initial weights, data order, dropout masks (each member its own)
    "name",
    "l2",  # per-member explicit L2 (PackedLoss)
    "optimizer.lr",  # per-member optimiser parameter groups
    "optimizer.momentum",
    "optimizer.weight_decay",
    "model.dropout",  # per-member rate (PackedDropout), 0 included
    "model.dropout_kind",  # per-member kind (element or channel) and stem site (PackedDropout)
    "model.stem_dropout",
)
# Config copies of those that Hydra interpolates: the data order (and synthetic images) follow the seed.
FOLLOWERS = ("data.seed", "data.reader.seed", "data.datamodule.seed")
# What packing.run gives every member (conf/logger/tensorboard.yaml, read, not copied) as flattened config keys.
TENSORBOARD = OmegaConf.load(Path(CONF_DIR, "logger", "tensorboard.yaml"))
PACKED_LOGGER = flatten({"logger": OmegaConf.to_container(TENSORBOARD)})

# Settings a pack cannot run: {flattened key: (the value it needs (unset or false counts as it), why not)}.
NEEDS = {
    "speed.compile": (False, "speed.compile=true: a vmapped tied ResNet does not compile"),
    "speed.channels_last": (False, "speed.channels_last=true: a vmapped convolution has no channels-last layout"),
    "data.val_from_train": (0, "data.val_from_train > 0: the test pass after training (on each run's best "
                               "checkpoint) is per run"),
    "scheduler.name": ("none", "scheduler={}: packs train at constant learning rates (scheduler=none)"),
    "model.bn_eval": ("running", "model.bn_eval=batch: packs evaluate BatchNorm with running statistics only"),
}  # fmt: skip


def unpackable(task: dict[str, Any], hydra: dict[str, Any]) -> str | None:
    """Why a job (its flattened task config and ``hydra`` config) must run on its own; None if it may pack."""
    try:
        where = placement({k[len("trainer.") :]: v for k, v in task.items() if k.startswith("trainer.")})
    except UserError:  # the job runs on its own, and its own start refuses the value in one paragraph
        return "trainer.devices or num_nodes names no devices"
    if not where.one_device:
        return "several devices or a strategy (DDP): a pack trains in one process on one device"
    for key, (need, why) in NEEDS.items():
        if (task.get(key) or need) not in (need, "auto"):  # auto: the pack resolves it (plan.resolve_plan)
            return why.format(task[key])
    optimizer = optimizer_capability(task.get("optimizer._target_"))
    if not optimizer.pack:
        packable = ", ".join(name for name, can in OPTIMIZERS.items() if can.pack)
        return f"optimizer {task.get('optimizer._target_')}: packs support {packable}"
    if optimizer.prime == "momentum" and task.get("optimizer.dampening", 0) != 0:
        return "optimizer.dampening != 0: a member's momentum buffer could not be primed exactly"
    if {k: v for k, v in task.items() if k.startswith("logger.")} not in ({}, PACKED_LOGGER):
        return "a logger other than the default tensorboard one: each packed member logs to <run dir>/tb"
    if task.get("model.batchnorm") and task.get("model.bn_momentum", 0.1) is None:
        return "model.bn_momentum=null: a cumulative BatchNorm average counts batches, which a vmapped pack cannot"
    if callbacks := sorted({k.split(".")[1] for k, v in task.items() if k.startswith("callbacks.") and v is not None}):
        return f"callbacks ({', '.join(callbacks)}): a pack trains its members in one fit, a callback sees one run"
    if (hydra.get("job") or {}).get("chdir"):
        return "hydra.job.chdir=true: each job runs in its own directory, a pack runs in one"
    return None


def pack_key(task: dict[str, Any], hydra: dict[str, Any]) -> tuple[str | None, str | None]:
    """(key, None) for a job that may pack, where jobs with equal keys pack; (None, reason) otherwise.

    ``task`` is the job's resolved config without the ``hydra`` node, ``hydra`` that node (resolved)."""
    flat = flatten(task)
    reason = unpackable(flat, hydra)
    if reason is not None:
        return None, reason
    shared = {k: v for k, v in flat.items() if k not in MEMBER_OPTIONS and k not in FOLLOWERS}
    shared["hydra.job.env_set"] = (hydra.get("job") or {}).get("env_set") or {}  # one process: one environment
    if flat.get("model.batchnorm"):  # a stem dropout module moves the stem's BatchNorm (another state_dict)
        shared["stem dropout"] = bool(flat.get("model.stem_dropout") and flat.get("model.dropout"))
    return json.dumps(shared, sort_keys=True, default=str), None


@dataclass(frozen=True)
class Job:
    """One job of the sweep: its number, overrides and pack key (None: it runs on its own, for ``reason``)."""

    idx: int
    overrides: tuple[str, ...]
    key: str | None
    reason: str | None = None
    resume: str = ""  # with resume: where its checkpoint stands ("epoch 3"); part of its key


@dataclass(frozen=True)
class Pack:
    """Jobs trained as one model in one process; its id is its first job's number (unique in a sweep)."""

    jobs: tuple[Job, ...]

    @property
    def id(self) -> int:
        return self.jobs[0].idx


@dataclass
class Grouping:
    """The packs and single runs of one launch, in the order they run (by their first job)."""

    packs: list[Pack] = field(default_factory=list)
    singles: list[Job] = field(default_factory=list)

    def in_order(self) -> list[Pack | Job]:
        return sorted([*self.packs, *self.singles], key=lambda u: u.id if isinstance(u, Pack) else u.idx)

    def describe(self, max_pack: int) -> str:
        """The printout before training: pack -> jobs, then the single runs and why."""
        members = sum(len(p.jobs) for p in self.packs)
        lines = [
            f"Packed launcher: {members + len(self.singles)} jobs -> {len(self.packs)} pack(s) of {members} jobs "
            f"and {len(self.singles)} single run(s) (hydra.launcher.max_pack={max_pack})"
        ]
        for unit in self.in_order():
            if isinstance(unit, Pack):
                resume = f", resuming after {unit.jobs[0].resume}" if unit.jobs[0].resume else ""
                lines.append(f"  pack {unit.id}: {len(unit.jobs)} members, one process{resume}")
                lines += [f"\t#{j.idx} : {' '.join(j.overrides)}" for j in unit.jobs]
            else:
                lines.append(f"  single run: #{unit.idx} : {' '.join(unit.overrides)}  ({unit.reason})")
        return "\n".join(lines)


# Where a pack trains slower than its jobs one after another, by the device it trains on: {device: why, with the
# measured figures}. There ``hydra.launcher.pack=auto`` (the default) runs a pack's jobs one after another and says
# why; ``pack=true`` packs anyway. A device not listed packs. None is listed today: on this project's 2-core CPU,
# whole sweeps at the launcher's defaults measured packed 1.8-2.9x faster (6 p2a-family jobs) and 0.56-1.26x
# (2 p1a jobs) than the basic launcher (docs/packed.md, "Measured figures"); on CUDA this version is not measured.
# A measurement that finds a device slower adds its row here (the text ends the console paragraph's first part).
SLOWER_PACKED: dict[str, str] = {}


def pack_device(accelerator: str) -> str:
    """The device a job with ``trainer.accelerator`` trains on, as Lightning chooses it: ``cpu``, ``cuda``,
    ``mps``, or the accelerator's own name (``gpu`` without CUDA: the run's own start refuses it)."""
    accelerator = str(accelerator or "auto").lower()
    if accelerator not in ("auto", "gpu", "cuda"):
        return accelerator
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if accelerator != "cuda" and torch.backends.mps.is_available():
        return "mps"
    return "cpu" if accelerator == "auto" else accelerator


def one_by_one(grouping: Grouping, accelerator: Callable[[Pack], str], pack: str | bool) -> list[str]:
    """Where a pack's jobs run one after another instead, in place: every pack with ``pack=false``; with ``auto``,
    each pack whose device (``accelerator(pack)``: its ``trainer.accelerator``) :data:`SLOWER_PACKED` lists. The
    console paragraph for each reason."""
    if pack is True or (pack == "auto" and not SLOWER_PACKED):  # nothing to decide: no torch import for it
        return []
    reasons: dict[str, list[Pack]] = {}
    for unit in grouping.packs:
        device = "" if pack is False else pack_device(accelerator(unit))
        if pack is False or device in SLOWER_PACKED:
            reasons.setdefault(device, []).append(unit)
    paragraphs = []
    for device, packs in reasons.items():
        why = f"packing measured slower on the {device.upper()}: see below" if device else "hydra.launcher.pack=false"
        for unit in packs:
            grouping.packs.remove(unit)
            grouping.singles += [Job(j.idx, j.overrides, None, f"would pack; {why}", j.resume) for j in unit.jobs]
        jobs = f"these {sum(len(p.jobs) for p in packs)} jobs ({len(packs)} pack(s)) run one after another"
        if device:
            paragraphs.append(
                f"Packed launcher: {SLOWER_PACKED[device]} So {jobs}, as the basic launcher runs them. To pack anyway "
                f'(to test packing, or where it measures faster): hydra.launcher.pack=true (docs/packed.md, "Measured '
                f'figures").'
            )
        else:
            paragraphs.append(
                f"Packed launcher: hydra.launcher.pack=false: {jobs}, as the basic launcher runs them (to compare "
                f"with packing on this machine: the same sweep with hydra.launcher.pack=true)."
            )
    return paragraphs


def check_pack(value: Any) -> str | bool:
    problem = RULES["hydra.launcher.pack"].check("hydra.launcher.pack", value)
    if problem:
        raise ValueError(f"{problem}. Whether jobs pack (auto: unless packing measured slower): docs/packed.md.")
    return value


def check_max_pack(value: Any) -> int:
    problem = RULES["hydra.launcher.max_pack"].check("hydra.launcher.max_pack", value)
    if problem:
        raise ValueError(f"{problem}. It caps the members of one pack (a memory guard): see docs/packed.md.")
    return int(value)


def split(jobs: Sequence[Job], max_pack: int) -> list[list[Job]]:
    """``jobs`` in near-equal consecutive chunks of at most ``max_pack`` (17 with 16 -> 9 + 8, not 16 + 1)."""
    chunks = -(-len(jobs) // max_pack)
    size, extra = divmod(len(jobs), chunks)
    starts = [c * size + min(c, extra) for c in range(chunks + 1)]
    return [list(jobs[a:b]) for a, b in zip(starts, starts[1:])]


def group(jobs: Sequence[Job], max_pack: int) -> Grouping:
    """Jobs with equal keys form packs (at most ``max_pack`` members each); a job alone runs on its own."""
    check_max_pack(max_pack)
    by_key: dict[str, list[Job]] = {}
    result = Grouping()
    for job in jobs:
        if job.key is None:
            result.singles.append(job)
        else:
            by_key.setdefault(job.key, []).append(job)
    for same in by_key.values():
        for chunk in split(same, max_pack):
            if len(chunk) > 1:
                result.packs.append(Pack(tuple(chunk)))
            else:
                why = "no other job to pack with" if len(same) == 1 else f"hydra.launcher.max_pack={max_pack}"
                result.singles.append(Job(chunk[0].idx, chunk[0].overrides, None, why, chunk[0].resume))
    return result
