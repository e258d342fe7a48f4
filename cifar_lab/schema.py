"""Every check on the composed config that needs no device, as one declarative table.

Hydra itself rejects unknown keys and group options; this adds types, ranges and choices. It runs
before torch is imported, so a bad value is reported in well under a second, in one error that
names every bad option and what it allows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Real
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifar_lab.configs import flatten
from cifar_lab.errors import UserError
from cifar_lab.model_options import CHOICES


@dataclass(frozen=True)
class Num:
    """A finite number (or integer) within bounds; ``low_open``/``high_open`` exclude the bound."""

    integer: bool = False
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    nullable: bool = False
    note: str = ""

    def check(self, key: str, value: Any) -> str | None:
        if value is None and self.nullable:
            return None
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if self.integer else Real):
            return f"{key}{self.note} must be {kind}, got {value!r}"
        if not math.isfinite(value):
            return f"{key}{self.note} must be a finite number, got {value}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"{key}{self.note} must be {'>' if self.low_open else '>='} {self.low:g}, got {value}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"{key}{self.note} must be {'<' if self.high_open else '<='} {self.high:g}, got {value}"
        return None


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values (compared with ``==``, so ``True`` and ``"auto"`` both work)."""

    options: tuple[Any, ...]
    note: str = ""

    def check(self, key: str, value: Any) -> str | None:
        if any(value is o or (type(value) is type(o) and value == o) for o in self.options):
            return None
        shown = ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in self.options)
        return f"{key} must be one of {shown}{self.note}, got {value!r}"


@dataclass(frozen=True)
class Subset:
    """A list whose every item is one of ``options``."""

    options: tuple[str, ...]
    what: str

    def check(self, key: str, value: Any) -> str | None:
        bad = [v for v in value if v not in self.options] if isinstance(value, (list, tuple)) else [value]
        if bad or not value:
            return f"unknown {self.what}(s) {bad} in {key}; valid: {', '.join(self.options)}"
        return None


@dataclass(frozen=True)
class Text:
    """A string matching ``pattern`` (used where the value becomes part of a path)."""

    pattern: str
    explain: str

    def check(self, key: str, value: Any) -> str | None:
        if isinstance(value, str) and re.fullmatch(self.pattern, value):
            return None
        return f"{key} must be {self.explain}, got {value!r}"


