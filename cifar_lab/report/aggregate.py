"""Group runs into experiments and summarise each: mean ± std over seeds, the overfitting gap, curves."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifar_lab.configs import CONF_DIR, compose
from cifar_lab.report.runs import METRIC_KEYS, Run, config_settings

VARIANT_PREFIXES = ("model.", "optimizer.", "l2")  # what an experiment preset fixes; a change names a variant
VARIANT_WORDS = {("model.tied_blocks", False): "untied blocks", ("model.tied_blocks", True): "tied blocks"}
# Neutral values of the regularisers; a group with any other value is compared against its baseline.
REG_NEUTRAL: dict[str, Any] = {"l2": 0.0, "optimizer.weight_decay": 0.0, "model.dropout": 0.0, "model.batchnorm": False}
# The dropout layout, moot without dropout: a baseline has the model's defaults (p2a's) there.
DROPOUT_LAYOUT_OFF: dict[str, Any] = {"model.dropout_kind": "element", "model.stem_dropout": False}


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (0 for one value) and count of one quantity over runs."""

    mean: float
    std: float
    n: int

    def fmt(self, digits: int, scale: float = 1.0) -> str:
        text = f"{self.mean * scale:.{digits}f}"
        return text if self.n < 2 else f"{text} ± {self.std * scale:.{digits}f}"


def stat(values: Iterable[float | None]) -> Stat | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def run_numbers(summary: dict[str, Any], members: int = 1) -> dict[str, float | None]:
    """The per-run quantities of the results table, from a run's summary.json (accuracies as fractions).

    A member of a pack of ``members`` records the pack's wall time, its only time: its share is that ÷ members.
    """
    final, best = summary.get("final") or {}, summary.get("best") or {}
    has_final = all(k in final for k in METRIC_KEYS)
    seconds, per_epoch = summary.get("train_seconds"), summary.get("seconds_per_epoch")
    return {
        "params": summary.get("params"),
        "epochs": summary.get("epochs"),
        **{f"final_{k}": final.get(k) for k in METRIC_KEYS},
        "best_val_acc": best.get("val_acc"),
        "best_epoch": best.get("epoch"),
        "gap_acc": final["train_acc"] - final["val_acc"] if has_final else None,
        "gap_loss": final["val_loss"] - final["train_loss"] if has_final else None,
        "train_seconds": None if seconds is None else seconds / members,
        "seconds_per_epoch": None if per_epoch is None else per_epoch / members,
    }


NUMBER_KEYS = tuple(run_numbers({}))  # every quantity, also for a group without a completed run


@dataclass
class Group:
    """The runs of one experiment setting (its seeds); only completed runs enter the statistics."""

    experiment: str
    settings: dict[str, Any]
    runs: list[Run]
    variant: dict[str, Any] = field(default_factory=dict)  # settings that differ from the experiment's preset
    label: str = ""

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.completed]

    @property
    def incomplete(self) -> list[Run]:
        return [r for r in self.runs if not r.completed]

    @property
    def synthetic(self) -> bool:
        return any(r.synthetic for r in self.runs) or self.settings.get("data.source") == "synthetic"

    @property
    def packed(self) -> bool:
        """Its runs trained as members of packs (grouping keeps packed and solo runs apart)."""
        return any(r.pack_members > 1 for r in self.runs)

    @property
    def debug(self) -> list[str]:
        return self.runs[0].debug

    @property
    def devices(self) -> list[str]:
        return sorted({str(r.summary.get("device")) for r in self.completed if r.summary.get("device")})

    def stats(self) -> dict[str, Stat | None]:
        numbers = [run_numbers(r.summary, r.pack_members) for r in self.completed]
        return {k: stat(n[k] for n in numbers) for k in NUMBER_KEYS}

    @cached_property
    def curves(self) -> dict[str, tuple[list[int], list[float], list[float]]]:
        """Per metric: epochs all completed runs reached, and the mean and std across runs there."""
        runs = [r for r in self.completed if r.rows]
        if not runs:
            return {}
        epochs = sorted(set.intersection(*({row["epoch"] for row in r.rows} for r in runs)))
        by_epoch = [{row["epoch"]: row for row in r.rows} for r in runs]
        out = {}
        for key in METRIC_KEYS:
            stats = [stat(rows[e][key] for rows in by_epoch) for e in epochs]
            out[key] = (epochs, [s.mean for s in stats], [s.std for s in stats])
        return out


