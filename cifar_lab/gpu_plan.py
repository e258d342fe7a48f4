"""``python -m cifar_lab.gpu_plan`` (run by ``.ci/gpu-speed``): the GPU plan's speed matrix (issue 23, item 3).

Rows (:func:`matrix`), for p1a and p2a at batch 1024 and p2a at 128:

- solo, cumulative: ``fast`` (today's fast path: the ``StepEngine``, K = ``speed.steps_per_call`` steps per
  call captured in one CUDA graph, fp32 with TF32, cuDNN's default algorithm choice), ``+cudnn_benchmark``,
  ``+channels_last``, ``+fused_sgd`` (``torch.optim.SGD(fused=True)``), ``+compile_in_graph``
  (``torch.compile(mode="max-autotune-no-cudagraphs")`` inside our CUDA graph), ``+compile_no_graph``
  (``torch.compile(mode="max-autotune")``, its own CUDA graphs, instead of ours), and ``bf16`` (the
  ``+fused_sgd`` stack under bf16 autocast);
- packed, for N = 4 and 16: ``(a) member`` (today's member convs, per-step isolation), ``(b) streams``
  (member k's convs on CUDA stream k inside the captured graph), ``(c) grouped_cl`` (one grouped conv in
  channels_last), ``(d) chunk`` (member convs, the divergence check once per chunk);
  ``vs_sequential`` = N x the same configuration's ``fast`` row / the pack's time.

Each row trains on device-resident synthetic uint8 batches, normalised on the device per batch as the
resident loader does (no Lightning loop: the bench's ``fast`` against ``raw`` rows measure that), for a
warm-up (the eager chunk, the graph's capture, compilation) and then timed chunks; seconds per epoch are
extrapolated from the timed steps: 50,000 training images in steps of the batch plus 10,000 validation
images. FLOPs per epoch are counted (``cifar_lab.flops.count_flops``: one training step's forward and
backward, one validation batch), the peak is measured in the same process (``peak_flops``: TF32 for fp32
rows, bf16 for bf16 rows). Each row is time-boxed (``--row-seconds``; SIGALRM) and the whole matrix
(``--budget``); a row past the budget is written as ``skipped``. Rows are written as they finish, one JSON
line each (``--out``, else stdout), with a progress line per row on stderr.

``--dry-run`` (or ``--cpu``) runs every row on the CPU with tiny sizes in seconds (batch 4, 2 steps per
chunk, packs of 2 and 3 members): there is no CUDA graph (chunks run eagerly), no stream (the streams
variant runs its member convs one after another), ``compile`` uses ``backend="eager"``; each row's
``fallback`` says what it ran instead. Its figures mean nothing; it exists so that tests exercise every row.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import IO, Any

import torch

from cifar_lab.build import build_module, seed_and_backends
from cifar_lab.configs import compose
from cifar_lab.data import CIFAR_MEAN, CIFAR_STD
from cifar_lab.fast import StepEngine
from cifar_lab.flops import count_flops, peak_flops
from cifar_lab.packing.loss import PackedLoss, member_losses
from cifar_lab.packing.step import member_param_groups
from cifar_lab.packing.variants import make_engine, make_packed_net
from cifar_lab.plan import SpeedPlan

TRAIN_IMAGES, VAL_IMAGES = 50_000, 10_000
CONFIGS = (("p1a", 1024), ("p2a", 1024), ("p2a", 128))
PACK_SIZES = (4, 16)
PACK_VARIANTS = {  # row name -> (speed.pack_conv, speed.pack_isolation)
    "member": ("member", "step"),
    "streams": ("streams", "step"),
    "grouped_cl": ("grouped_cl", "step"),
    "chunk": ("member", "chunk"),
}


@dataclass(frozen=True)
class Variant:
    """What one row changes from today's fast path."""

    cudnn_benchmark: bool = False
    channels_last: bool = False
    fused: bool = False
    compile: str = ""  # "": none; "in_graph": max-autotune-no-cudagraphs in our graph; "no_graph": max-autotune
    bf16: bool = False
    pack: int = 0  # N members (0: a solo row)
    pack_conv: str = "member"
    pack_isolation: str = "step"


