"""Assemble the comparison report from run directories and write report.html and report.md."""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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

DEBUG_WARNING = (
    "⚠ DEBUG RUNS INCLUDED (--include-debug): rows marked DEBUG trained with fast_dev_run, limit_*_batches or "
    "overfit_batches: a part of the data or a smoke test. Their numbers are not results."
)


T = TypeVar("T")


def progress(items: Sequence[T], description: str) -> Iterable[T]:
    """A slow loop (reading runs, drawing figures) under a progress bar on a terminal; none in a pipe or a log."""
    console = Console(stderr=True)
    return track(items, description=description, console=console, transient=True, disable=not console.is_terminal)


@dataclass
class Report:
    """The runs found, their groups, the runs left out of the groups, and the folder names are relative to."""

    runs: list[Run]
    groups: list[Group]
    root: Path
    starts: list[Run] = field(default_factory=list)  # failed starts: no epoch recorded, in no group
    debug: list[Run] = field(default_factory=list)  # debug runs left out (without --include-debug)

    def rel(self, run: Run) -> str:
        return os.path.relpath(run.path, self.root) if run.path != self.root else run.path.name

    def group_of(self, run: Run) -> str:
        """The label of the group ``run`` belongs to ('—' for a failed start or a debug run left out)."""
        return next((g.label for g in self.groups if any(r is run for r in g.runs)), "—")


def load(paths: list[Path], dirs: list[Path] | None = None, include_debug: bool = False) -> Report:
    """The runs under ``paths`` (``dirs``: their run directories, when the caller has found them already).

    Failed starts (no epoch recorded) and, unless ``include_debug``, debug runs are kept out of the groups.
    """
    dirs = find_run_dirs(paths) if dirs is None else dirs
    runs = [load_run(d) for d in progress(dirs, "Reading runs")]
    starts = [r for r in runs if r.failed_start]
    debug = [r for r in runs if r.debug and not r.failed_start and not include_debug]
    grouped = [r for r in runs if not r.failed_start and not (r.debug and not include_debug)]
    groups = group_runs(grouped, preset_settings({r.experiment for r in grouped}))
    root = Path(os.path.commonpath([str(r.path) for r in runs])) if len(runs) > 1 else runs[0].path.parent
    return Report(runs, groups, root, starts, debug)


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


def _time_cell(s: Stat | None, digits: int, g: Group) -> str:
    """A time; a packed group's is its share of the pack's wall time, marked ÷."""
    return _fmt(s, digits) + (" ÷" if g.packed and s is not None else "")


def _n_cell(g: Group) -> str:
    extra = f" (+{len(g.incomplete)} ⚠)" if g.incomplete else ""
    return f"{len(g.completed)}{extra}"


def _row_class(g: Group) -> str:
    return "incomplete" if not g.completed else ("synthetic" if g.synthetic else "")


# ------------------------------------------------------------------ sections


def overview(rep: Report, paths: list[Path]) -> Section:
    done = sum(r.completed for r in rep.runs)
    apart = [f"{len(rep.starts)} failed start{'' if len(rep.starts) == 1 else 's'}"] if rep.starts else []
    apart += [f"{len(rep.debug)} debug run{'' if len(rep.debug) == 1 else 's'}"] if rep.debug else []
    incomplete = len(rep.runs) - done - len(rep.starts) - sum(not r.completed for r in rep.debug)
    blocks: list[Any] = [
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(rep.runs)} runs found under "
        + ", ".join(str(p) for p in paths)
        + f": {done} completed, {incomplete} failed or incomplete after training"
        + (f", and {' and '.join(apart)}, listed apart at the end" if apart else "")
        + f"; {len(rep.groups)} experiment groups. Read from each run's summary.json, metrics.csv and "
        ".hydra/config.yaml."
    ]
    if any(g.synthetic for g in rep.groups):
        blocks.insert(0, SYNTHETIC_WARNING)
    if any(g.debug for g in rep.groups):
        blocks.insert(0, DEBUG_WARNING)
    protocols: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for g in rep.groups:
        s = g.settings
        protocols[(s.get("data.batch_size"), s.get("optimizer.lr"), s.get("trainer.max_epochs"))].append(g.label)
    seed_p = seed_table()["protocol"]
    rows = [[_plain(b), _plain(lr), _plain(e), ", ".join(labels)] for (b, lr, e), labels in protocols.items()]
    rows.append([str(seed_p["batch_size"]), str(seed_p["lr"]), str(seed_p["epochs"]), f"the seed ({seed_p['note']})"])
    blocks += [
        "Protocol: the batch size, learning rate and epochs each group was configured with (epochs: "
        "trainer.max_epochs; a run that stopped early trained fewer, see Epochs below), and the seed's.",
        Table(["Batch", "LR", "Epochs", "Groups"], rows, "protocol"),
    ]
    return Section("Overview", blocks, "overview")


