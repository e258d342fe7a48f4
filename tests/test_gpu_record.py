""".ci/gpu-record, the 300-epoch GPU record, dry-run on the CPU: what it promises a device command.

It always ends with everything it finished packed into one tarball per part, skips what an earlier part
completed, and starts nothing it cannot finish before its deadline. Needs the real CIFAR-10 copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import REPO, SHARED_TARBALL

pytestmark = [
    pytest.mark.slow,  # trains and reports through the CLI, part by part
    pytest.mark.real_data,
    pytest.mark.skipif(not SHARED_TARBALL.is_file(), reason=f"real CIFAR-10 copy not found at {SHARED_TARBALL}"),
]


def record(tmp_path, **env: str) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",  # the script calls python3
        "WORK_DRY": str(tmp_path / "work"),
        "DATA_DRY": str(tmp_path / "data"),
        "OUT_DRY": str(tmp_path / "out"),
        **env,
    }
    return subprocess.run(
        ["bash", str(REPO / ".ci" / "gpu-record"), "--dry-run"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar if m.isfile()}


def test_a_part_packs_each_finished_run_and_the_report_and_the_next_part_skips_them(tmp_path):
    first = record(tmp_path, EXPERIMENTS="fc p1a", JOBS="2")
    assert first.returncode == 0, first.stdout + first.stderr
    files = members(tmp_path / "out" / "gpu-record-part1.tgz")
    for name in ("fc", "p1a"):
        summary = json.loads(files[f"runs/{name}/summary.json"])
        assert (summary["status"], summary["epochs"], summary["data"]["n_train"]) == ("completed", 2, 300)
        assert files[f"runs/{name}/metrics.csv"].decode().count("\n") == 3  # header + 2 epochs
        for extra in ("loss.png", "accuracy.png", ".hydra/config.yaml"):
            assert f"runs/{name}/{extra}" in files
        assert f"runs/{name}/checkpoints/last.ckpt" not in files  # completed: nothing to resume
        assert f"{name}.log" in files
    assert "fc" in files["report/report.md"].decode() and "report/report.html" in files
    assert [line.split("\t")[:3] for line in files["times.tsv"].decode().splitlines()] in (
        [["1", "fc", "0"], ["1", "p1a", "0"]],
        [["1", "p1a", "0"], ["1", "fc", "0"]],
    )

    # Part 2 on the same machine: the completed runs are skipped; with no time left p1b is not started,
    # and the part still ends with its tarball (status 0: nothing failed).
    second = record(tmp_path, PART="2", EXPERIMENTS="fc p1a p1b", DEADLINE="0")
    assert second.returncode == 0, second.stdout + second.stderr
    log = (tmp_path / "out" / "gpu-record-part2.log").read_text()
    assert "fc: completed in an earlier part, skipped" in log
    assert "p1b: not started" in log
    files2 = members(tmp_path / "out" / "gpu-record-part2.tgz")
    assert "runs/p1b/summary.json" not in files2
    assert files2["runs/fc/summary.json"] == files["runs/fc/summary.json"]  # untouched by part 2