@dataclass
class Row:
    row: str
    experiment: str
    batch: int
    variant: Variant = field(default_factory=Variant)
    budget_s: float = 30.0


def matrix(pack_sizes: tuple[int, ...] = PACK_SIZES) -> list[Row]:
    """Every row, in the order they run: the cheap solo rows first, then the packs, the compile rows last
    (compilation is the slowest; the budget then cuts them, not the rest)."""
    stack = [
        ("fast", Variant()),
        ("+cudnn_benchmark", Variant(cudnn_benchmark=True)),
        ("+channels_last", Variant(cudnn_benchmark=True, channels_last=True)),
        ("+fused_sgd", Variant(cudnn_benchmark=True, channels_last=True, fused=True)),
        ("bf16", Variant(cudnn_benchmark=True, channels_last=True, fused=True, bf16=True)),
    ]
    compiled = [
        ("+compile_in_graph", Variant(cudnn_benchmark=True, channels_last=True, fused=True, compile="in_graph")),
        ("+compile_no_graph", Variant(cudnn_benchmark=True, channels_last=True, fused=True, compile="no_graph")),
    ]
    rows = [Row(name, exp, batch, v) for exp, batch in CONFIGS for name, v in stack]
    for exp, batch in (("p2a", 128), ("p1a", 1024), ("p2a", 1024)):
        for n in pack_sizes:
            for name, (conv, isolation) in PACK_VARIANTS.items():
                v = Variant(pack=n, pack_conv=conv, pack_isolation=isolation)
                rows.append(Row(f"packed x{n} {name}", exp, batch, v, budget_s=40.0))
    rows += [Row(name, exp, batch, v, budget_s=90.0) for exp, batch in CONFIGS for name, v in compiled]
    return rows


class RowTimeout(Exception):
    pass


def time_box(seconds: float) -> Any:
    """A context manager raising RowTimeout after ``seconds`` (SIGALRM; the main thread only)."""

    class Box:
        def __enter__(self) -> None:
            def ring(signum: int, frame: Any) -> None:
                raise RowTimeout(f"time box of {seconds:.0f} s ran out")

            self.old = signal.signal(signal.SIGALRM, ring)
            signal.setitimer(signal.ITIMER_REAL, seconds)

        def __exit__(self, *exc: Any) -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)

    return Box()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Settings:
    device: torch.device
    dry_run: bool
    steps_per_call: int = 8
    warmup_chunks: int = 2  # the eager warm-up chunk, then the capture (or compilation)
    timed_chunks: int = 6  # at most (48 steps: about an epoch at batch 1024); fewer when a third of the box has gone
    pool: int = 4  # distinct resident batches, cycled
    tiny_batch: int = 0  # the dry-run's batch instead of the row's (0: the row's)

    def batch(self, row: Row) -> int:
        return self.tiny_batch or row.batch


def batches(settings: Settings, shape: tuple[int, ...], channels_last: bool) -> Callable[[int], torch.Tensor]:
    """``get(i)``: batch i (cycled from a small pool of uint8 images resident on the device), normalised on the
    device as the resident loader does, in float32 (NHWC with ``channels_last``)."""
    g = torch.Generator().manual_seed(0)
    pool = [
        torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(settings.device) for _ in range(settings.pool)
    ]
    view = [1] * (len(shape) - 3) + [3, 1, 1]
    mean = torch.tensor(CIFAR_MEAN, device=settings.device).view(view) * 255
    std = torch.tensor(CIFAR_STD, device=settings.device).view(view) * 255

    def get(i: int) -> torch.Tensor:
        x = (pool[i % len(pool)].float() - mean) / std
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    return get


def labels(settings: Settings, shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 10, shape, generator=g).to(settings.device) for _ in range(settings.pool)]


def compile_forward(module: Any, how: str, settings: Settings) -> list[str]:
    """``module.compiled_forward`` as the row asks; what it ran instead on the CPU."""
    if settings.device.type != "cuda":
        module.compiled_forward = torch.compile(module.net.forward, backend="eager")
        return ['torch.compile(backend="eager") on the CPU (dynamo traced, no inductor)']
    mode = "max-autotune-no-cudagraphs" if how == "in_graph" else "max-autotune"
    module.compiled_forward = torch.compile(module.net.forward, mode=mode)
    return []


