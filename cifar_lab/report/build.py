"""Assemble the comparison report from run directories and write report.html and report.md."""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import track

from cifar_lab.files import writable_folder, write_bytes_atomic
from cifar_lab.report import figures
from cifar_lab.report.aggregate import (
    Group,
    Stat,
    baseline_for,
    group_runs,
    preset_settings,
    regularisers,
    same_protocol,
)
from cifar_lab.report.document import Figure, Section, Table, to_html, to_markdown
from cifar_lab.report.runs import Run, find_run_dirs, load_run
from cifar_lab.report.seed import (
    REAL_SOURCES,
    params_match,
    params_text,
    seed_curves,
    seed_differences,
    seed_entry,
    seed_table,
)
from cifar_lab.report.text import ROW_HEADER, comparison, comparison_row

TITLE = "cifar_lab comparison report"
SYNTHETIC_WARNING = (
    "⚠ SYNTHETIC DATA: rows marked SYNTHETIC trained on generated images, not CIFAR-10. Their numbers "
    "only test the pipeline; comparing them with the seed's published CIFAR-10 numbers is meaningless."
)


T = TypeVar("T")


def progress(items: Sequence[T], description: str) -> Iterable[T]:
    """A slow loop (reading runs, drawing figures) under a progress bar on a terminal; none in a pipe or a log."""
    console = Console(stderr=True)
    return track(items, description=description, console=console, transient=True, disable=not console.is_terminal)


@dataclass
class Report:
    """The runs found, their groups, and the folder their names are given relative to."""

    runs: list[Run]
    groups: list[Group]
    root: Path

    def rel(self, run: Run) -> str:
        return os.path.relpath(run.path, self.root) if run.path != self.root else run.path.name

    def group_of(self, run: Run) -> str:
        """The label of the group ``run`` belongs to."""
        return next(g.label for g in self.groups if any(r is run for r in g.runs))


def load(paths: list[Path], dirs: list[Path] | None = None) -> Report:
    """The runs under ``paths`` (``dirs``: their run directories, when the caller has found them already)."""
    dirs = find_run_dirs(paths) if dirs is None else dirs
    runs = [load_run(d) for d in progress(dirs, "Reading runs")]
    groups = group_runs(runs, preset_settings({r.experiment for r in runs}))
    root = Path(os.path.commonpath([str(r.path) for r in runs])) if len(runs) > 1 else runs[0].path.parent
    return Report(runs, groups, root)


# ------------------------------------------------------------------ cells


def _fmt(s: Stat | None, digits: int, scale: float = 1.0) -> str:
    return "—" if s is None else s.fmt(digits, scale)


def _int(s: Stat | None) -> str:
    """An integer quantity (epochs): one value when all runs agree, else mean ± std."""
    return "—" if s is None else s.fmt(0) if s.std else f"{s.mean:.0f}"


def _params(s: Stat | None) -> str:
    return "—" if s is None else f"{s.mean:,.0f}" + (" (varies)" if s.std else "")


def _data_cell(g: Group) -> str:
    source = g.settings.get("data.source", "unknown")
    if not g.synthetic:
        return str(source)
    return f"SYNTHETIC {g.settings.get('data.n_train', '?')}/{g.settings.get('data.n_test', '?')}"


def _n_cell(g: Group) -> str:
    extra = f" (+{len(g.incomplete)} ⚠)" if g.incomplete else ""
    return f"{len(g.completed)}{extra}"


def _row_class(g: Group) -> str:
    return "incomplete" if not g.completed else ("synthetic" if g.synthetic else "")


# ------------------------------------------------------------------ sections


def overview(rep: Report, paths: list[Path]) -> Section:
    done = sum(r.completed for r in rep.runs)
    blocks: list[Any] = [
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(rep.runs)} runs ({done} completed, "
        f"{len(rep.runs) - done} failed or incomplete) in {len(rep.groups)} experiment groups, found under "
        + ", ".join(str(p) for p in paths)
        + ". Read from each run's summary.json, metrics.csv and .hydra/config.yaml."
    ]
    if any(g.synthetic for g in rep.groups):
        blocks.insert(0, SYNTHETIC_WARNING)
    protocols = defaultdict(list)
    for g in rep.groups:
        s = g.settings
        protocols[(s.get("data.batch_size"), s.get("optimizer.lr"), s.get("trainer.max_epochs"))].append(g.label)
    seed_p = seed_table()["protocol"]
    lines = [f"batch {b}, lr {lr}, {e} epoch{'' if e == 1 else 's'}: {', '.join(labels)}"
             for (b, lr, e), labels in protocols.items()]  # fmt: skip
    blocks.append(
        f"Protocol (batch size, learning rate, epochs) — {'; '.join(lines)}. The seed's: batch "
        f"{seed_p['batch_size']}, lr {seed_p['lr']}, {seed_p['epochs']} epochs ({seed_p['note']})."
    )
    return Section("Overview", blocks, "overview")