def _plain(value: Any) -> str:
    return "—" if value is None else str(value)


# The results tables' statistic columns: (header, key in Group.stats(), digits, scale); digits None: a count.
# Two tables of a few columns each, so that both fit a laptop's window.
RESULT_COLUMNS = [
    ("Epochs", "epochs", None, 1),
    ("Final train loss", "final_train_loss", 4, 1),
    ("Final val loss", "final_val_loss", 4, 1),
    ("Final train acc (%)", "final_train_acc", 2, 100),
    ("Final val acc (%)", "final_val_acc", 2, 100),
    ("Best val acc (%)", "best_val_acc", 2, 100),
    ("Best at epoch", "best_epoch", None, 1),
]
GAP_TIME_COLUMNS = [
    ("Gap acc (pp)", "gap_acc", 2, 100),
    ("Gap loss", "gap_loss", 3, 1),
    ("Time (s)", "train_seconds", 1, 1),
    ("s/epoch", "seconds_per_epoch", 3, 1),
]
TIME_KEYS = ("train_seconds", "seconds_per_epoch")


def results(rep: Report) -> Section:
    if not rep.groups:
        return Section("Results", ["No run among these recorded an epoch outside the runs listed apart below."],
                       "results-section")  # fmt: skip
    devices = sorted({d for g in rep.groups for d in g.devices})
    per_row_device = len(devices) > 1  # one device for all: said once, not in a column
    header = ["Experiment", "n", "Data", "Params", *(c[0] for c in RESULT_COLUMNS)]
    header2 = ["Experiment", "n", *(c[0] for c in GAP_TIME_COLUMNS)] + (["Device"] if per_row_device else [])
    rows, rows2 = [], []
    for g in rep.groups:
        s = g.stats()
        cells = [
            _int(s[key]) if digits is None else _fmt(s[key], digits, scale) for _, key, digits, scale in RESULT_COLUMNS
        ]
        cells2 = [
            _time_cell(s[key], digits, g) if key in TIME_KEYS else _fmt(s[key], digits, scale)
            for _, key, digits, scale in GAP_TIME_COLUMNS
        ]
        device = ["; ".join(g.devices) or "—"] if per_row_device else []
        rows.append([f"**{g.label}**", _n_cell(g), _data_cell(g), _params(s["params"]), *cells])
        rows2.append([f"**{g.label}**", _n_cell(g), *cells2, *device])
    keys, classes = [g.label for g in rep.groups], [_row_class(g) for g in rep.groups]
    note = (
        "Each row is one experiment setting: runs of the same experiment name and config apart from the seed. "
        "Numbers are mean ± sample std over its n completed runs (one value when n = 1); runs that failed or did "
        "not finish are never counted here (see Failed and incomplete runs). Accuracies in percent, as the seed "
        "prints them. n (+k ⚠): k more runs of the setting did not complete."
    )
    if any(g.synthetic for g in rep.groups):
        note += " SYNTHETIC a/b: generated data, a training and b validation images."
    note2 = (
        "The overfitting and the time of the same rows. Gap = final train − val accuracy (percentage points) and "
        "final val − train loss."
    )
    if any(g.packed for g in rep.groups):
        note2 += (
            " Rows marked packed trained as members of packed sweeps (one process trains N members as one model; "
            "only the pack's wall time is measured): their times, marked ÷, are the pack's time ÷ its members, "
            "an average share, not a time measured for the member."
        )
    if len(devices) == 1:
        note2 += f" Device of every completed run: {devices[0]}."
    blocks: list[Any] = [note, Table(header, rows, "results", keys, classes)]
    blocks += [note2, Table(header2, rows2, "results-gap-time", keys, classes)]
    composed = [(g, g.variant["composed"]) for g in rep.groups if "composed" in g.variant]
    if composed:
        blocks += [
            "Runs composed on the command line that match no preset, and how they differ from the closest one:",
            Table(
                ["Experiment", "Closest preset", "Differs in"],
                [[f"**{g.label}**", str(c["closest"]), "; ".join(map(str, c["differs"]))] for g, c in composed],
                "composed",
            ),
        ]
    return Section("Results", blocks, "results-section")


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
    columns = {key: (label, digits, scale) for label, key, digits, scale in RESULT_COLUMNS + GAP_TIME_COLUMNS}
    short = {"final_val_acc": "Val acc (%)", "final_train_acc": "Train acc (%)", "gap_acc": "Gap acc (pp)",
             "final_val_loss": "Val loss", "final_train_loss": "Train loss"}  # fmt: skip
    acc_metrics = [(key, short[key], *columns[key][1:]) for key in ("final_val_acc", "final_train_acc", "gap_acc")]
    loss_metrics = [(key, short[key], *columns[key][1:]) for key in ("final_val_loss", "final_train_loss")]
    seed_epochs = seed_table()["protocol"]["epochs"]
    groups = [g for g in rep.groups if seed_entry(g.experiment)]
    title = "Against the seed's published numbers"
    if not groups:
        presets = "fc, p1a, p1b, p2a, p2b_l2, p2b_dropout, p2b_batchnorm"
        return Section(title, [f"None of these runs is one of the seed's presets ({presets})."], "seed-section")
    with_delta = any(not _why_no_delta(g) for g in groups)
    width = 3 if with_delta else 2
    header = ["Experiment", "Data", "Epochs ours / seed", "Params ours / seed"]
    header2 = ["Experiment"]
    for _, label, _, _ in acc_metrics:
        header += [label, "seed", "Δ"][:width]
    for _, label, _, _ in loss_metrics:
        header2 += [label, "seed", "Δ"][:width]
    header += ["Δ given?"]
    header2 += ["Time (s) ours / seed"]
    rows, rows2 = [], []
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
        row2 = [f"**{g.label}**"]
        for metrics, cells_of in ((acc_metrics, row), (loss_metrics, row2)):
            for key, _, digits, scale in metrics:
                seed_key = key.removeprefix("final_")  # the seed's table: val_acc, ..., gap_acc
                approx = seed_key in entry.get("approx", [])
                cells_of += _triple(s[key], entry.get(seed_key), approx, digits, scale, why_not, mark)[:width]
        row.append(why_not or f"yes{mark}")
        row2.append(f"{_time_cell(s['train_seconds'], 1, g)} / {entry.get('train_seconds', '–')}")
        rows.append(row)
        rows2.append(row2)
    note = (
        "The seed's published final numbers (SEED.md's table, shipped as package data; 300 epochs, real "
        "CIFAR-10, the seed author's GPU) beside ours: accuracy first, then loss and time. Δ = ours − seed, given "
        f"only for real CIFAR-10 data ({' or '.join(REAL_SOURCES)}) and the unmodified preset. ‡: our runs did not "
        f"train the seed's {seed_epochs} epochs, so Δ compares different training lengths. Params: ✓ when our "
        "exact count rounds to the seed's published figure. Times are on different hardware."
    )
    keys, classes = [g.label for g in groups], [_row_class(g) for g in groups]
    blocks: list[Any] = [
        note,
        Table(header, rows, "seed", keys, classes),
        Table(header2, rows2, "seed-loss", keys, classes),
    ]
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
    if not any(g.curves for g in rep.groups):
        return Section("Curves", ["No completed run with recorded epochs: nothing to draw."], "curves")
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
        caption = f"{name}: loss and accuracy per epoch, train (solid, circles) against val (dashed, squares)"
        if len(members) > 1:
            caption += ", each setting in its own colour"
        if any(g.packed for _, g in members):
            caption += "; packed rows as wide pale lines with open markers (a member equals its solo run)"
        else:
            caption += ", train in blue and val in orange"
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
    if any(g.packed or (b is not None and b.packed) for g, b, _ in pairs):
        intro += " Times of packed rows are their pack's wall time ÷ its members (see Results)."
    rows = [comparison_row(g, b) for g, b, _ in pairs]
    table = Table(ROW_HEADER, rows, "regulariser-table", [g.label for g, _, _ in pairs])
    return Section("Regularisers and variants", [intro, table, *(comparison(*p) for p in pairs)], "regularisers")


