"""The bench command runs every pipeline on the CPU and writes bench.json."""

from __future__ import annotations

import json

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