def preset_settings(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The settings each named experiment preset composes to; names without a preset are left out."""
    names = [n for n in names if (Path(CONF_DIR) / "experiment" / f"{n}.yaml").is_file()]
    return {n: config_settings(OmegaConf.to_container(compose(f"experiment={n}"))) for n in names}


def group_runs(runs: list[Run], presets: dict[str, dict[str, Any]]) -> list[Group]:
    """One group per experiment name and setting, labelled by how it differs from its preset and siblings.

    Packed and solo runs of one setting are two groups (a member's time is a share of its pack's), and so are
    debug runs (``--include-debug``) and real ones. A label names only settings that differ and have a value.
    """
    buckets: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        settings = {k: _key(v) for k, v in run.settings.items()}
        key = [run.experiment, settings, run.pack_members > 1, run.debug]
        buckets[json.dumps(key, sort_keys=True)].append(run)
    groups = [Group(rs[0].experiment, rs[0].settings, rs) for rs in buckets.values()]
    by_name: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_name[g.experiment].append(g)
    for name, siblings in by_name.items():
        varying = {k for g in siblings for k in g.settings if len({_key(s.settings.get(k)) for s in siblings}) > 1}
        preset = presets.get(name)
        for g in siblings:
            if preset is not None and any(k.startswith("model.") for k in g.settings):  # without a config: no diff
                g.variant = {
                    k: g.settings.get(k)
                    for k in sorted(set(g.settings) | set(preset))
                    if k.startswith(VARIANT_PREFIXES) and _key(g.settings.get(k)) != _key(preset.get(k))
                }
            else:
                g.variant = {k: g.settings.get(k) for k in sorted(varying) if k.startswith(VARIANT_PREFIXES)}
            composed = g.runs[0].composed
            differs = composed.get("differs")
            if preset is None and isinstance(composed.get("closest"), str) and differs and isinstance(differs, list):
                g.variant = {"composed": composed}  # not a preset: how it differs from the closest one
            protocol = {k: g.settings.get(k) for k in sorted(varying) if not k.startswith(VARIANT_PREFIXES)}
            parts = [describe(k, v) for k, v in {**g.variant, **protocol}.items() if v is not None]
            if composed.get("preset") and composed["preset"] != name:  # e.g. resnet+dropout at p2b_dropout's lr
                parts.append(f"= {composed['preset']}")
            parts += ["packed"] if g.packed else []
            parts += [f"DEBUG {', '.join(d.removeprefix('trainer.') for d in g.debug)}"] if g.debug else []
            g.label = f"{name} ({', '.join(parts)})" if parts else name
    _dedupe_labels(groups)
    return sorted(groups, key=lambda g: (g.experiment, bool(g.variant), g.label))


def describe(key: str, value: Any) -> str:
    """A short name for one setting: 'untied blocks', 'lr=0.1', 'batch_size=64'; a composed run (no preset):
    'closest p2b_dropout: lr=0.01'."""
    if key == "composed":  # two differences at most: a label also heads a figure's legend; the table lists all
        shown = [short_difference(str(d)) for d in value["differs"]]
        more = f", +{len(shown) - 2} more" if len(shown) > 2 else ""
        return f"closest {value['closest']}: " + ", ".join(shown[:2]) + more
    if (key, value) in VARIANT_WORDS:
        return VARIANT_WORDS[(key, value)]
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key.rsplit('.', 1)[-1]}={text}"


def short_difference(text: str) -> str:
    """'optimizer.lr=0.01 (p2b_dropout: 0.003)' as a label says it: 'lr=0.01'."""
    setting = text.split(" (", 1)[0]
    key, sep, value = setting.partition("=")
    return f"{key.rsplit('.', 1)[-1]}={value}" if sep else setting


def regularisers(settings: dict[str, Any]) -> dict[str, Any]:
    """The regulariser settings that are on (not at their neutral value)."""
    return {k: settings[k] for k, v in REG_NEUTRAL.items() if k in settings and _key(settings[k]) != _key(v)}


def baseline_for(group: Group, groups: list[Group]) -> tuple[Group | None, dict[str, Any]]:
    """The unregularised group to compare a regularised one with, and the other settings they differ in.

    First choice: the same settings with the regularisers off (p2a for p2b_*); else the p2a group on the
    same data and protocol, with the differing settings returned so the text can say so.
    """
    neutral = {**REG_NEUTRAL, **DROPOUT_LAYOUT_OFF}
    want = {**group.settings, **{k: v for k, v in neutral.items() if k in group.settings}}
    groups = sorted(groups, key=lambda g: g.packed != group.packed)  # packed against packed where there is one
    for g in groups:
        if g is not group and _same(g.settings, want):
            return g, {}
    for g in groups:
        if g.experiment == "p2a" and not g.variant and g is not group and same_protocol(g.settings, want):
            return g, {
                k: g.settings.get(k)
                for k in sorted(set(want) | set(g.settings))
                if _key(want.get(k)) != _key(g.settings.get(k))
            }
    return None, {}


def same_protocol(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same data and training protocol (settings outside model, optimizer and l2)."""

    def protocol(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if not k.startswith(VARIANT_PREFIXES)}

    return _same(protocol(a), protocol(b))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: _key(v) for k, v in a.items()} == {k: _key(v) for k, v in b.items()}


def _key(value: Any) -> str:
    """A comparable form of a config value (0 == 0.0, lists by content)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return repr(float(value))
    return json.dumps(value, sort_keys=True, default=str)


def _dedupe_labels(groups: list[Group]) -> None:
    seen: dict[str, int] = defaultdict(int)
    for g in groups:
        seen[g.label] += 1
        if seen[g.label] > 1:
            g.label = f"{g.label} #{seen[g.label]}"
