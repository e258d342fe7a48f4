"""Find run directories and read what the report needs: summary.json, metrics.csv, .hydra/config.yaml.

Kept free of torch/Lightning imports (``cifar_lab.recording`` pulls both in and costs seconds), so
that a report over a hundred runs stays fast. TensorBoard files are never read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cifar_lab.configs import debug_settings, flatten
from cifar_lab.errors import UserError
from cifar_lab.files import read_metrics

METRIC_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")
# Config keys that make two runs different experiments (seeds and loader plumbing do not).
SETTING_PREFIXES = ("model.", "optimizer.")
SETTING_KEYS = (
    "l2",
    "data.source",
    "data.n_train",
    "data.n_test",
    "data.val_from_train",
    "data.batch_size",
    "data.augment",
    "data.drop_last",
    "trainer.max_epochs",
    "trainer.precision",
)


class _Loader(yaml.SafeLoader):
    """YAML's safe loader without aliases: Hydra writes none, and nested aliases expand exponentially."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not read")
        return super().compose_node(parent, index)


# The summary.json fields the report reads, with the types a run writes (None: absent or null).
SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "experiment": (str,),
    "data": (dict,),
    "final": (dict,),
    "best": (dict,),
    "params": (int,),
    "epochs": (int,),
    "train_seconds": (int, float),
    "seconds_per_epoch": (int, float),
    "device": (str,),
    "error": (str,),
    "debug": (list,),
    "packed": (dict,),
    "composed": (dict,),
}


def summary_problem(summary: dict[str, Any]) -> str | None:
    """Why ``summary`` is not what a run writes (a field of another type, a metric that is not a number)."""
    for key, types in SUMMARY_TYPES.items():
        value = summary.get(key)
        if value is not None and (type(value) is bool or not isinstance(value, types)):
            return f"{key} is {type(value).__name__}, not {' or '.join(t.__name__ for t in types)}"
    for key in ("final", "best"):
        for name, value in (summary.get(key) or {}).items():
            if name != "epoch" and (type(value) is bool or not isinstance(value, (int, float))):
                return f"{key}.{name} is {type(value).__name__}, not a number"
    best_epoch = (summary.get("best") or {}).get("epoch")
    if best_epoch is not None and type(best_epoch) is not int:
        return f"best.epoch is {type(best_epoch).__name__}, not an integer"
    return None


@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path
    summary: dict[str, Any]
    rows: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    config_debug: list[str] = field(default_factory=list)  # debug settings in its config (older summaries lack them)

    @property
    def experiment(self) -> str:
        return str(self.summary.get("experiment") or self.path.name)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        """Completed; a debug run that its debug setting stopped early (fast_dev_run) did what it was told."""
        return self.status == "completed" or (self.status == "stopped" and bool(self.debug))

    @property
    def failed_start(self) -> bool:
        """Never recorded an epoch: stopped before training (a refused start, a crash while building)."""
        return not self.completed and (not self.rows or not self.summary.get("epochs"))

    @property
    def debug(self) -> list[str]:
        """The debug settings it ran with (fast_dev_run, limit_*_batches, overfit_batches); [] for a real run."""
        recorded = self.summary.get("debug")
        return [str(d) for d in recorded] if isinstance(recorded, list) else self.config_debug

    @property
    def pack_members(self) -> int:
        """The members of the pack it trained in (1: trained alone)."""
        members = (self.summary.get("packed") or {}).get("members")
        return members if type(members) is int and members > 1 else 1

    @property
    def composed(self) -> dict[str, Any]:
        """What its command line composed (name, preset, closest preset, differences); {} for older runs."""
        return self.summary.get("composed") or {}

    @property
    def synthetic(self) -> bool:
        return bool((self.summary.get("data") or {}).get("synthetic"))

    @property
    def source(self) -> str:
        return str((self.summary.get("data") or {}).get("source", "unknown"))


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every directory holding summary.json at or below the given paths, sorted; a UserError if none."""
    found: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise UserError(
                f"{path} does not exist. Give run directories (outputs/<name>/<source>-<time>) or "
                "multirun directories (outputs/multirun/<time>)."
            )
        hits = [path / "summary.json"] if (path / "summary.json").is_file() else list(path.rglob("summary.json"))
        if not hits:
            raise UserError(
                f"No runs found under {path}: a run directory is one holding summary.json, which "
                "`python -m cifar_lab` writes into each run's output directory. Give run directories "
                "or multirun directories (outputs/multirun/<time>), or a folder above them."
            )
        found.update(h.parent.resolve() for h in hits)
    return sorted(found)


def config_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The comparison-relevant config values as dotted keys; a reference to another key is resolved."""
    every = flatten(cfg)
    flat = {
        k: _resolved(v, every)
        for k, v in every.items()
        if (k.startswith(SETTING_PREFIXES) or k in SETTING_KEYS) and not k.endswith("._partial_")
    }
    return {k: _hashable(v) for k, v in flat.items() if v is not None}


def _hashable(value: Any) -> Any:
    """A setting as the report groups by it: lists as tuples, anything else that is not a plain value as text."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value if isinstance(value, (str, int, float, bool, tuple)) else str(value)


REFERENCE = re.compile(r"\$\{([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)\}")  # exactly ${a.b.c}: another key


def _resolved(value: Any, every: dict[str, Any], depth: int = 0) -> Any:
    """A value that is exactly a reference to another key (``${model.name}``), looked up in the run's own
    config (references to references up to a depth of 8); any other text, ``${oc.env:...}`` and every
    other resolver call included, stays text: a run directory is data, and reading it calls nothing."""
    match = REFERENCE.fullmatch(value) if isinstance(value, str) else None
    if match is None or depth >= 8:
        return value
    return _resolved(every.get(match.group(1)), every, depth + 1)


def load_run(path: Path) -> Run:
    """Read one run directory; a missing or broken config leaves ``settings`` to the summary's data source."""
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON, or bytes that are not UTF-8
        summary = {"status": "unreadable", "error": f"summary.json: {err}"}
    if not isinstance(summary, dict):
        summary = {"status": "unreadable", "error": "summary.json: not a JSON object"}
    elif problem := summary_problem(summary):
        summary = {"status": "unreadable", "error": f"summary.json: {problem}"}
    rows = [r for r in read_metrics(path / "metrics.csv") if r["epoch"] >= 1 and all(map(math.isfinite, r.values()))]
    run = Run(path=path, summary=summary, rows=rows)
    cfg_path = path / ".hydra" / "config.yaml"
    try:
        cfg = yaml.load(cfg_path.read_text(), Loader=_Loader) if cfg_path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):  # cut short by a killed job: as if it were missing
        cfg = None
    if isinstance(cfg, dict):
        run.settings = config_settings(cfg)
        run.seed = cfg.get("seed") if type(cfg.get("seed")) is int else None
        run.config_debug = debug_settings(cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {})
    run.settings.setdefault("data.source", run.source)
    return run