def make_optimizer(factory: Any, params: Any, fused: bool, fallback: list[str]) -> torch.optim.Optimizer:
    if not fused:
        return factory(params=params)
    params = list(params)
    try:
        return factory(params=params, fused=True)
    except (RuntimeError, ValueError, TypeError) as err:  # fused SGD not offered for this device/dtype
        fallback.append(f"fused SGD unavailable ({type(err).__name__}: {err}); foreach")
        return factory(params=params)


@dataclass
class Measured:
    s_per_step: float
    s_per_val_batch: float
    train_flops: int
    val_flops: int
    timed_steps: int
    fallback: list[str]


def timed(settings: Settings, budget: float, run_chunk: Callable[[int], None], validate: Callable[[int], None],
          started: float) -> tuple[float, float, int]:  # fmt: skip
    """Warm up, then time chunks until ``timed_chunks`` or a third of ``budget`` has gone; then validation batches.
    (seconds per step, seconds per validation batch, timed steps)."""
    for c in range(settings.warmup_chunks):
        run_chunk(c)
    for i in range(2):  # warm the eval path too (cuDNN autotune, compilation of the eval graph)
        validate(i)
    sync(settings.device)
    t0, chunks = time.perf_counter(), 0
    while chunks < settings.timed_chunks:
        run_chunk(settings.warmup_chunks + chunks)
        chunks += 1
        if chunks >= 2 and time.perf_counter() - started > budget / 3:
            break
    sync(settings.device)
    s_step = (time.perf_counter() - t0) / (chunks * settings.steps_per_call)
    t0, n_val = time.perf_counter(), max(2, settings.steps_per_call)
    for i in range(n_val):
        validate(i)
    sync(settings.device)
    return s_step, (time.perf_counter() - t0) / n_val, chunks * settings.steps_per_call


def autocast(settings: Settings, bf16: bool) -> Any:
    if not bf16:
        import contextlib

        return contextlib.nullcontext()
    return torch.autocast(settings.device.type, dtype=torch.bfloat16, cache_enabled=False)


def plan_of(settings: Settings, v: Variant, fallback: list[str]) -> SpeedPlan:
    cuda = settings.device.type == "cuda"
    graph = cuda and v.compile != "no_graph"
    if not cuda:
        fallback.append("no CUDA graph on the CPU: chunks run eagerly")
    return SpeedPlan(loader="gpu", steps_per_call=settings.steps_per_call, cuda_graph=graph,
                     autocast_dtype=torch.bfloat16 if v.bf16 else None, channels_last=v.channels_last,
                     precision="bf16-mixed" if v.bf16 else "32-true", device=str(settings.device),
                     pack_conv=v.pack_conv, pack_isolation=v.pack_isolation)  # fmt: skip


def run_solo(row: Row, settings: Settings, started: float) -> Measured:
    v, fallback = row.variant, []
    plan = plan_of(settings, v, fallback)
    cfg = compose(f"experiment={row.experiment}", f"data.batch_size={row.batch}")
    seed_and_backends(cfg)
    torch.backends.cudnn.benchmark = v.cudnn_benchmark  # cleanup() sets it back to False (PyTorch's default)
    if v.cudnn_benchmark and settings.device.type != "cuda":
        fallback.append("cudnn.benchmark set, without effect on the CPU")
    module = build_module(cfg, [str(c) for c in range(10)], plan).to(settings.device)
    if v.compile:
        fallback += compile_forward(module, v.compile, settings)
    optimizer = make_optimizer(module.optimizer_factory, module.net.parameters(), v.fused, fallback)
    engine = StepEngine(module, optimizer, module.loss_fn, plan)
    get = batches(settings, (settings.batch(row), 3, 32, 32), v.channels_last)
    ys = labels(settings, (settings.batch(row),))
    k = settings.steps_per_call

    def run_chunk(c: int) -> None:
        with autocast(settings, v.bf16):
            engine.run([get(c * k + i) for i in range(k)], [ys[(c * k + i) % len(ys)] for i in range(k)])

    def validate(i: int) -> None:
        module.eval()
        with torch.no_grad(), autocast(settings, v.bf16):
            module.loss_fn(module(get(i)), ys[i % len(ys)])
        module.train()

    module.train()
    s_step, s_val, steps = timed(settings, row.budget_s, run_chunk, validate, started)
    counted = build_module(cfg, [str(c) for c in range(10)], replace(plan, compile=False)).to(settings.device)

    def train_step() -> None:
        objective, _ = counted.loss_fn(counted(get(0)), ys[0])
        objective.backward()

    with autocast(settings, v.bf16):
        train_flops = count_flops(train_step)
        with torch.no_grad():
            val_flops = count_flops(lambda: counted.eval()(get(0)))
    return Measured(s_step, s_val, train_flops, val_flops, steps, fallback)