@dataclass(frozen=True)
class NumList:
    """A list of ``length`` numbers (``what``: "integers" where ``item`` wants them), each checked by ``item``."""

    length: int
    item: Num
    what: str = "numbers"

    def check(self, key: str, value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or len(value) != self.length:
            return f"{key} must be a list of {self.length} {self.what}, got {value!r}"
        return next((m for i, v in enumerate(value) if (m := self.item.check(f"{key}[{i}]", v))), None)


@dataclass(frozen=True)
class Batches:
    """Lightning's ``limit_*_batches``: null (all), a count of batches (an integer >= 1) or a share in (0, 1].

    Zero is refused: a run records an epoch only with its training and its validation (``why`` says so).
    """

    why: str

    def check(self, key: str, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            return f"{key} must be null, a number of batches (an integer >= 1) or a share in (0, 1], got {value!r}"
        if value == 0:
            return f"{key}={value} is refused: {self.why}"
        if isinstance(value, int) and value < 1 or not isinstance(value, int) and not 0 < value <= 1:
            return f"{key} must be null, a number of batches (an integer >= 1) or a share in (0, 1], got {value!r}"
        return None


Rule = Num | Choice | Subset | Text | NumList | Batches
BENCH_PIPELINES = ("seed_style", "classic", "fast", "raw", "packed", "steps")

BOOL = Choice((True, False))
MAYBE_BOOL = Choice((True, False, None))
POSITIVE = Num(low=0, low_open=True)
NON_NEGATIVE = Num(low=0)
COUNT = Num(integer=True, low=0, low_open=True)  # an integer > 0
SIZE = Num(integer=True, low=0, low_open=True, high=65536)  # a layer's width: > 0, and small enough to allocate
IMAGES = Num(integer=True, low=0, low_open=True, high=10_000_000)  # a number of generated images
NON_NEGATIVE_INT = Num(integer=True, low=0)
PRECISIONS = ("32-true", "32", 32, "64-true", "64", 64, "16-mixed", "16", 16,
              "bf16-mixed", "bf16", "16-true", "bf16-true")  # fmt: skip

# Dotted keys of the composed config. A key that the composed config does not have (an option of
# another optimizer, a source's option under another source) is skipped.
RULES: dict[str, Rule] = {
    "name": Text(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]*", "a plain name (letters, digits, _ . = + -; it becomes a folder)"),
    "seed": Num(integer=True, low=0, high=2**32 - 1),
    "deterministic": BOOL,
    "l2": NON_NEGATIVE,
    "resume": Choice((False, True, "auto")),
    "optimizer.lr": POSITIVE,
    "optimizer.momentum": Num(low=0, high=1, high_open=True),
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.nesterov": BOOL,
    "optimizer.betas": NumList(2, Num(low=0, high=1, high_open=True)),
    "optimizer.eps": POSITIVE,
    "scheduler.name": Choice(("none", "cosine", "onecycle", "step")),
    "scheduler.interval": Choice(("epoch", "step")),
    "scheduler.schedule.T_max": COUNT,
    "scheduler.schedule.eta_min": NON_NEGATIVE,
    "scheduler.schedule.max_lr": POSITIVE,
    "scheduler.schedule.pct_start": Num(low=0, low_open=True, high=1, high_open=True),
    "scheduler.schedule.total_steps": Num(integer=True, low=1, nullable=True),
    "scheduler.schedule.step_size": COUNT,
    "scheduler.schedule.gamma": POSITIVE,
    "data.batch_size": COUNT,
    "data.val_from_train": NON_NEGATIVE_INT,
    "data.num_workers": Num(integer=True, low=0, nullable=True),
    "data.pin_memory": MAYBE_BOOL,
    "data.persistent_workers": BOOL,
    "data.n_train": IMAGES,
    "data.n_test": IMAGES,
    "data.seed": Num(integer=True, low=0, high=2**32 - 1),
    "data.root": Text(r"[^\x00]+", "a folder path"),
    "data.loader": Choice(("auto", "classic", "gpu")),
    "data.augment": BOOL,
    "data.drop_last": BOOL,
    "data.download": BOOL,
    "data.resize": BOOL,
    "trainer.max_epochs": COUNT,
    # Every epoch is trained and validated: metrics.csv's row, best.ckpt (by val/acc) and the summary need both.
    "trainer.limit_train_batches": Batches("it trains nothing (every epoch would be skipped)"),
    "trainer.limit_val_batches": Batches(
        "a run validates every epoch (its metrics.csv row, best.ckpt and summary are by val/acc); "
        "use a share such as 0.1 or a few batches for a quicker validation"
    ),
    "trainer.check_val_every_n_epoch": Choice((1,), " (a run validates every epoch)"),
    "trainer.precision": Choice(PRECISIONS),
    "trainer.enable_progress_bar": BOOL,
    "speed.steps_per_call": Num(integer=True, low=1),
    "speed.cuda_graph": Choice(("auto", True, False)),
    "speed.channels_last": Choice(("auto", True, False)),
    "speed.compile": BOOL,
    "speed.pack_conv": Choice(("member", "streams", "grouped_cl")),
    "speed.pack_isolation": Choice(("step", "chunk")),
    "speed.cpu_threads": Num(integer=True, low=1, nullable=True),
    "speed.cpu_heap": Choice(("auto", True, False)),
    "bench.pipelines": Subset(BENCH_PIPELINES, "bench pipeline"),
    "bench.warmup_epochs": NON_NEGATIVE_INT,
    "bench.epochs": COUNT,
    "bench.seed_style_workers": NumList(2, NON_NEGATIVE_INT, "integers"),
    "bench.pack": NON_NEGATIVE_INT,
    "bench.rounds": COUNT,
    "bench.peak_size": Num(integer=True, low=1, nullable=True),
    "hydra.launcher.max_pack": COUNT,  # checked by the packed launcher (the job's config has no hydra node)
    "hydra.launcher.pack": Choice(("auto", True, False)),  # likewise
}

# Each architecture's options (conf/model/<name>.yaml), by ``model.name``; their choices are the models' own
# (model_options). tests/test_reliability.py checks that every registered model's constructor options are
# here, so none goes unchecked.
MODEL_RULES: dict[str, dict[str, Rule]] = {
    "fc": {"hidden": SIZE},
    "cnn": {
        "width": Num(integer=True, low=2, high=65536, note=" (the second conv has width/2 channels)"),
        "hidden": SIZE,
    },
    "cnn3": {
        "width": Num(integer=True, low=4, high=65536, note=" (the third conv has width/4 channels)"),
        "hidden": SIZE,
        "fc_act": Choice(CHOICES["cnn3"]["fc_act"]),
    },
    "resnet": {
        "n_blocks": Num(integer=True, low=0, low_open=True, high=10_000),
        "width": SIZE,
        "tied_blocks": BOOL,
        "dropout": Num(low=0, high=1, high_open=True, note=" (the dropout p)"),
        "batchnorm": BOOL,
        "hidden": SIZE,
        "bn_momentum": Num(low=0, high=1, nullable=True, note=" (null: a cumulative average)"),
        "block_conv_bias": BOOL,
        "bn_weight_init": Num(),
        "stem_dropout": BOOL,
        **{key: Choice(choices) for key, choices in CHOICES["resnet"].items()},  # the seed's layouts
    },
}


def models_with(option: str) -> list[str]:
    """The models (``model=<name>``) that have ``option``."""
    return [name for name, rules in MODEL_RULES.items() if option in rules]


def lacking_option(model: str, option: str, value: Any = None) -> str:
    """Why ``model`` cannot take ``model.<option>`` (``value``: the composed one, and the ``reg`` options that set
    it), which models (and presets) have it, and the fix."""
    from cifar_lab.presets import preset_models, set_by, shown

    others = models_with(option)
    presets = [p for p, m in preset_models().items() if m in others]
    where = f"model.{option}={shown(value)}" if value is not None else f"model.{option}"
    regs = set_by(f"model.{option}") if value is not None else []
    by = f", as {' and '.join(regs)} sets it" if regs else ""
    has = (
        f"the model{'s' if len(others) > 1 else ''} that {'have' if len(others) > 1 else 'has'} it: "
        f"{', '.join(f'model={m}' for m in others)}" + (f" (experiment={', '.join(presets)})" if presets else "")
        if others
        else "no model has it"
    )
    return f"model={model} has no option {option} ({where}{by}); {has}: choose one of those, or leave it out"


def missing_keys(cfg: DictConfig) -> list[str]:
    """Options left at ``???`` (required), as dotted keys; read without resolving interpolations."""
    return [k for k, v in flatten(OmegaConf.to_container(cfg, resolve=False)).items() if v == "???"]


def rules_for(cfg: DictConfig) -> dict[str, Rule]:
    """RULES plus the options of the configured model."""
    name = OmegaConf.select(cfg, "model.name", default=None)
    return {**RULES, **{f"model.{k}": r for k, r in MODEL_RULES.get(name, {}).items()}}


def problems(cfg: DictConfig) -> list[str]:
    """One message per option that is missing or breaks its rule."""
    missing = missing_keys(cfg)
    out = [f"{key} has no value and needs one (set it on the command line: {key}=...)" for key in missing]
    model = OmegaConf.select(cfg, "model", default=None)
    if OmegaConf.is_dict(model) and model.get("name") in MODEL_RULES:  # an option the model's constructor lacks
        own = MODEL_RULES[model.name]
        for option in [k for k in model if not str(k).startswith("_") and k != "name" and k not in own]:
            out.append(lacking_option(model.name, str(option), model.get(option)))
    for key, rule in rules_for(cfg).items():
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if parent is None or leaf not in parent or key in missing:
            continue
        value = OmegaConf.select(cfg, key)
        message = rule.check(key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
        if message:
            out.append(message)
    return out


def validate(cfg: DictConfig) -> None:
    """Raise one UserError listing every invalid option."""
    found = problems(cfg)
    if found:
        raise UserError(
            "invalid configuration: " + "; ".join(found) + ". Fix the value(s) on the command line or in the config."
        )