# The results table's statistic columns: (header, key in Group.stats(), digits, scale); digits None: a count.
RESULT_COLUMNS = [
    ("Epochs", "epochs", None, 1),
    ("Final train loss", "final_train_loss", 4, 1),
    ("Final val loss", "final_val_loss", 4, 1),
    ("Final train acc (%)", "final_train_acc", 2, 100),
    ("Final val acc (%)", "final_val_acc", 2, 100),
    ("Best val acc (%)", "best_val_acc", 2, 100),
    ("Best at epoch", "best_epoch", None, 1),
    ("Gap acc (pp)", "gap_acc", 2, 100),
    ("Gap loss", "gap_loss", 3, 1),
    ("Time (s)", "train_seconds", 1, 1),
    ("s/epoch", "seconds_per_epoch", 3, 1),
]


def results(rep: Report) -> Section:
    devices = sorted({d for g in rep.groups for d in g.devices})
    per_row_device = len(devices) > 1  # one device for all: said once, not in a column
    header = ["Experiment", "n", "Data", "Params", *(c[0] for c in RESULT_COLUMNS)] + (
        ["Device"] if per_row_device else []
    )
    rows = []
    for g in rep.groups:
        s = g.stats()
        cells = [
            _int(s[key]) if digits is None else _fmt(s[key], digits, scale) for _, key, digits, scale in RESULT_COLUMNS
        ]
        device = ["; ".join(g.devices) or "—"] if per_row_device else []
        rows.append([f"**{g.label}**", _n_cell(g), _data_cell(g), _params(s["params"]), *cells, *device])
    table = Table(header, rows, "results", [g.label for g in rep.groups], [_row_class(g) for g in rep.groups])
    note = (
        "Each row is one experiment setting: runs of the same experiment name and config apart from the seed. "
        "Numbers are mean ± sample std over its n completed runs (one value when n = 1); runs that failed or did "
        "not finish are never counted here (see Failed and incomplete runs). Accuracies in percent, as the seed "
        "prints them. Gap = final train − val accuracy (percentage points) and final val − train loss: the "
        "overfitting. n (+k ⚠): k more runs of the setting did not complete."
    )
    if any(g.synthetic for g in rep.groups):
        note += " SYNTHETIC a/b: generated data, a training and b validation images."
    if len(devices) == 1:
        note += f" Device of every completed run: {devices[0]}."
    return Section("Results", [note, table], "results-section")


def _why_no_delta(g: Group) -> str:
    """Why our numbers cannot be set against the seed's ('' when they can)."""
    if g.synthetic:
        return "no: SYNTHETIC data"
    if g.settings.get("data.source") not in REAL_SOURCES:
        return f"no: data is not {' or '.join(REAL_SOURCES)}"
    if g.variant:
        return "no: a variant of the preset"
    return "" if g.completed else "no: no completed run"


