"""A user's first week: evaluate and predict, the usual config groups, a quiet console, help and hints."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, QUICK, load_summary, run_cli, run_dirs, run_inprocess

SMALL = [*FAST, "experiment=p1a", "model.width=4", "model.hidden=8", "data.n_train=128", "data.n_test=64"]


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# --------------------------------------------------------------------------- evaluate and predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("use")
    res = run_cli(cwd, *SMALL, "trainer.max_epochs=2", f"hydra.run.dir={cwd / 'run'}")
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd / "run"


def test_evaluate_a_run(trained):
    res = subprocess.run([sys.executable, "-m", "cifar_lab.evaluate", str(trained)], capture_output=True, text=True,
                         timeout=300, cwd=trained.parent)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "synthetic_0" in res.stdout and "all" in res.stdout and "SYNTHETIC" in res.stdout
    result = json.loads((trained / "eval" / "best-synthetic.json").read_text())
    assert result["images"] == 64 and len(result["confusion"]) == 10 and sum(map(sum, result["confusion"])) == 64
    assert set(result["per_class_acc"]) == {f"synthetic_{i}" for i in range(10)}
    # The same checkpoint, the same test split: the run's own numbers for that epoch.
    row = [r for r in csv.DictReader(open(trained / "metrics.csv")) if int(r["epoch"]) == result["epoch"]][0]
    assert result["acc"] == pytest.approx(float(row["val_acc"]), abs=1e-6)
    assert result["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-5)
    assert (trained / "eval" / "best-synthetic-confusion.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_evaluate_on_other_data_and_refuses_other_classes(trained, tmp_path):
    from tests.conftest import write_image_folder

    res = subprocess.run([sys.executable, "-m", "cifar_lab.evaluate", str(trained), "data.n_test=32"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (other,) = [p for p in (trained / "eval").glob("best-synthetic-*.json")]
    assert json.loads(other.read_text())["images"] == 32
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=1, n_test=2)
    res = subprocess.run([sys.executable, "-m", "cifar_lab.evaluate", str(trained), "data=image_folder",
                          f"data.root={root}", "data.cache_dir=null"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "classes" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_evaluate_an_image_folder_run_with_no_overrides(tmp_path):
    """The data a run was trained on (here a required data.root) comes back from its checkpoint alone."""
    from tests.conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=8, n_test=3)
    res = run_cli(tmp_path, *QUICK, "experiment=p1a", "model.width=4",
                  "model.hidden=8", "data=image_folder", f"data.root={root}", "data.cache_dir=null",
                  "data.batch_size=8", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = subprocess.run([sys.executable, "-m", "cifar_lab.evaluate", str(tmp_path / "run")], capture_output=True,
                         text=True, timeout=300, cwd=elsewhere)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "eval" / "best-image_folder.json").read_text())
    assert result["images"] == 6 and result["classes"] == ["cat", "dog"]


@pytest.mark.slow
def test_predict_images(trained, tmp_path):
    from tests.conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), n_train=2, n_test=1)
    out = tmp_path / "pred.csv"
    res = subprocess.run([sys.executable, "-m", "cifar_lab.predict", str(trained), str(root / "train"),
                          "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 4 and rows[0]["predicted"].startswith("synthetic_")
    for r in rows:
        probs = [float(v) for k, v in r.items() if k.startswith("p_")]
        assert len(probs) == 10 and sum(probs) == pytest.approx(1, abs=1e-4)
        assert r["predicted"] == f"synthetic_{max(range(10), key=lambda i: probs[i])}"
    res = subprocess.run([sys.executable, "-m", "cifar_lab.predict", str(trained), str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "cifar_lab.predict", str(trained), str(root), "--batch-size", "0"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "--batch-size: must be at least 1" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_predict_refuses_to_overwrite_a_csv_unless_asked(trained, tmp_path):
    """./predictions.csv from an earlier call is kept: one paragraph, exit 2; --overwrite replaces it."""
    from tests.conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), n_train=1, n_test=1)
    earlier = tmp_path / "predictions.csv"
    earlier.write_text("earlier predictions\n")
    predict = [sys.executable, "-m", "cifar_lab.predict", str(trained), str(root / "train")]
    res = subprocess.run(predict, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "predictions.csv already exists" in res.stderr and "--overwrite" in res.stderr
    assert earlier.read_text() == "earlier predictions\n"
    res = subprocess.run([*predict, "--overwrite"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert earlier.read_text().startswith("file,predicted,p_synthetic_0")


# --------------------------------------------------------------------------- the usual config groups


@pytest.mark.parametrize("optimizer", ["sgd_nesterov", "adamw"])
def test_optimizer_options(tmp_path, optimizer):
    summary = run_inprocess(tmp_path, *SMALL, f"optimizer={optimizer}")
    assert summary["status"] == "completed"
    import torch

    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["optimizer_states"][0]
    group = state["param_groups"][0]
    if optimizer == "sgd_nesterov":  # every SGD group has the key: its value is what shows the choice
        assert group["nesterov"] is True and group["momentum"] > 0
    else:  # AdamW keeps second moments (SGD has none) and decouples the weight decay
        assert "exp_avg_sq" in next(iter(state["state"].values())) and group["weight_decay"] > 0 and "amsgrad" in group


@pytest.mark.parametrize(
    ("scheduler", "extra", "expected"),
    [
        ("cosine", [], lambda lrs: lrs[0] > lrs[1] > lrs[2] >= 0),
        ("step", ["scheduler.schedule.step_size=1", "scheduler.schedule.gamma=0.5"],
         lambda lrs: lrs == pytest.approx([0.01, 0.005, 0.0025])),  # the lr each epoch trained with
        ("onecycle", [], lambda lrs: lrs[0] < lrs[1] > lrs[2] and max(lrs) <= 0.01 + 1e-9),  # warm-up, anneal
    ],
)  # fmt: skip
@pytest.mark.parametrize("loader", ["classic", "gpu"])
def test_scheduler_options_log_the_lr_per_epoch(tmp_path, scheduler, extra, expected, loader):
    summary = run_inprocess(tmp_path, *SMALL, "trainer.max_epochs=3", f"scheduler={scheduler}", *extra,
                            f"data.loader={loader}", "speed.steps_per_call=3")  # fmt: skip
    assert summary["status"] == "completed"
    lrs = [v for _, v in scalars(tmp_path, "train/lr")]
    assert len(lrs) == 3 and expected(lrs), lrs


def test_a_constant_learning_rate_gets_no_lr_curve(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_inprocess(tmp_path, *SMALL, "trainer.max_epochs=2", "scheduler=none")["status"] == "completed"
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "val/acc" in acc.Tags()["scalars"] and "train/lr" not in acc.Tags()["scalars"]


def test_onecycle_moves_every_step_on_both_paths(tmp_path):
    """The fast path steps a per-step schedule itself: after the run, both paths end at the same lr."""
    import torch

    ends = []
    for loader in ("classic", "gpu"):
        run_inprocess(tmp_path / loader, *SMALL, "trainer.max_epochs=2", "scheduler=onecycle",
                      f"data.loader={loader}", "speed.steps_per_call=3")  # fmt: skip
        ckpt = torch.load(tmp_path / loader / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        ends.append(ckpt["lr_schedulers"][0]["_step_count"])
    assert ends[0] == ends[1] == 2 * 2 + 1  # 2 steps per epoch (128 images, batch 64), plus the initial step


@pytest.mark.parametrize("logger", ["csv", pytest.param("mlflow", marks=pytest.mark.slow), "wandb"])
def test_logger_options(tmp_path, logger, monkeypatch):
    if logger == "mlflow":
        pytest.importorskip("mlflow")
        monkeypatch.setenv("CIFAR_LAB_MLRUNS", str(tmp_path / "mlruns"))
    if logger == "wandb":
        pytest.importorskip("wandb", reason="wandb is not installed (logger=wandb is tested where it is)")
        monkeypatch.setenv("WANDB_MODE", "offline")
    summary = run_inprocess(tmp_path / "run", *SMALL, "trainer.max_epochs=2", f"logger={logger}")
    assert summary["status"] == "completed"
    if logger == "csv":
        rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")))
        logged = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
        assert logged == pytest.approx([r["val_acc"] for r in _metrics(tmp_path / "run")])
        assert not (tmp_path / "run" / "tb").exists()
    elif logger == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
        (experiment,) = [e for e in client.search_experiments() if e.name == "p1a"]
        (run,) = client.search_runs([experiment.experiment_id])
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.step for m in history] == [1, 2]
        assert history[-1].value == pytest.approx(summary["final"]["val_acc"], abs=1e-6)
        assert run.data.params["optimizer.lr"] == "0.01"
    else:
        assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    from cifar_lab.files import read_metrics

    return read_metrics(run_dir / "metrics.csv")


@pytest.mark.slow
@pytest.mark.parametrize("override", ["trainer.limit_train_batches=1", "trainer.fast_dev_run=true",
                                      "trainer.gradient_clip_val=1"])  # fmt: skip
def test_any_trainer_argument_without_plus(tmp_path, override):
    res = run_cli(tmp_path, *SMALL, override)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert load_summary(run_dir)["status"] == "completed"


def test_trainer_defaults_match_the_installed_lightning():
    from cifar_lab.configdoc import render_trainer_defaults
    from cifar_lab.configs import CONF_DIR

    assert (Path(CONF_DIR) / "trainer_defaults.yaml").read_text() == render_trainer_defaults(), (
        "regenerate: python -m cifar_lab.configdoc --trainer-defaults > conf/trainer_defaults.yaml"
    )


# --------------------------------------------------------------------------- console, help, hints


@pytest.mark.slow
def test_a_run_prints_each_message_once_and_no_adverts(tmp_path):
    res = run_cli(tmp_path, *SMALL, "trainer.max_epochs=2")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), out  # no message twice
    assert "💡" not in out and "LeafSpec" not in out and "Warning" not in out, out
    (run_dir,) = run_dirs(tmp_path)
    assert f"run directory: {run_dir}" in out and f"resume=true hydra.run.dir={run_dir}" in out
    assert out.index("run directory") < out.index("Epoch: 1,")  # said at the start


@pytest.mark.slow
def test_ctrl_c_records_interrupted_and_prints_the_resume_command(tmp_path):
    run_dir = tmp_path / "outputs" / "stopped"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAR_LAB_DATA": str(tmp_path / "data")}
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default; a pytest-xdist worker may
    # ignore SIGINT, and a child inherits that, so the child starts from the default.
    proc = subprocess.Popen([sys.executable, "-m", "cifar_lab", *SMALL, "trainer.max_epochs=200", "data.n_train=512",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.csv").exists() or len((run_dir / "metrics.csv").read_text().splitlines()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    # A Ctrl-C is no error: one plain paragraph, no "Error:", no bare "[INFO] " line before it.
    assert "\nStopped by Ctrl-C. Every completed epoch is kept" in out and "Error" not in out, out[-3000:]
    assert not [line for line in out.splitlines() if line.strip() == "[INFO]"], out[-3000:]
    after = out.split("Ctrl-C", 1)[1]  # resume=auto when the signal came before the epoch's last.ckpt
    assert f"resume=true hydra.run.dir={run_dir}" in after or f"resume=auto hydra.run.dir={run_dir}" in after
    assert load_summary(run_dir)["status"] == "interrupted"


def test_help_shows_experiments_groups_and_examples(tmp_path):
    res = run_cli(tmp_path, "--help")
    assert res.returncode == 0
    for needle in ("experiment=fc | p1a", "scheduler: cosine, none, onecycle, step", "logger: csv, mlflow",
                   "python -m cifar_lab.evaluate", "-m 'experiment=glob(*)'"):  # fmt: skip
        assert needle in res.stdout, res.stdout
    examples = res.stdout.split("Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) >= 8 and all(line.startswith("  python -m cifar_lab") for line in examples), examples


def test_the_progress_bar_counts_epochs_as_the_console_line(tmp_path):
    """On a terminal (a pseudo-terminal here) the bar says "Epoch 1/2" where the line says "Epoch: 1", never
    Lightning's "Epoch 0/1"."""
    import pty
    import re

    master, slave = pty.openpty()
    overrides = [o for o in SMALL if o != "trainer.enable_progress_bar=false"]
    env = {**os.environ, "CIFAR_LAB_DATA": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, "-m", "cifar_lab", *overrides, "trainer.max_epochs=2",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env)  # fmt: skip
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0, out[-3000:]
    text = out.decode(errors="replace")
    assert set(re.findall(r"Epoch \d+/\d+", text)) == {"Epoch 1/2", "Epoch 2/2"}, text[-3000:]
    assert "Epoch: 1," in text and "Epoch: 2," in text