def failures(rep: Report) -> Section:
    grouped = [r for g in rep.groups for r in g.runs]
    bad = [r for r in grouped if not r.completed]
    if not bad:
        return Section("Failed and incomplete runs", [f"None: all {len(grouped)} grouped runs completed."], "failed")
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
                _short_error(error),
            ]
        )
    header = ["Run", "Group", "Status", "Epochs reached", "Val acc at stop (%)", "Best val acc (%)", "Error"]
    table = Table(header, rows, "failed-runs", [rep.rel(r) for r in bad], ["incomplete"] * len(bad))
    note = (
        f"⚠ {len(bad)} of {len(grouped)} runs that trained did not complete. They are left out of every table, curve "
        "and comparison above; their numbers below are partial, up to where they stopped."
    )
    return Section("Failed and incomplete runs", [note, table], "failed")


def _short_error(error: str, limit: int = 200) -> str:
    """An error's first line, cut at a word before ``limit`` characters (summary.json has the whole)."""
    first = error.strip().splitlines()[0] if error.strip() else ""
    return first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + " …"


def failed_starts(rep: Report) -> Section:
    """Runs that never recorded an epoch (refused starts, crashes while building): in no table above."""
    title = "Failed starts"
    if not rep.starts:
        return Section(title, ["None: every run recorded at least one epoch."], "failed-starts")
    rows = [[rep.rel(r), r.experiment, f"⚠ {r.status}", _short_error(str(r.summary.get("error") or "—"))]
            for r in rep.starts]  # fmt: skip
    note = (
        f"{len(rep.starts)} run{' has' if len(rep.starts) == 1 else 's have'} no recorded epoch: stopped before "
        "training (a refused start, a crash while building, a process killed at once). They are in no table, curve "
        "or group above; the whole error is in each one's summary.json."
    )
    table = Table(["Run", "Experiment", "Status", "Error"], rows, "failed-starts", [rep.rel(r) for r in rep.starts],
                  ["incomplete"] * len(rep.starts))  # fmt: skip
    return Section(title, [note, table], "failed-starts")


