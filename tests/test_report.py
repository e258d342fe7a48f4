"""The comparison report: aggregation on hand-made runs, and a real synthetic multirun checked in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cifar_lab.report.aggregate import baseline_for, group_runs, preset_settings
from cifar_lab.report.build import write_report
from cifar_lab.report.runs import load_run
from cifar_lab.report.seed import seed_curves, seed_table
from cifar_lab.report.text import comparison, comparison_row
from tests.conftest import FAST, compose_cfg, load_summary, run_cli, run_dirs

CHROMIUM = Path("/usr/bin/chromium")
TINY = [o for o in FAST if not o.startswith(("data.n_", "data.batch_size", "trainer.max_epochs"))] + [
    "data.n_train=128",
    "data.n_test=64",
    "data.batch_size=64",
    "trainer.max_epochs=2",
]


# ------------------------------------------------------------------ hand-made runs


def make_run(
    root: Path,
    name: str,
    *overrides: str,
    val: list[float],
    train: list[float],
    status: str = "completed",
    seconds: float = 1.0,
    source: str = "synthetic",
    **extra: object,
) -> Path:
    """A run directory as train.py writes it: a real composed config, metrics.csv and summary.json."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = compose_cfg(*overrides, f"data={source}")
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    rows = [
        {"epoch": i + 1, "train_loss": 2 - t, "train_acc": t, "val_loss": 2 - v, "val_acc": v, "seconds": seconds}
        for i, (t, v) in enumerate(zip(train, val))
    ]
    (run / "metrics.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,seconds\n"
        + "".join(
            f"{r['epoch']},{r['train_loss']},{r['train_acc']},{r['val_loss']},{r['val_acc']},{r['seconds']}\n"
            for r in rows
        )
    )
    best = max(rows, key=lambda r: r["val_acc"])
    summary = {
        "status": status,
        "experiment": extra.pop("experiment", cfg.name),
        "params": 38_650,
        "data": {"source": source, "synthetic": source == "synthetic"},
        "device": "cpu: test",
        "epochs": len(rows),
        "final": {k: rows[-1][k] for k in ("train_loss", "val_loss", "train_acc", "val_acc")},
        "best": {"val_acc": best["val_acc"], "epoch": best["epoch"]},
        "train_seconds": seconds * len(rows),
        "seconds_per_epoch": seconds,
        **extra,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def groups_of(root: Path):
    runs = [load_run(p.parent) for p in sorted(root.rglob("summary.json"))]
    return group_runs(runs, preset_settings({r.experiment for r in runs}))


def test_mean_std_n_and_gap_over_seeds(tmp_path):
    for seed, (t, v) in enumerate([(0.80, 0.60), (0.84, 0.62), (0.88, 0.64)]):
        make_run(
            tmp_path, f"p1a_{seed}", "experiment=p1a", f"seed={seed}", val=[0.1, v], train=[0.1, t], seconds=seed + 1
        )
    make_run(tmp_path, "p1a_failed", "experiment=p1a", "seed=9", val=[0.99], train=[0.99], status="failed")
    (group,) = groups_of(tmp_path)
    s = group.stats()
    assert group.label == "p1a" and len(group.completed) == 3 and len(group.incomplete) == 1
    assert s["final_val_acc"].n == 3
    assert s["final_val_acc"].mean == pytest.approx(0.62) and s["final_val_acc"].std == pytest.approx(0.02)
    assert s["final_val_acc"].fmt(2, 100) == "62.00 ± 2.00"  # the failed run's 0.99 is not counted
    assert s["gap_acc"].mean == pytest.approx(0.22) and s["gap_acc"].std == pytest.approx(0.02)
    assert s["gap_loss"].mean == pytest.approx(0.22)  # losses are 2 - acc here
    assert s["train_seconds"].mean == pytest.approx(4.0)  # 2 epochs of 1, 2, 3 s
    epochs, mean, std = group.curves["val_acc"]
    assert epochs == [1, 2] and mean == pytest.approx([0.1, 0.62])


def test_untied_blocks_and_other_settings_are_separate_rows(tmp_path):
    make_run(tmp_path, "bn", "experiment=p2b_batchnorm", val=[0.2], train=[0.9])
    make_run(tmp_path, "bn_untied", "experiment=p2b_batchnorm", "model.tied_blocks=false", val=[0.7], train=[0.9])
    make_run(tmp_path, "p1a_lr", "experiment=p1a", "optimizer.lr=0.1", val=[0.5], train=[0.5])
    make_run(tmp_path, "p1a_b", "experiment=p1a", "data.batch_size=64", val=[0.5], train=[0.5])
    make_run(tmp_path, "p1a_b_seed1", "experiment=p1a", "data.batch_size=64", "seed=1", val=[0.5], train=[0.5])
    labels = {g.label: len(g.runs) for g in groups_of(tmp_path)}
    assert labels == {
        "p2b_batchnorm": 1,
        "p2b_batchnorm (untied blocks)": 1,
        "p1a (lr=0.1, batch_size=128)": 1,
        "p1a (batch_size=64)": 2,
    }


def test_regulariser_paragraph_against_p2a_and_missing_baseline(tmp_path):
    make_run(tmp_path, "p2a", "experiment=p2a", val=[0.60], train=[0.90], seconds=2.0)
    make_run(tmp_path, "drop", "experiment=p2b_dropout", val=[0.65], train=[0.70], seconds=1.5)
    make_run(tmp_path / "alone", "l2", "experiment=p2b_l2", val=[0.6], train=[0.6])
    groups = groups_of(tmp_path)
    drop = next(g for g in groups if g.experiment == "p2b_dropout")
    base, other = baseline_for(drop, groups)
    assert base.label == "p2a" and other == {}
    row = comparison_row(drop, base)  # the table's cells: ours vs baseline (difference)
    assert row[:3] == ["**p2b_dropout**", "dropout p=0.3", "p2a"]
    assert row[3] == "65.00 % vs 60.00 % (+5.00 pp)" and row[4] == "5.00 pp vs 30.00 pp (-25.00 pp)"
    assert row[6] == "1.5 s vs 2.0 s (-0.5 s)" and row[7] == "1.500 s/epoch vs 2.000 s/epoch (-0.500 s/epoch)"
    text = comparison(drop, base, other)  # and one sentence
    assert "dropout p=0.3" in text and "raised the final val acc by 5.00 pp" in text and "gap by -25.00 pp" in text
    assert "SYNTHETIC" in text
    assert "65.82 % vs 64.35 % (+1.47 pp)" in text  # the seed's own numbers for the same comparison
    alone = groups_of(tmp_path / "alone")
    assert "no baseline" in comparison(alone[0], *baseline_for(alone[0], alone))


def test_seed_package_data_is_consistent():
    table, curves = seed_table()["experiments"], seed_curves()
    for name, points in curves.items():
        assert points[-1]["epoch"] == 300 and table[name]["val_acc"] == pytest.approx(
            100 * points[-1]["val_acc"], abs=0.005
        )
        assert 0 <= points[-1]["val_acc"] <= 1  # converted from the seed's percent to our fractions


def test_seed_delta_only_on_real_data_and_the_unmodified_preset(tmp_path):
    make_run(tmp_path / "runs", "p1a", "experiment=p1a", source="cifar10", val=[0.30, 0.70], train=[0.30, 0.75])
    make_run(
        tmp_path / "runs",
        "bn",
        "experiment=p2b_batchnorm",
        "model.tied_blocks=false",
        source="cifar10",
        val=[0.72],
        train=[0.80],
    )
    _, md_path = write_report([tmp_path / "runs"], tmp_path / "out")
    rows = {r["Experiment"].strip("*"): r for r in md_table(md_path.read_text(), "Experiment | Data")}
    assert rows["p1a"]["_cells"][4:7] == ["70.00", "68.08", "+1.92 ‡"]  # ‡: 2 epochs against the seed's 300
    assert rows["p1a"]["Params ours / seed"] == "38,650 / 38.65 k ✓" and rows["p1a"]["Δ given?"] == "yes ‡"
    untied = rows["p2b_batchnorm (untied blocks)"]
    assert untied["_cells"][4:7] == ["72.00", "45.61", "n/a"] and untied["Δ given?"] == "no: a variant of the preset"
    assert "SYNTHETIC" not in md_path.read_text()
    assert "black markers: the seed's published points" in md_path.read_text()  # real data: the seed beside ours


def test_the_report_explains_what_still_differs_from_the_seed(tmp_path):
    make_run(tmp_path / "runs", "l2", "experiment=p2b_l2", source="cifar10", val=[0.3], train=[0.3])
    make_run(tmp_path / "runs", "p1b", "experiment=p1b", source="cifar10", val=[0.2], train=[0.2])
    make_run(tmp_path / "runs", "p1b_relu", "experiment=p1b", "model.fc_act=relu", source="cifar10", val=[0.2],
             train=[0.2])  # fmt: skip
    _, md_path = write_report([tmp_path / "runs"], tmp_path / "out")
    text = md_path.read_text()
    rows = {r["Experiment"].strip("*"): r for r in md_table(text, "Experiment | Difference")}
    assert set(rows) == {"p2b_l2", "p1b"}  # a variant (relu head) is not the seed's preset: no row
    assert "includes the L2 penalty" in rows["p2b_l2"]["Difference"]
    assert "before training" in text  # the common difference: the seed validated before each epoch


def test_damaged_run_files_are_read_as_unreadable_not_a_crash(tmp_path):
    """A summary.json that is not a JSON object, or not UTF-8, and a config.yaml cut short by a killed job:
    the run is read (status ``unreadable``, or without its config) instead of ending the report."""
    cases = {"list": ("[1, 2]", None), "bytes": (b"\xff\xfe{", None), "cut": ('{"status": "completed"}', "a: [1,\n")}
    for name, (summary, config) in cases.items():
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        if isinstance(summary, bytes):
            (run / "summary.json").write_bytes(summary)
        else:
            (run / "summary.json").write_text(summary)
        if config is not None:
            (run / ".hydra" / "config.yaml").write_text(config)
    runs = {p.name: load_run(p) for p in sorted(tmp_path.iterdir())}
    assert runs["list"].summary["status"] == runs["bytes"].summary["status"] == "unreadable"
    assert runs["cut"].summary["status"] == "completed" and runs["cut"].seed is None


def test_no_runs_is_one_paragraph_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cifar_lab.report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "No runs found under" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ a real multirun


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    """p1a, p2a, p2b_batchnorm for 2 epochs on tiny synthetic data, plus one failed run beside them."""
    cwd = tmp_path_factory.mktemp("report")
    proc = run_cli(cwd, "-m", "experiment=p1a,p2a,p2b_batchnorm", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = {d.parent for d in run_dirs(cwd)}
    failed = sweep / "3_p1a_synthetic_failed"
    p1a = next(d for d in run_dirs(cwd) if load_summary(d)["experiment"] == "p1a")
    shutil.copytree(p1a, failed, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    summary = load_summary(failed)
    first = (failed / "metrics.csv").read_text().splitlines()[:2]  # it died after epoch 1
    (failed / "metrics.csv").write_text("\n".join(first) + "\n")
    row = dict(zip(first[0].split(","), map(float, first[1].split(","))))
    summary.update(
        status="failed",
        epochs=1,
        error="RuntimeError: made to fail by the test",
        final={k: row[k] for k in ("train_loss", "val_loss", "train_acc", "val_acc")},
    )
    (failed / "summary.json").write_text(json.dumps(summary))
    return sweep


@pytest.fixture(scope="module")
def report(multirun, tmp_path_factory) -> Path:
    """The report of the multirun, made through the command line; returns its folder."""
    out = tmp_path_factory.mktemp("report_out")
    proc = subprocess.run(
        [sys.executable, "-m", "cifar_lab.report", str(multirun), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def md_table(md: str, header_start: str) -> list[dict[str, str]]:
    """The markdown table whose header starts with ``header_start``, as {header: cell} rows (first of duplicates)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start} |"))
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows.append({"_cells": cells, **{h: c for h, c in reversed(list(zip(header, cells)))}})
    return rows


def test_report_of_a_real_multirun(multirun, report):
    md_path = report / "report.md"
    md, html_text = md_path.read_text(), (report / "report.html").read_text()
    results = {r["Experiment"].strip("*"): r for r in md_table(md, "Experiment | n")}
    assert set(results) == {"p1a", "p2a", "p2b_batchnorm"}
    for d in sorted(multirun.iterdir()):
        s = load_summary(d) if (d / "summary.json").exists() else None
        if s is None or s["status"] != "completed":
            continue
        row = results[s["experiment"]]
        assert row["Final val acc (%)"] == f"{100 * s['final']['val_acc']:.2f}"
        assert row["Final train loss"] == f"{s['final']['train_loss']:.4f}"
        assert row["Best val acc (%)"] == f"{100 * s['best']['val_acc']:.2f}"
        assert row["Best at epoch"] == str(s["best"]["epoch"])
        gap = next(
            r for r in md_table(md, "Experiment | n | Gap acc (pp)") if r["Experiment"] == f"**{s['experiment']}**"
        )
        assert gap["Gap acc (pp)"] == f"{100 * (s['final']['train_acc'] - s['final']['val_acc']):.2f}"
        assert row["Params"] == f"{s['params']:,}" and row["Data"].startswith("SYNTHETIC")
    assert results["p1a"]["n"] == "1 (+1 ⚠)"  # the failed copy is flagged, not averaged
    seed_rows = {r["Experiment"].strip("*"): r for r in md_table(md, "Experiment | Data")}
    p1a = seed_rows["p1a"]["_cells"]
    assert (
        p1a[4:6] == [results["p1a"]["Final val acc (%)"], "68.08"] and "Δ" not in md_table(md, "Experiment | Data")[0]
    )
    assert seed_rows["p1a"]["Δ given?"] == "no: SYNTHETIC data"
    assert (
        seed_rows["p2b_batchnorm"]["seed"] == "45.61" and seed_rows["p2a"]["Params ours / seed"] == "76,042 / 76.04 k ✓"
    )
    assert "comparison of synthetic-data numbers with the seed's CIFAR-10 numbers is meaningless" in md
    assert "black markers" not in md  # no seed points drawn on synthetic curves
    failed = md_table(md, "Run")[0]
    assert failed["Run"] == "3_p1a_synthetic_failed" and failed["Status"] == "⚠ FAILED"
    assert "(partial, epoch 1)" in failed["Val acc at stop (%)"]
    assert "**p2b_batchnorm** (BatchNorm) against **p2a**" in md
    pngs = re.findall(r"\]\((report_[\w.-]+\.png)\)", md)
    assert len(pngs) == 4 and all((md_path.parent / p).stat().st_size > 1000 for p in pngs)
    assert html_text.count('<img src="data:image/png;base64,') == 4 and "http://" not in html_text


def chromium_dom(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after its load script ran, in headless Chromium with a laptop's window (1366 px)."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install chromium); browser check not run")
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--window-size=1366,900",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


# Every table fits a laptop's window (1366 px wide): none scrolls sideways.
FITS = re.compile(r'data-tables-wider-than-window="0" data-tables="([1-9]\d*)"')


@pytest.mark.slow
def test_report_renders_in_chromium(report, tmp_path):
    dom = chromium_dom(report / "report.html", tmp_path / "profile")
    loaded = re.search(r'data-images-loaded="(\d+)" data-images-total="(\d+)"', dom)
    assert loaded, "the page's load script did not run: " + dom[:500]
    assert loaded.group(1) == loaded.group(2) == "4"
    assert FITS.search(dom), dom[:500]
    assert '<table id="results">' in dom and all(f'data-row="{n}"' in dom for n in ("p1a", "p2a", "p2b_batchnorm"))


# ------------------------------------------------------------------ issue 22: debug runs, a messy outputs/ folder


def report_md(*args: str) -> str:
    """``python -m cifar_lab.report <args>`` through its main; the report.md it wrote."""
    from cifar_lab.report.__main__ import main

    assert main(list(args)) == 0
    out = Path(args[args.index("--out") + 1])
    return (out / "report.md").read_text()


def section(md: str, title: str) -> str:
    """The text of one ``## title`` section of report.md."""
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(
    ("overrides", "debug"),
    [
        ([], []),
        (["trainer=debug"], ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]),
        (["trainer.fast_dev_run=true"], ["trainer.fast_dev_run=true"]),
        (["trainer.fast_dev_run=2"], ["trainer.fast_dev_run=2"]),
        (["trainer.limit_train_batches=1.0", "trainer.limit_test_batches=0.1"], ["trainer.limit_test_batches=0.1"]),
        (["trainer.limit_val_batches=1"], ["trainer.limit_val_batches=1"]),  # an int: one batch, not all
        (["trainer.overfit_batches=2"], ["trainer.overfit_batches=2"]),
    ],
)
def test_debug_settings_of_a_composed_config(overrides, debug):
    from cifar_lab.configs import debug_settings

    assert debug_settings(compose_cfg(*overrides).trainer) == debug


def test_a_fast_dev_run_is_marked_and_kept_out_of_the_results(tmp_path):
    """The real CLI marks the run in summary.json and its final lines; the report lists it apart, or, with
    --include-debug, as its own row marked DEBUG (never averaged with the real runs)."""
    proc = run_cli(tmp_path, "experiment=p1a", *FAST, "trainer.fast_dev_run=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    assert load_summary(run)["debug"] == ["trainer.fast_dev_run=true"]
    final = proc.stdout.strip().splitlines()
    assert "[DEBUG RUN]" in "\n".join(final[-5:]) and "not a result" in final[-1] and "--include-debug" in final[-1]
    make_run(tmp_path / "outputs", "p1a_real", "experiment=p1a", *FAST, val=[0.3], train=[0.3])  # same settings
    md = report_md(str(tmp_path / "outputs"), "--out", str(tmp_path / "report"))
    results = {r["Experiment"]: r["n"] for r in md_table(md, "Experiment | n")}
    assert results == {"**p1a**": "1"}  # the debug run is not counted, not even as an incomplete run (+1 ⚠)
    (listed,) = md_table(section(md, "Debug runs (left out)"), "Run")
    assert listed["Run"] == run.relative_to(tmp_path / "outputs").as_posix()
    assert listed["Debug settings"] == "trainer.fast_dev_run=true" and "fast_dev_run" not in section(md, "Curves")
    md = report_md(str(tmp_path / "outputs"), "--out", str(tmp_path / "report2"), "--include-debug")
    results = {r["Experiment"]: r["n"] for r in md_table(md, "Experiment | n")}
    assert results == {"**p1a**": "1", "**p1a (DEBUG fast_dev_run=true)**": "1"}
    assert "DEBUG RUNS INCLUDED" in md and "## Debug runs" not in md


def test_an_older_debug_run_is_known_by_its_config(tmp_path):
    """A run recorded before summary.json had ``debug``: its .hydra/config.yaml says so."""
    make_run(tmp_path / "runs", "fdr", "experiment=p1a", "trainer.fast_dev_run=true", val=[0.1], train=[0.1],
             status="stopped")  # fmt: skip
    make_run(tmp_path / "runs", "real", "experiment=p1a", val=[0.3], train=[0.3])
    md = report_md(str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert [r["Experiment"] for r in md_table(md, "Experiment | n")] == ["**p1a**"]
    assert md_table(section(md, "Debug runs (left out)"), "Run")[0]["Run"] == "fdr"
    assert "None: all 1 grouped runs completed." in md  # not a failed or incomplete run either
    md = report_md(str(tmp_path / "runs"), "--out", str(tmp_path / "out2"), "--include-debug")
    rows = {r["Experiment"]: r for r in md_table(md, "Experiment | n")}
    assert rows["**p1a (DEBUG fast_dev_run=true)**"]["n"] == "1"  # stopped by fast_dev_run, as it was told
    assert rows["**p1a (DEBUG fast_dev_run=true)**"]["Final val acc (%)"] == "10.00"


def test_failed_starts_are_listed_apart(tmp_path):
    make_run(tmp_path / "runs", "p1a", "experiment=p1a", val=[0.3, 0.5], train=[0.3, 0.6])
    start = make_run(tmp_path / "runs", "p2a_start", "experiment=p2a", val=[0.1], train=[0.1], status="failed")
    (start / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,seconds\n")  # no epoch
    summary = json.loads((start / "summary.json").read_text())
    summary.update(epochs=0, final=None, best=None, train_seconds=0.0, error="Error: data.root '/x' does not exist.")
    (start / "summary.json").write_text(json.dumps(summary))
    md = report_md(str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert [r["Experiment"] for r in md_table(md, "Experiment | n")] == ["**p1a**"]  # no empty p2a row
    assert "p2a_start" not in section(md, "Failed and incomplete runs") and "p2a" not in section(md, "Curves")
    (row,) = md_table(section(md, "Failed starts"), "Run")
    assert row["Run"] == "p2a_start" and row["Error"] == "Error: data.root '/x' does not exist."
    assert "1 completed, 0 failed or incomplete after training, and 1 failed start" in md


def test_group_labels_name_only_settings_that_have_values(tmp_path):
    """Real data has no n_train/n_test: the labels never say 'n_test=None'."""
    make_run(tmp_path, "real", "experiment=p1a", source="cifar10", val=[0.3], train=[0.3])
    make_run(tmp_path, "synth", "experiment=p1a", val=[0.3], train=[0.3])
    labels = sorted(g.label for g in groups_of(tmp_path))
    assert labels == [
        "p1a (batch_size=1024, source=cifar10)",
        "p1a (batch_size=128, n_test=1000, n_train=5000, source=synthetic)",
    ]


def test_packed_members_are_marked_and_timed_per_member(tmp_path):
    """A member records its pack's wall time: the report shows its share (÷ members) on a row of its own."""
    for seed in (0, 1):
        make_run(tmp_path / "runs", f"member{seed}", "experiment=p2a", f"seed={seed}", val=[0.3, 0.5],
                 train=[0.3, 0.6], seconds=3.0, packed={"pack": 0, "members": 2})  # fmt: skip
    make_run(tmp_path / "runs", "solo", "experiment=p2a", val=[0.3, 0.5], train=[0.3, 0.6], seconds=1.0)
    md = report_md(str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    rows = {r["Experiment"]: r for r in md_table(md, "Experiment | n | Gap acc (pp)")}
    assert rows["**p2a (packed)**"]["n"] == "2" and rows["**p2a**"]["n"] == "1"
    assert (
        rows["**p2a (packed)**"]["Time (s)"] == "3.0 ± 0.0 ÷"
        and rows["**p2a (packed)**"]["s/epoch"] == "1.500 ± 0.000 ÷"
    )
    assert rows["**p2a**"]["Time (s)"] == "2.0" and "pack's time ÷ its members" in md
    statuses = {r["Run"]: r["Status"] for r in md_table(md, "Run | Group")}
    assert statuses == {"member0": "completed (packed ×2)", "member1": "completed (packed ×2)", "solo": "completed"}


def test_a_composed_run_names_what_differs_from_the_closest_preset(tmp_path):
    composed = {"name": "resnet+dropout", "preset": None, "closest": "p2b_dropout",
                "differs": ["optimizer.lr=0.01 (p2b_dropout: 0.003)"]}  # fmt: skip
    run = make_run(tmp_path / "runs", "composed", "experiment=p2b_dropout", "optimizer.lr=0.01", val=[0.3],
                   train=[0.3], composed=composed)  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "experiment": "resnet+dropout"}))
    make_run(tmp_path / "runs", "older", "experiment=p1a", "optimizer.lr=0.1", val=[0.3], train=[0.3])  # no field
    md = report_md(str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    results = [r["Experiment"] for r in md_table(md, "Experiment | n")]
    assert results == ["**p1a (lr=0.1)**", "**resnet+dropout (closest p2b_dropout: lr=0.01)**"]
    (row,) = md_table(md, "Experiment | Closest preset")
    assert row["Closest preset"] == "p2b_dropout" and row["Differs in"] == "optimizer.lr=0.01 (p2b_dropout: 0.003)"


def test_a_one_epoch_curve_is_readable(tmp_path):
    """One epoch: a marked point over an integer tick at 1, half an epoch either side; train and val apart."""
    from matplotlib.colors import to_hex

    from cifar_lab import plots
    from cifar_lab.report import figures

    make_run(tmp_path, "one", "experiment=p1b", val=[0.3], train=[0.2])
    (group,) = groups_of(tmp_path)
    fig = figures.draw_experiment("p1b", [(0, group)], None)
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [1] and ax.get_xlim() == (0.5, 1.5)
        train, val = ax.get_lines()
        assert train.get_marker() == "o" and val.get_marker() == "s"
        assert to_hex(train.get_color()) != to_hex(val.get_color()) and train.get_linestyle() != val.get_linestyle()
    plots.plt.close(fig)
    rows = [{"epoch": e, "train_loss": 2.0, "val_loss": 2.1, "train_acc": 0.2, "val_acc": 0.3} for e in (1, 2, 3)]
    fig, ax = plots.plt.subplots()
    plots.epoch_axis(ax, "Loss", [r["epoch"] for r in rows])
    assert list(ax.get_xticks()) == [1, 2, 3] and ax.get_xlim() == (0.5, 3.5)
    plots.plt.close(fig)


@pytest.mark.slow
def test_a_messy_report_fits_a_laptop_window(tmp_path):
    """Solo, packed and composed runs, variants, a failed start and a debug run: no table is wider than 1366 px."""
    runs = tmp_path / "outputs"
    for seed in (0, 1):
        for name in ("p2a", "p2b_l2"):
            make_run(runs, f"multirun/2026-12-04_12-00-00/{seed}_{name}_synthetic", f"experiment={name}",
                     f"seed={seed}", val=[0.3, 0.5], train=[0.3, 0.6], seconds=3.0,
                     packed={"pack": 0, "members": 4}, device="cuda: NVIDIA H200 (bf16-mixed)")  # fmt: skip
        make_run(runs, f"p1a/synthetic-2026-12-04_12-0{seed}-00_000000", "experiment=p1a", f"seed={seed}",
                 val=[0.3, 0.5, 0.6], train=[0.3, 0.6, 0.7])  # fmt: skip
    make_run(runs, "p2a/synthetic-2026-12-04_12-05-00_000000", "experiment=p2a", val=[0.3, 0.5], train=[0.3, 0.6])
    make_run(runs, "p2b_batchnorm/synthetic-2026-12-04_12-06-00_000000", "experiment=p2b_batchnorm",
             "model.tied_blocks=false", "optimizer.lr=0.05", val=[0.4], train=[0.5])  # fmt: skip
    make_run(runs, "p1b/synthetic-2026-12-04_12-07-00_000000", "experiment=p1b", val=[0.2], train=[0.2])
    composed = {"name": "resnet+dropout", "preset": None, "closest": "p2b_dropout",
                "differs": ["optimizer.lr=0.01 (p2b_dropout: 0.003)"]}  # fmt: skip
    make_run(runs, "resnet/synthetic-2026-12-04_12-08-00_000000", "experiment=p2b_dropout", "optimizer.lr=0.01",
             val=[0.3, 0.4], train=[0.3, 0.5], composed=composed, experiment="resnet+dropout")  # fmt: skip
    make_run(runs, "p1a/synthetic-2026-12-04_12-09-00_000000", "experiment=p1a", "trainer.fast_dev_run=true",
             val=[0.1], train=[0.1], status="stopped")  # fmt: skip
    start = make_run(runs, "p1a/image_folder-2026-12-04_12-10-00_000000", "experiment=p1a", val=[0.1], train=[0.1],
                     status="failed", epochs=0, error="Error: data.root '/nonexistent' does not exist.",
                     source="image_folder")  # fmt: skip
    (start / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,seconds\n")
    report_md(str(runs), "--out", str(tmp_path / "report"))
    dom = chromium_dom(tmp_path / "report" / "report.html", tmp_path / "profile")
    assert FITS.search(dom), re.search(r"data-tables-wider[^>]*", dom)


def test_the_protocol_is_a_table(tmp_path):
    make_run(tmp_path / "runs", "p1a", "experiment=p1a", val=[0.3], train=[0.3])
    make_run(tmp_path / "runs", "p2a", "experiment=p2a", val=[0.3], train=[0.3])
    md = report_md(str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    rows = md_table(md, "Batch | LR | Epochs | Groups")
    assert [r["Groups"] for r in rows][:2] == ["p1a", "p2a"] and rows[-1]["Epochs"] == "300"
    assert rows[0]["LR"] == "0.01" and rows[1]["LR"] == "0.003"


def test_a_composed_label_names_two_differences_and_the_table_all(tmp_path):
    """A label also heads a curve's legend: two differences and a count; the composed table lists every one."""
    differs = ["data.batch_size=64 (p2b_dropout: 128)", "model.dropout_kind=element (p2b_dropout: channel)",
               "model.stem_dropout=false (p2b_dropout: true)", "optimizer.lr=0.01 (p2b_dropout: 0.003)"]  # fmt: skip
    composed = {"name": "resnet+dropout", "preset": None, "closest": "p2b_dropout", "differs": differs}
    run = make_run(tmp_path / "runs", "composed", "experiment=p2b_dropout", "optimizer.lr=0.01", val=[0.3],
                   train=[0.3], composed=composed)  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "experiment": "resnet+dropout"}))
    md = report_md(str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    results = [r["Experiment"] for r in md_table(md, "Experiment | n")]
    assert results == ["**resnet+dropout (closest p2b_dropout: batch_size=64, dropout_kind=element, +2 more)**"]
    (row,) = md_table(md, "Experiment | Closest preset")
    assert row["Differs in"] == "; ".join(differs)