def against_seed(rep: Report) -> Section:
    columns = {key: (label, digits, scale) for label, key, digits, scale in RESULT_COLUMNS}
    metrics = [
        (key, *columns[key])
        for key in ("final_val_acc", "final_train_acc", "final_val_loss", "final_train_loss", "gap_acc")
    ]
    seed_epochs = seed_table()["protocol"]["epochs"]
    groups = [g for g in rep.groups if seed_entry(g.experiment)]
    title = "Against the seed's published numbers"
    if not groups:
        presets = "fc, p1a, p1b, p2a, p2b_l2, p2b_dropout, p2b_batchnorm"
        return Section(title, [f"None of these runs is one of the seed's presets ({presets})."], "seed-section")
    with_delta = any(not _why_no_delta(g) for g in groups)
    header = ["Experiment", "Data", "Epochs ours / seed", "Params ours / seed"]
    for _, label, _, _ in metrics:
        header += [label, "seed", "Δ"] if with_delta else [label, "seed"]
    header += ["Time (s) ours / seed", "Δ given?"]
    rows = []
    for g in groups:
        entry, s, why_not = dict(seed_entry(g.experiment)), g.stats(), _why_no_delta(g)
        if "train_acc" in entry:
            entry["gap_acc"] = entry["train_acc"] - entry["val_acc"]
        mark = "" if s["epochs"] is None or s["epochs"].mean == seed_epochs else " ‡"
        match = "" if s["params"] is None else (" ✓" if params_match(s["params"].mean, entry) else " ✗")
        row = [
            f"**{g.label}**",
            _data_cell(g),
            f"{_int(s['epochs'])} / {seed_epochs}",
            f"{_params(s['params'])} / {params_text(entry)}{match}",
        ]
        for key, _, digits, scale in metrics:
            seed_key = key.removeprefix("final_")  # the seed's table: val_acc, ..., gap_acc
            cells = _triple(
                s[key], entry.get(seed_key), seed_key in entry.get("approx", []), digits, scale, why_not, mark
            )
            row += cells[: 3 if with_delta else 2]
        row += [f"{_fmt(s['train_seconds'], 1)} / {entry.get('train_seconds', '–')}", why_not or f"yes{mark}"]
        rows.append(row)
    note = (
        "The seed's published final numbers (SEED.md's table, shipped as package data; 300 epochs, real "
        "CIFAR-10, the seed author's GPU) beside ours. Δ = ours − seed, given only for real CIFAR-10 data "
        f"({' or '.join(REAL_SOURCES)}) and the unmodified preset. ‡: our runs did not train the seed's "
        f"{seed_epochs} epochs, so Δ compares different training lengths. Params: ✓ when our exact count rounds to "
        "the seed's published figure. Times are on different hardware."
    )
    blocks: list[Any] = [note, Table(header, rows, "seed", [g.label for g in groups], [_row_class(g) for g in groups])]
    if any(g.synthetic for g in groups):
        blocks.insert(
            0,
            "⚠ Rows on SYNTHETIC data show the seed's column for reference only: a comparison of "
            "synthetic-data numbers with the seed's CIFAR-10 numbers is meaningless, so no Δ is given.",
        )
    differences = [[f"**{g.label}**", " ".join(seed_differences(g.experiment))] for g in groups if not g.variant]
    differences = [d for d in differences if d[1]]
    if differences:
        blocks += [
            "What still differs from the seed, and why (measured on real CIFAR-10; the figures and commands are "
            "in docs/fidelity.md). " + " ".join(seed_differences("all")),
            Table(["Experiment", "Difference"], differences, "seed-differences"),
        ]
    return Section(title, blocks, "seed-section")


def _triple(
    ours: Stat | None, seed: float | None, approx: bool, digits: int, scale: float, why_not: str, mark: str
) -> list[str]:
    """Ours, the seed's (published in percent for accuracies) and the difference (n/a when not comparable)."""
    seed_cell = "–" if seed is None else ("≈" if approx else "") + f"{seed:.{digits}f}"
    if why_not or ours is None or seed is None:
        return [_fmt(ours, digits, scale), seed_cell, "n/a" if why_not else "—"]
    ours_pub = ours.mean * scale
    return [_fmt(ours, digits, scale), seed_cell, f"{ours_pub - seed:+.{digits}f}{mark}"]


def curves(rep: Report) -> Section:
    indexed = list(enumerate(rep.groups))
    blocks: list[Any] = [
        "Mean over each group's completed runs; in the per-experiment figures the band is ± 1 std where there are "
        "several. Accuracies in percent."
    ]
    if len(rep.groups) > figures.MAX_LINES:
        blocks.append(f"Only the first {figures.MAX_LINES} of {len(rep.groups)} groups are drawn on each axis.")
    blocks.append(
        Figure(
            "report_overlay",
            "Val accuracy and val loss of every experiment group, one axis each.",
            figures.overlay_figure(indexed),
        )
    )
    by_name: dict[str, list[tuple[int, Group]]] = defaultdict(list)
    for i, g in indexed:
        by_name[g.experiment].append((i, g))
    for name, members in progress(list(by_name.items()), "Drawing figures"):
        if not any(g.curves for _, g in members):
            continue
        # The seed's points belong beside real CIFAR-10 runs of the unmodified preset only.
        real = any(not g.synthetic and not g.variant for _, g in members)
        seed_points = seed_curves().get(name) if real else None
        caption = f"{name}: loss and accuracy per epoch, train (solid) against val (dashed)"
        if len(members) > 1:
            caption += ", each setting in its own colour"
        if seed_points:
            caption += (
                "; black markers: the seed's published points (every 10 epochs, real CIFAR-10) up to our last "
                "epoch, for the unmodified preset"
            )
        png = figures.experiment_figure(name, members, seed_points)
        blocks.append(Figure(f"report_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}", caption + ".", png))
    return Section("Curves", blocks, "curves")