def debug_runs(rep: Report) -> Section | None:
    """The debug runs left out of the results (None when there are none)."""
    if not rep.debug:
        return None
    rows = []
    for r in rep.debug:
        final = r.summary.get("final") or {}
        val = f"{100 * final['val_acc']:.2f}" if "val_acc" in final else "—"
        rows.append([rep.rel(r), r.experiment, ", ".join(r.debug), r.status, str(r.summary.get("epochs", 0)), val])
    note = (
        f"{len(rep.debug)} debug run{'' if len(rep.debug) == 1 else 's'} (trainer.fast_dev_run, "
        "limit_*_batches or overfit_batches: a smoke test or a part of the data), left out of every table, curve "
        "and comparison above. python -m cifar_lab.report --include-debug puts them in, marked DEBUG."
    )
    header = ["Run", "Experiment", "Debug settings", "Status", "Epochs", "Val acc (%)"]
    return Section("Debug runs (left out)", [note, Table(header, rows, "debug-runs", [rep.rel(r) for r in rep.debug])],
                   "debug-runs")  # fmt: skip


def all_runs(rep: Report) -> Section:
    rows = []
    for r in rep.runs:
        final = r.summary.get("final") or {}
        val = f"{100 * final['val_acc']:.2f}" if "val_acc" in final else "—"
        val += "" if r.completed or val == "—" else " (partial)"
        kind = ["failed start"] if r.failed_start else []
        kind += [f"packed ×{r.pack_members}"] if r.pack_members > 1 else []
        kind += ["debug"] if r.debug else []
        rows.append(
            [
                rep.rel(r),
                rep.group_of(r),
                (r.status if r.completed else f"⚠ {r.status}") + (f" ({', '.join(kind)})" if kind else ""),
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


def write_report(paths: list[Path], out: Path, include_debug: bool = False) -> tuple[Path, Path]:
    """Read the runs under ``paths`` and write ``out``/report.html and ``out``/report.md (+ its PNGs).

    ``out`` is created and checked for writing once the runs are found, before they are read and drawn.
    """
    dirs = find_run_dirs(paths)  # no runs: refused before anything is created
    writable_folder(out)
    rep = load(paths, dirs, include_debug)
    sections = [
        overview(rep, paths),
        results(rep),
        against_seed(rep),
        curves(rep),
        regulariser_paragraphs(rep),
        failures(rep),
        failed_starts(rep),
        *filter(None, [debug_runs(rep)]),
        all_runs(rep),
    ]
    html_path, md_path = out / "report.html", out / "report.md"
    write_bytes_atomic(html_path, to_html(TITLE, sections).encode("utf-8"))
    write_bytes_atomic(md_path, to_markdown(TITLE, sections, out).encode("utf-8"))
    return html_path, md_path
