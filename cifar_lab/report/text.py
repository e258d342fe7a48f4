"""The regulariser comparison: a table row and one sentence per regulariser or variant against its baseline."""

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
    delta = _delta(ours, base, scale)
    if delta is None:
        return "not measured"
    return (
        f"{ours.fmt(digits, scale)}{unit} vs {base.fmt(digits, scale)}{unit} "
        f"({delta:+.{digits}f}{unit if delta_unit is None else delta_unit})"
    )


def _incomplete_note(g: Group) -> str:
    return f" ({len(g.incomplete)} not completed)" if g.incomplete else ""


ROW_HEADER = ["Setting", "Regulariser or change", "Against", "Final val acc", "Train−val gap (acc)",
              "Train−val gap (loss)", "Time", "s/epoch", "n"]  # fmt: skip


def comparison_row(group: Group, base: Group | None) -> list[str]:
    """One table row: ``group`` against ``base``, each cell 'ours vs base (Δ)'."""
    cells = [f"**{group.label}**", change_text(group)]
    if base is None or not group.completed or not base.completed:
        why = "no baseline" if base is None else "no completed run"
        return [*cells, base.label if base else "—", why, "", "", "", "", ""]
    s, b = group.stats(), base.stats()
    return [
        *cells,
        base.label,
        _pair(s["final_val_acc"], b["final_val_acc"], 2, 100, " %", " pp"),
        _pair(s["gap_acc"], b["gap_acc"], 2, 100, " pp"),
        _pair(s["gap_loss"], b["gap_loss"], 3, 1, ""),
        _pair(s["train_seconds"], b["train_seconds"], 1, 1, " s"),
        _pair(s["seconds_per_epoch"], b["seconds_per_epoch"], 3, 1, " s/epoch"),
        f"{len(group.completed)} vs {len(base.completed)}",
    ]


def change_text(group: Group) -> str:
    """What sets ``group`` apart from its baseline: its regularisers, else how it varies its preset."""
    if regularisers(group.settings):
        return reg_text(group.settings)
    return ", ".join(describe(k, v) for k, v in group.variant.items()) or "—"


def _delta(ours: Stat | None, base: Stat | None, scale: float) -> float | None:
    return None if ours is None or base is None else (ours.mean - base.mean) * scale


def comparison(group: Group, base: Group | None, other_diff: dict[str, Any]) -> str:
    """One sentence: what ``group``'s regulariser (or change) did against ``base``, and the caveats."""
    head = f"**{group.label}** ({change_text(group)})"
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
    val, gap = _delta(s["final_val_acc"], b["final_val_acc"], 100), _delta(s["gap_acc"], b["gap_acc"], 100)
    moved = "raised" if (val or 0) > 0 else "lowered" if (val or 0) < 0 else "did not change"
    text = f"{head}: {moved} the final val acc"
    text += f" by {abs(val):.2f} pp" if val else ""
    text += f" and moved the train−val gap by {gap:+.2f} pp" if gap is not None else ""
    text += "."
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
    parts = [f"final val acc {seed['val_acc']:.2f} % vs {seed_base['val_acc']:.2f} % "
             f"({seed['val_acc'] - seed_base['val_acc']:+.2f} pp)"]  # fmt: skip
    if "train_acc" in seed and "train_acc" in seed_base:
        gap, gap_base = seed["train_acc"] - seed["val_acc"], seed_base["train_acc"] - seed_base["val_acc"]
        parts.append(f"gap {gap - gap_base:+.2f} pp")
    return " In the seed (300 epochs, CIFAR-10): " + ", ".join(parts) + "."
