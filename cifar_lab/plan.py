"""The speed plan: which loader, how many optimizer steps per Lightning step, graph or eager, precision
and layout. Resolved once, from the config and the trainer's device, before the datamodule and the
LightningModule are built, and handed to both (STYLE 13: decide once, hand it in). Also the one
table of what each optimizer allows (:data:`OPTIMIZERS`). Light: torch is imported where it is used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cifar_lab.errors import UserError

if TYPE_CHECKING:
    import torch

FAST_PRECISIONS = ("32-true", "32", "bf16-mixed")


@dataclass(frozen=True)
class OptimizerCapability:
    """What an optimizer allows; the one owner of these decisions (build, plan, packing.grouping/step/module)."""

    graph: bool = False  # a CUDA graph can replay its step (at a constant learning rate): cuda_graph=auto uses one
    prime: str = ""  # its state created before step 1 so a pack can snapshot it: "momentum" (SGD), "adam"; "": none
    device_step: bool = False  # in a pack off the CPU, its step count lives on the device (capturable=True)

    @property
    def pack(self) -> bool:
        """A pack can train it (it isolates a diverging member by snapshotting the primed state)."""
        return bool(self.prime)


OPTIMIZERS = {
    "torch.optim.SGD": OptimizerCapability(graph=True, prime="momentum"),  # momentum buffers primed: dampening 0
    "torch.optim.Adam": OptimizerCapability(prime="adam", device_step=True),
    "torch.optim.AdamW": OptimizerCapability(prime="adam", device_step=True),
}


def optimizer_capability(optimizer: str | type | None) -> OptimizerCapability:
    """The row of :data:`OPTIMIZERS` for a ``_target_`` (``"torch.optim.SGD"``) or an optimizer class; an
    optimizer not in the table allows none of it."""
    if isinstance(optimizer, type):
        in_torch = optimizer.__module__.startswith("torch.optim")
        optimizer = f"torch.optim.{optimizer.__name__}" if in_torch else optimizer.__qualname__
    return OPTIMIZERS.get(str(optimizer), OptimizerCapability())


@dataclass(frozen=True)
class SpeedPlan:
    """Resolved ``data.loader`` and ``speed.*`` for one run."""

    loader: str = "classic"  # classic (DataLoader) | gpu (resident on the training device)
    steps_per_call: int = 1  # optimizer steps per Lightning training step (1 on the classic path)
    cuda_graph: bool = False  # capture the K steps in one CUDA graph (CUDA only)
    autocast_dtype: torch.dtype | None = None  # bf16 autocast inside the engine (trainer.precision=bf16-mixed)
    channels_last: bool = False
    compile: bool = False
    cpu_threads: int | None = None  # torch's intra-op threads (None: torch's default, one per core)
    cpu_heap: bool = False  # large CPU tensors from the process heap, kept between steps (glibc; build.use_host)
    precision: str = "32-true"
    device: str = "cpu"  # the training device the plan was resolved for (data goes there on the fast path)
    pack_conv: str = "member"  # a pack's convolutions: member | streams | grouped_cl (cifar_lab.packing.variants)
    pack_isolation: str = "step"  # a pack's divergence check: step (snapshot per step) | chunk (per steps_per_call)

    @property
    def fast(self) -> bool:
        """The fast path: the resident loader serving chunks of K batches to a StepEngine."""
        return self.loader == "gpu"

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the normalised images: float64 for a float64 model, else float32 (autocast casts)."""
        import torch

        return torch.float64 if self.precision in ("64-true", "64") else torch.float32

    def describe(self) -> dict[str, Any]:
        """What summary.json records as ``speed``."""
        out = asdict(self)
        out.pop("autocast_dtype")
        return out


def auto_loader(device: torch.device, world_size: int) -> str:
    """``data.loader=auto``: the resident loader on one CUDA device, the classic DataLoader otherwise."""
    return "gpu" if device.type == "cuda" and world_size == 1 else "classic"


def auto_flag(value: Any, auto: bool) -> bool:
    """A ``speed`` switch that may be ``auto``: ``auto`` is the device's measured choice, else the value."""
    return auto if value == "auto" else bool(value)


def resolve_plan(
    speed: dict[str, Any],
    loader: str,
    device: torch.device,
    world_size: int,
    precision: str,
    capturable: bool = True,
    keep_nchw: bool = False,
) -> SpeedPlan:
    """The plan for ``speed`` (the config's ``speed`` node) and ``data.loader`` on this device.

    The fast path goes with the resident loader. DDP keeps the classic path: its gradient
    synchronisation hooks run inside Lightning's optimizer step. The static checks (ranges,
    exclusive options) are in :mod:`cifar_lab.schema`; these need the device. ``capturable``: the
    step can be replayed from a CUDA graph (plain SGD at a constant learning rate; Adam-family state
    and a changing learning rate are baked into a captured graph), so ``cuda_graph=auto`` may use one.
    The CPU's own settings (``channels_last``/``cpu_heap`` auto: on when training on the CPU) are the
    fastest fp32 combination measured on a 2-core AVX-512 CPU (docs/measured.md). ``keep_nchw``: auto
    keeps NCHW (a pack, whose vmapped convolutions have no channels-last layout; element-wise dropout,
    whose masks are drawn in memory order, so NHWC would draw other masks than an NCHW run).
    """
    precision = str(precision)
    on_cpu = device.type == "cpu"
    layout = {
        "channels_last": auto_flag(speed.get("channels_last", False), on_cpu and not keep_nchw),
        "compile": bool(speed.get("compile")),
        "cpu_threads": speed.get("cpu_threads"),
        "cpu_heap": auto_flag(speed.get("cpu_heap", False), on_cpu),
        "precision": precision,
        "device": str(device),
        "pack_conv": str(speed.get("pack_conv", "member")),
        "pack_isolation": str(speed.get("pack_isolation", "step")),
    }
    if loader == "auto":
        loader = auto_loader(device, world_size)
    if loader != "gpu":
        return SpeedPlan(loader=loader, **layout)
    if world_size > 1:
        raise UserError(
            "data.loader=gpu (the fast path) runs on one device; with several devices use data.loader=classic or auto."
        )
    if precision not in FAST_PRECISIONS:
        raise UserError(
            f"the fast path (data.loader=gpu) supports trainer.precision=32-true or bf16-mixed, not {precision}; "
            "use data.loader=classic for other precisions."
        )
    graph = speed.get("cuda_graph", "auto")
    if graph == "auto":
        graph = device.type == "cuda" and not speed.get("compile", False) and capturable
    elif graph and device.type != "cuda":
        raise UserError("speed.cuda_graph=true needs a CUDA device; use speed.cuda_graph=auto or false on the CPU.")
    elif graph and not capturable:
        raise UserError(
            "speed.cuda_graph=true needs a step a CUDA graph can replay: plain SGD (optimizer=sgd or sgd_nesterov) "
            "at a constant learning rate (scheduler=none). Use speed.cuda_graph=auto, which then runs eagerly."
        )
    import torch

    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    return SpeedPlan(
        loader="gpu",
        steps_per_call=int(speed.get("steps_per_call", 1)),
        cuda_graph=bool(graph),
        autocast_dtype=dtype,
        **layout,
    )
