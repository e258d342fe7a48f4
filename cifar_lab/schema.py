"""Every check on the composed config that needs no device, as one declarative table.

Hydra itself rejects unknown keys and group options; this adds types, ranges and choices. It runs
before torch is imported, so a bad value is reported in well under a second, in one error that
names every bad option and what it allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifar_lab.errors import UserError


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

    def check(self, key: str, value: Any) -> str | None:
        if any(value is o or (type(value) is type(o) and value == o) for o in self.options):
            return None
        shown = ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in self.options)
        return f"{key} must be one of {shown}, got {value!r}"


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


Rule = Num | Choice | Subset
BENCH_PIPELINES = ("seed_style", "classic", "fast", "raw")

POSITIVE = Num(low=0, low_open=True)
NON_NEGATIVE = Num(low=0)
COUNT = Num(integer=True, low=0, low_open=True)  # an integer > 0

# Dotted keys of the composed config. A key that the composed config does not have (an option of
# another model or optimizer) is skipped.
RULES: dict[str, Rule] = {
    "seed": Num(integer=True),
    "l2": NON_NEGATIVE,
    "resume": Choice((False, True, "auto")),
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "data.batch_size": COUNT,
    "data.val_from_train": Num(integer=True, low=0),
    "data.num_workers": Num(integer=True, low=0, nullable=True),
    "data.n_train": COUNT,
    "data.n_test": COUNT,
    "data.loader": Choice(("auto", "classic", "gpu")),
    "trainer.max_epochs": COUNT,
    "speed.steps_per_call": Num(integer=True, low=1),
    "speed.cuda_graph": Choice(("auto", True, False)),
    "model.dropout": Num(low=0, high=1, high_open=True, note=" (the dropout p)"),
    "bench.pipelines": Subset(BENCH_PIPELINES, "bench pipeline"),
    "bench.warmup_epochs": Num(integer=True, low=0),
    "bench.epochs": COUNT,
}


def problems(cfg: DictConfig, rules: dict[str, Rule] = RULES) -> list[str]:
    """One message per option that breaks its rule."""
    out = []
    for key, rule in rules.items():
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if parent is None or leaf not in parent:
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