def run_packed(row: Row, settings: Settings, started: float) -> Measured:
    v, fallback = row.variant, []
    plan = plan_of(settings, v, fallback)
    if v.pack_conv == "streams" and settings.device.type != "cuda":
        fallback.append("no CUDA streams on the CPU: the member convs run one after another")
    cfg = compose(f"experiment={row.experiment}", f"data.batch_size={row.batch}")
    nets = []
    for k in range(v.pack):
        seed_and_backends(cfg)
        torch.manual_seed(int(cfg.seed) + k)
        nets.append(build_module(cfg, [str(c) for c in range(10)], SpeedPlan()).net)
    net = make_packed_net(nets, v.pack_conv).to(settings.device).train()
    lr, momentum = float(cfg.optimizer.lr), float(cfg.optimizer.get("momentum", 0.0))
    optimizer = torch.optim.SGD(member_param_groups(net, lr=[lr] * v.pack, momentum=[momentum] * v.pack))
    loss = PackedLoss([float(cfg.l2)] * v.pack).to(settings.device)
    engine = make_engine(net, optimizer, loss, plan, v.pack_isolation)
    get = batches(settings, (v.pack, settings.batch(row), 3, 32, 32), False)
    ys = labels(settings, (v.pack, settings.batch(row)))
    k = settings.steps_per_call

    def run_chunk(c: int) -> None:
        engine.run([get(c * k + i) for i in range(k)], [ys[(c * k + i) % len(ys)] for i in range(k)])

    def validate(i: int) -> None:
        net.eval()
        with torch.no_grad():
            member_losses(net(get(i)[0]), ys[i % len(ys)][0])  # one shared batch, as a pack validates
        net.train()

    s_step, s_val, steps = timed(settings, row.budget_s, run_chunk, validate, started)

    def train_step() -> None:
        objectives, _, _ = engine.losses(get(0), ys[0])
        objectives.sum().backward()

    train_flops = count_flops(train_step)
    optimizer.zero_grad()
    with torch.no_grad():
        val_flops = count_flops(lambda: net.eval()(get(0)[0]))
    net.train()
    return Measured(s_step, s_val, train_flops, val_flops, steps, fallback)


def epoch_figures(batch: int, row: Row, m: Measured, peak: float) -> dict[str, Any]:
    """s/epoch (extrapolated to 50,000 + 10,000 images), images/s (counting every member's), FLOP/s, % of peak."""
    steps, val_batches = math.ceil(TRAIN_IMAGES / batch), math.ceil(VAL_IMAGES / batch)
    seconds = steps * m.s_per_step + val_batches * m.s_per_val_batch
    flops = steps * m.train_flops + val_batches * m.val_flops
    members = row.variant.pack or 1
    return {
        "s_per_epoch": round(seconds, 4),
        "images_per_s": round(members * (TRAIN_IMAGES + VAL_IMAGES) / seconds, 1),
        "s_per_step": m.s_per_step,
        "tflop_per_epoch": round(flops / 1e12, 4),
        "achieved_tflop_per_s": round(flops / seconds / 1e12, 4),
        "peak_tflop_per_s": round(peak / 1e12, 3),
        "pct_of_peak": round(100 * flops / seconds / peak, 3),
        "timed_steps": m.timed_steps,
    }