def regulariser_paragraphs(rep: Report) -> Section:
    pairs = [(g, *baseline_for(g, rep.groups)) for g in rep.groups if regularisers(g.settings)]
    pairs += [
        (g, b, {})
        for g in rep.groups
        if g.variant and not regularisers(g.settings)
        for b in rep.groups
        if b.experiment == g.experiment and not b.variant and same_protocol(g.settings, b.settings)
    ]
    if not pairs:
        return Section("Regularisers and variants", [
            "No regularised run (p2b_l2, p2b_dropout, p2b_batchnorm, or any run with a regulariser on) and no "
            "variant of a preset among these runs."], "regularisers")  # fmt: skip
    intro = (
        "Each regulariser against its baseline (the same settings with the regularisers off: p2a for the seed's "
        "p2b presets), and each variant against its unmodified preset. Cells: ours vs baseline (difference); "
        "mean (± std) of completed runs. One sentence each below the table."
    )
    rows = [comparison_row(g, b) for g, b, _ in pairs]
    table = Table(ROW_HEADER, rows, "regulariser-table", [g.label for g, _, _ in pairs])
    return Section("Regularisers and variants", [intro, table, *(comparison(*p) for p in pairs)], "regularisers")


def failures(rep: Report) -> Section:
    bad = [r for r in rep.runs if not r.completed]
    if not bad:
        return Section("Failed and incomplete runs", [f"None: all {len(rep.runs)} runs completed."], "failed")
    rows = []
    for r in bad:
        final, best = r.summary.get("final") or {}, r.summary.get("best") or {}
        partial = (
            f"{100 * final['val_acc']:.2f} (partial, epoch {r.summary.get('epochs')})" if "val_acc" in final else "—"
        )
        best_txt = f"{100 * best['val_acc']:.2f} (epoch {best.get('epoch')})" if "val_acc" in best else "—"
        error = str(
            r.summary.get("error") or ("" if r.status != "running" else "still running, or killed without a record")
        )
        rows.append(
            [
                rep.rel(r),
                rep.group_of(r),
                f"⚠ {r.status.upper()}",
                str(r.summary.get("epochs", 0)),
                partial,
                best_txt,
                error[:300],
            ]
        )
    header = ["Run", "Group", "Status", "Epochs reached", "Val acc at stop (%)", "Best val acc (%)", "Error"]
    table = Table(header, rows, "failed-runs", [rep.rel(r) for r in bad], ["incomplete"] * len(bad))
    note = (
        f"⚠ {len(bad)} of {len(rep.runs)} runs did not complete. They are left out of every table, curve and "
        "comparison above; their numbers below are partial, up to where they stopped."
    )
    return Section("Failed and incomplete runs", [note, table], "failed")


def all_runs(rep: Report) -> Section:
    rows = []
    for r in rep.runs:
        final = r.summary.get("final") or {}
        val = f"{100 * final['val_acc']:.2f}" if "val_acc" in final else "—"
        val += "" if r.completed or val == "—" else " (partial)"
        rows.append(
            [
                rep.rel(r),
                rep.group_of(r),
                r.status if r.completed else f"⚠ {r.status}",
                str(r.seed if r.seed is not None else "?"),
                str(r.summary.get("epochs", 0)),
                val,
                "SYNTHETIC" if r.synthetic else r.source,
                str(r.summary.get("device", "—")),
            ]
        )
    header = ["Run", "Group", "Status", "Seed", "Epochs", "Final val acc (%)", "Data", "Device"]
    classes = ["" if r.completed else "incomplete" for r in rep.runs]
    table = Table(header, rows, "runs", [rep.rel(r) for r in rep.runs], classes)
    return Section(f"All runs (relative to {rep.root})", [table], "runs")


def write_report(paths: list[Path], out: Path) -> tuple[Path, Path]:
    """Read the runs under ``paths`` and write ``out``/report.html and ``out``/report.md (+ its PNGs).

    ``out`` is created and checked for writing once the runs are found, before they are read and drawn.
    """
    dirs = find_run_dirs(paths)  # no runs: refused before anything is created
    writable_folder(out)
    rep = load(paths, dirs)
    sections = [
        overview(rep, paths),
        results(rep),
        against_seed(rep),
        curves(rep),
        regulariser_paragraphs(rep),
        failures(rep),
        all_runs(rep),
    ]
    html_path, md_path = out / "report.html", out / "report.md"
    write_bytes_atomic(html_path, to_html(TITLE, sections).encode("utf-8"))
    write_bytes_atomic(md_path, to_markdown(TITLE, sections, out).encode("utf-8"))
    return html_path, md_path
