"""Generated prose: one paragraph per regulariser or variant against the group it should be compared with."""

from __future__ import annotations

from typing import Any

from cifar_lab.report.aggregate import Group, Stat, describe, regularisers
from cifar_lab.report.seed import seed_entry

REG_WORDS = {
    "l2": "explicit L2 λ={}",
    "optimizer.weight_decay": "weight decay {}",
    "model.dropout": "dropout p={}",
    "model.batchnorm": "BatchNorm",
}


def reg_text(settings: dict[str, Any]) -> str:
    return ", ".join(REG_WORDS[k].format(v) for k, v in regularisers(settings).items()) or "no regulariser"


def _pair(
    ours: Stat | None, base: Stat | None, digits: int, scale: float, unit: str, delta_unit: str | None = None
) -> str:
    """'a vs b (±d unit)' for two statistics, or what is missing."""
    if ours is None or base is None:
        return "not measured"
    delta = (ours.mean - base.mean) * scale
    return (
        f"{ours.fmt(digits, scale)}{unit} vs {base.fmt(digits, scale)}{unit} "
        f"({delta:+.{digits}f}{unit if delta_unit is None else delta_unit})"
    )


def _incomplete_note(g: Group) -> str:
    return f" ({len(g.incomplete)} not completed)" if g.incomplete else ""


def comparison(group: Group, base: Group | None, other_diff: dict[str, Any]) -> str:
    """The change in final val acc, in the train-val gap and in time of ``group`` against ``base``."""
    head = f"**{group.label}** ({reg_text(group.settings)})"
    if base is None:
        return (
            f"{head}: no baseline among these runs (p2a, or the same settings with the regularisers off, on the "
            "same data and protocol), so no comparison."
        )
    head += f" against **{base.label}**"
    missing = [g.label + _incomplete_note(g) for g in (group, base) if not g.completed]
    if missing:
        verb = "has" if len(missing) == 1 else "have"
        return f"{head}: not compared, because {' and '.join(missing)} {verb} no completed run."
    s, b = group.stats(), base.stats()
    text = (
        f"{head}: final val acc {_pair(s['final_val_acc'], b['final_val_acc'], 2, 100, ' %', ' pp')}; "
        f"train−val gap {_pair(s['gap_acc'], b['gap_acc'], 2, 100, ' pp')} in accuracy and "
        f"{_pair(s['gap_loss'], b['gap_loss'], 3, 1, '')} in loss; "
        f"training time {_pair(s['train_seconds'], b['train_seconds'], 1, 1, ' s')}, "
        f"{_pair(s['seconds_per_epoch'], b['seconds_per_epoch'], 3, 1, ' s/epoch')}; "
        f"n = {len(group.completed)} vs {len(base.completed)} completed runs."
    )
    if other_diff:
        text += (
            f" Not a clean comparison: {base.label} also differs in "
            + ", ".join(f"{describe(k, v)} (here: {describe(k, group.settings.get(k))})" for k, v in other_diff.items())
            + "."
        )
    if group.devices != base.devices:
        devices = f"{', '.join(group.devices)} vs {', '.join(base.devices)}"
        text += f" The devices differ ({devices}), so the times are not like for like."
    if group.synthetic or base.synthetic:
        text += " SYNTHETIC data: these differences say nothing about CIFAR-10."
    return text + _seed_sentence(group, base)


def _seed_sentence(group: Group, base: Group) -> str:
    """The same comparison in the seed's published numbers, for two unmodified seed presets."""
    seed, seed_base = seed_entry(group.experiment), seed_entry(base.experiment)
    if group.variant or base.variant or not seed or not seed_base or group.experiment == base.experiment:
        return ""
    parts = [
        f"final val acc {seed['val_acc']:.2f} % vs {seed_base['val_acc']:.2f} % "
        f"({seed['val_acc'] - seed_base['val_acc']:+.2f} pp)"
    ]
    if "train_acc" in seed and "train_acc" in seed_base:
        gap, gap_base = seed["train_acc"] - seed["val_acc"], seed_base["train_acc"] - seed_base["val_acc"]
        parts.append(f"gap {gap:.2f} pp vs {gap_base:.2f} pp ({gap - gap_base:+.2f} pp)")
    parts.append(
        f"time {seed['train_seconds']:.1f} s vs {seed_base['train_seconds']:.1f} s "
        f"({seed['train_seconds'] - seed_base['train_seconds']:+.1f} s)"
    )
    return " The seed's published numbers (300 epochs, CIFAR-10): " + "; ".join(parts) + "."