def machine(settings: Settings) -> dict[str, Any]:
    import platform

    if settings.device.type == "cuda":
        name = torch.cuda.get_device_name(settings.device)
    else:
        name = f"{platform.machine()} CPU ({torch.get_num_threads()} threads)"
    return {"row": "machine", "device": name, "torch": torch.__version__, "dry_run": settings.dry_run,
            "steps_per_call": settings.steps_per_call}  # fmt: skip


def run_matrix(rows: list[Row], settings: Settings, budget: float, emit: Callable[[dict[str, Any]], None],
               row_seconds: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run ``rows`` in order within ``budget`` seconds; ``emit`` each result as it finishes; the results."""
    start = time.perf_counter()
    head = machine(settings)
    peaks = {dtype: peak_flops(settings.device, dtype) for dtype in (torch.float32, torch.bfloat16)}
    head["peak_tflop_per_s"] = {str(d).removeprefix("torch."): round(p / 1e12, 3) for d, p in peaks.items()}
    emit(head)
    print(f"gpu_plan: {len(rows)} rows on {head['device']}, torch {head['torch']}, measured peak "
          f"{head['peak_tflop_per_s']} TFLOP/s" + (" (DRY RUN on the CPU: its figures mean nothing)" if settings.dry_run
          else f", budget {budget:.0f} s"), file=sys.stderr, flush=True)  # fmt: skip
    out: list[dict[str, Any]] = [head]
    fast: dict[tuple[str, int], float] = {}
    for i, row in enumerate(rows, 1):
        left = budget - (time.perf_counter() - start)
        box = min(row_seconds or row.budget_s, left)
        result: dict[str, Any] = {
            "row": row.row,
            "experiment": row.experiment,
            "batch": row.batch,
            "ran_batch": settings.batch(row),
            **asdict(row.variant),
            "dry_run": settings.dry_run,
        }
        if box < (0 if settings.dry_run else 5) or left <= 0:
            result.update(status="skipped", reason=f"out of time ({left:.0f} s left of the {budget:.0f} s budget)")
        else:
            row = replace(row, budget_s=box)
            t0 = time.perf_counter()
            try:
                with time_box(box):
                    measured = (run_packed if row.variant.pack else run_solo)(row, settings, t0)
                figures = epoch_figures(
                    settings.batch(row), row, measured, peaks[torch.bfloat16 if row.variant.bf16 else torch.float32]
                )
                result.update(status="ok", **figures, fallback=measured.fallback)
                if row.row == "fast":
                    fast[(row.experiment, row.batch)] = figures["s_per_epoch"]
                sequential = fast.get((row.experiment, row.batch))
                if row.variant.pack and sequential:
                    result["vs_sequential"] = round(row.variant.pack * sequential / figures["s_per_epoch"], 3)
            except RowTimeout as err:
                result.update(status="timeout", reason=str(err))
            except Exception as err:  # a variant that fails is a finding, not the end of the matrix
                result.update(status="error", reason=f"{type(err).__name__}: {str(err)[:300]}")
            result["row_seconds"] = round(time.perf_counter() - t0, 2)
            cleanup(settings)
        emit(result)
        out.append(result)
        print(progress(i, len(rows), result), file=sys.stderr, flush=True)
    return out


def cleanup(settings: Settings) -> None:
    torch.backends.cudnn.benchmark = False
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: S110 - a reset that fails leaves compiled code cached, nothing worse
        pass
    gc.collect()
    if settings.device.type == "cuda":
        torch.cuda.empty_cache()


def progress(i: int, n: int, r: dict[str, Any]) -> str:
    head = f"[{i:2d}/{n}] {r['experiment']} b{r['batch']} {r['row']}:"
    if r["status"] != "ok":
        return f"{head} {r['status']} ({r.get('reason', '')})"
    extra = f", {r['vs_sequential']:.2f}x sequential" if "vs_sequential" in r else ""
    return (f"{head} {r['s_per_epoch']:.4f} s/epoch, {r['images_per_s']:,.0f} images/s, {r['pct_of_peak']:.2f}% of "
            f"peak{extra} ({r['row_seconds']:.1f} s)")  # fmt: skip


def decisions(results: list[dict[str, Any]]) -> Iterator[str]:
    """What the matrix says about each default: per knob, in how many configurations adding it was faster."""
    ok = {(r["experiment"], r["batch"], r["row"]): r for r in results if r.get("status") == "ok"}
    steps = [("+cudnn_benchmark", "fast", "speed: torch.backends.cudnn.benchmark on the fast path"),
             ("+channels_last", "+cudnn_benchmark", "speed.channels_last default on CUDA"),
             ("+fused_sgd", "+channels_last", "fused SGD on CUDA"),
             ("+compile_in_graph", "+fused_sgd", "speed.compile (max-autotune) inside the CUDA graph"),
             ("+compile_no_graph", "+fused_sgd", "speed.compile (max-autotune) instead of the CUDA graph"),
             ("bf16", "+fused_sgd", "bf16-mixed as the documented fast option")]  # fmt: skip
    for new, old, what in steps:
        pairs = [(e, b, ok[(e, b, old)]["s_per_epoch"] / ok[(e, b, new)]["s_per_epoch"])
                 for e, b in CONFIGS if (e, b, new) in ok and (e, b, old) in ok]  # fmt: skip
        if pairs:
            wins = sum(ratio > 1.03 for *_, ratio in pairs)
            detail = ", ".join(f"{e} b{b} {ratio:.2f}x" for e, b, ratio in pairs)
            yield f"{what}: faster (>3%) in {wins}/{len(pairs)} configurations ({detail})"
        else:
            yield f"{what}: not measured"
    for r in results:
        if r.get("status") == "ok" and r.get("vs_sequential") is not None and r["row"].endswith(" member"):
            e, b, n = r["experiment"], r["batch"], r["pack"]
            rivals = [ok.get((e, b, f"packed x{n} {name}")) for name in PACK_VARIANTS]
            best = max((x for x in rivals if x), key=lambda x: x["vs_sequential"])
            yield (f"packed {e} b{b} x{n}: best {best['row'].split()[-1]} at {best['vs_sequential']:.2f}x sequential "
                   f"(today's member convs {r['vs_sequential']:.2f}x)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar_lab.gpu_plan", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", "--cpu", dest="dry_run", action="store_true",
                        help="every row on the CPU, tiny sizes, in seconds (for tests)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the whole matrix (default 330)")
    parser.add_argument("--row-seconds", type=float, default=None, help="time box of every row (default: per row)")
    parser.add_argument("--only", default="", help="run only rows whose '<experiment> b<batch> <row>' contains this")
    parser.add_argument("--packs", default="4,16", help="the packs' member counts (default 4,16; dry run: 2,3)")
    parser.add_argument("--out", default="", help="append JSON lines here (default: stdout)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("gpu_plan: no CUDA device; the matrix is for a GPU (use --dry-run to exercise it on the CPU).",
              file=sys.stderr)  # fmt: skip
        return 2
    settings = Settings(torch.device("cuda" if cuda else "cpu"), dry_run=not cuda)
    sizes = tuple(int(n) for n in args.packs.split(","))
    rows = matrix((2, 3) if settings.dry_run and args.packs == "4,16" else sizes)
    if settings.dry_run:
        settings = replace(settings, steps_per_call=2, warmup_chunks=1, timed_chunks=1, pool=2, tiny_batch=4)
    chosen = [r for r in rows if args.only in f"{r.experiment} b{r.batch} {r.row}"]
    needed = {(r.experiment, r.batch) for r in chosen if r.variant.pack}  # a pack's vs_sequential needs its fast row
    rows = [r for r in rows if r in chosen or (r.row == "fast" and (r.experiment, r.batch) in needed)]
    sink: IO[str] = open(args.out, "a") if args.out else sys.stdout  # noqa: SIM115 - closed below

    def emit(result: dict[str, Any]) -> None:
        sink.write(json.dumps(result) + "\n")
        sink.flush()

    try:
        results = run_matrix(rows, settings, args.budget, emit, args.row_seconds)
    finally:
        if sink is not sys.stdout:
            sink.close()
    print("\nWhat the matrix would decide:", file=sys.stderr)
    for line in decisions(results):
        print(f"- {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
