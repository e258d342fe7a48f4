"""The bench command runs every pipeline on the CPU and writes bench.json."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_bench_writes_a_row_per_pipeline(tmp_path):
    res = run_cli(
        tmp_path,
        "experiment=p1a",
        "data=synthetic",
        "data.n_train=192",
        "data.n_test=64",
        "data.batch_size=64",
        "data.num_workers=0",
        "bench.epochs=1",
        "bench.seed_style_workers=[1,1]",
        "trainer=cpu",
        "speed.steps_per_call=2",
        module="cifar_lab.bench",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (tmp_path / "outputs" / "bench").rglob("bench.json")
    rows = json.loads(path.read_text())
    assert [r["pipeline"] for r in rows] == ["seed_style", "classic", "fast", "raw"]
    for r in rows:
        assert {"pipeline", "s_per_epoch", "images_per_s", "device", "batch_size"} <= set(r)
        assert r["s_per_epoch"] > 0 and r["batch_size"] == 64 and r["device"].startswith("cpu")
        assert abs(r["images_per_s"] * r["s_per_epoch"] - 256) < 1  # train + val images per second
    assert "speed-up over seed_style" in res.stdout and "SYNTHETIC" in res.stdout


@pytest.mark.slow
def test_bench_rejects_an_unknown_pipeline(tmp_path):
    res = run_cli(tmp_path, "data=synthetic", "bench.pipelines=[warp]", "trainer=cpu", module="cifar_lab.bench")
    assert res.returncode == 2 and "unknown bench pipeline" in res.stderr


def test_bench_refuses_the_packed_pipeline_without_runs_to_pack(tmp_path):
    res = run_cli(tmp_path, "data=synthetic", "bench.pipelines=[packed]", "trainer=cpu", module="cifar_lab.bench")
    assert res.returncode == 2 and "set bench.pack=N" in res.stderr and "Traceback" not in res.stderr


def test_bench_rows_know_the_floor(tmp_path):
    """Every epoch row carries the counted FLOPs, the achieved rate and its share of the measured peak; variants
    are rows of their own, each with its settings applied (issue 23, item 1)."""
    res = run_cli(
        tmp_path, "experiment=p1a", "data=synthetic", "data.n_train=64", "data.n_test=32", "data.batch_size=32",
        "trainer=cpu", "bench.pipelines=[raw]", "bench.warmup_epochs=0", "bench.epochs=1", "bench.peak_size=128",
        "bench.rounds=2",
        'bench.variants=["", "speed.channels_last=false speed.cpu_threads=1"]', module="cifar_lab.bench",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (tmp_path / "outputs" / "bench").rglob("bench.json")
    rows = json.loads(path.read_text())
    assert [r["variant"] for r in rows] == ["", "speed.channels_last=false speed.cpu_threads=1"]
    for r in rows:
        assert len(r["s_per_epoch_each_round"]) == 2 and r["s_per_epoch"] == min(r["s_per_epoch_each_round"])
        for key in ("train_mflop_per_image", "eval_mflop_per_image", "achieved_gflop_s", "peak_gflop_s", "pct_of_peak"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        gflop = (64 * r["train_mflop_per_image"] + 32 * r["eval_mflop_per_image"]) / 1e3
        assert r["gflop_per_epoch"] == pytest.approx(gflop, rel=1e-3)
        assert r["achieved_gflop_s"] == pytest.approx(gflop / r["s_per_epoch"], rel=1e-2)
        assert r["pct_of_peak"] == pytest.approx(100 * r["achieved_gflop_s"] / r["peak_gflop_s"], rel=1e-2)
    # a training step is forward + backward: more than the forward an evaluation costs, under 3x of it plus the loss
    assert (
        2 * rows[0]["eval_mflop_per_image"] < rows[0]["train_mflop_per_image"] < 3.1 * rows[0]["eval_mflop_per_image"]
    )
    assert "GFLOP/s" in res.stdout and "% of peak" in res.stdout and "speed.cpu_threads=1" in res.stdout


def test_bench_refuses_a_variant_that_names_no_key(tmp_path):
    res = run_cli(tmp_path, "data=synthetic", "trainer=cpu", 'bench.variants=["speed.channel_last=true"]',
                  module="cifar_lab.bench")  # fmt: skip
    assert res.returncode == 2 and "bench.variants" in res.stderr and "Traceback" not in res.stderr