def test_a_mistyped_key_suggests_the_closest_ones(tmp_path):
    res = run_cli(tmp_path, *FAST, "optimizer.lrr=0.1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "did you mean optimizer.lr" in res.stderr


# --------------------------------------------------------------------------- figures and hparams


def test_tensorboard_opens_on_train_and_val_with_a_short_hparams_table(trained):
    """TensorBoard sorts its scalar groups by name: train/ and val/ come first, nothing repeats the final metrics
    as an hparams group; the HPARAMS tab has the curated columns (no data.datamodule.* internals) and metric
    columns whose values, the last points of those scalars, are metrics.csv's last row."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from cifar_lab.files import read_metrics

    acc = EventAccumulator(str(trained / "tb"))
    acc.Reload()
    groups = sorted({tag.split("/")[0] for tag in acc.Tags()["scalars"]})
    assert groups[:2] == ["train", "val"] and "hparams" not in groups, groups
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    titled = {info.display_name: info.name for info in experiment.hparam_infos}
    assert list(titled) == ["experiment", "model", "lr", "dropout", "l2", "weight_decay", "momentum", "batch_size",
                            "epochs", "seed", "precision"]  # fmt: skip
    assert sorted(titled.values()) == list(titled.values())  # TensorBoard sorts by name: the order above stays
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert set(session.hparams) <= set(titled.values()) and not any("data." in k for k in session.hparams)
    value = {title: session.hparams[name] for title, name in titled.items() if name in session.hparams}
    assert "dropout" not in value  # p1a's cnn has none: an empty cell
    assert value["experiment"].string_value == "p1a" and value["model"].string_value == "cnn"
    assert value["lr"].number_value == pytest.approx(0.01) and value["epochs"].number_value == 2
    assert value["batch_size"].number_value == 64 and value["precision"].string_value == "32-true"
    titles = {info.name.tag: info.display_name for info in experiment.metric_infos}
    assert titles == {"val/acc": "final val acc", "val/acc_best": "best val acc", "val/loss": "final val loss",
                      "train/acc": "final train acc", "train/loss": "final train loss"}  # fmt: skip
    rows = read_metrics(trained / "metrics.csv")
    expected = {"val/acc": rows[-1]["val_acc"], "val/acc_best": max(r["val_acc"] for r in rows),
                "val/loss": rows[-1]["val_loss"], "train/acc": rows[-1]["train_acc"],
                "train/loss": rows[-1]["train_loss"]}  # fmt: skip
    last = {tag: acc.Scalars(tag)[-1] for tag in titles}
    assert {tag: e.step for tag, e in last.items()} == dict.fromkeys(titles, len(rows))
    assert {tag: e.value for tag, e in last.items()} == pytest.approx(expected, abs=1e-6)  # float32 in TensorBoard
    assert "optimizer:" in (trained / "tb" / "hparams.yaml").read_text()  # the full config stays beside them


def test_metrics_are_written_to_six_significant_digits(trained):
    """metrics.csv holds each metric as it was meant (0.137), not its float32 noise (0.13699999451637268), and
    summary.json holds the same numbers."""
    text = (trained / "metrics.csv").read_text().splitlines()
    values = [v for line in text[1:] for v in line.split(",")[1:5]]
    assert len(values) == 8 and all(len(v.lstrip("0.").replace(".", "")) <= 6 for v in values), text
    last = dict(zip(text[0].split(","), text[-1].split(",")))
    final = load_summary(trained)["final"]
    assert {k: repr(final[k]) for k in final} == {k: last[k] for k in final}


def test_predict_refuses_a_csv_reached_through_a_folder_not_made_yet(tmp_path, monkeypatch):
    """``--out sub/../predictions.csv`` names the existing predictions.csv even before sub/ exists."""
    from cifar_lab.errors import UserError
    from cifar_lab.predict import output_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "predictions.csv").write_text("earlier\n")
    with pytest.raises(UserError, match="already exists"):
        output_file(Path("sub/../predictions.csv"))
    assert (tmp_path / "predictions.csv").read_text() == "earlier\n" and not (tmp_path / "sub").exists()
