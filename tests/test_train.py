"""The real entry point end to end: each experiment runs and writes every promised output."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import EXPERIMENTS, FAST, PARAMS, load_summary, run_cli, run_dirs

SUMMARY_KEYS = {
    "status",
    "experiment",
    "params",
    "epochs",
    "final",
    "best",
    "train_seconds",
    "seconds_per_epoch",
    "device",
    "versions",
    "data",
}


def check_outputs(run_dir, experiment: str, epochs: int) -> dict:
    """Every file the foundation issue promises, with sane contents."""
    for name in (
        ".hydra/config.yaml",
        "metrics.csv",
        "summary.json",
        "loss.png",
        "accuracy.png",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    s = load_summary(run_dir)
    assert SUMMARY_KEYS <= set(s)
    assert s["status"] == "completed" and s["experiment"] == experiment and s["params"] == PARAMS[experiment]
    assert s["epochs"] == epochs and s["data"]["source"] == "synthetic" and s["data"]["synthetic"] is True
    assert set(s["final"]) == {"train_loss", "val_loss", "train_acc", "val_acc"}
    assert all(0 <= s["final"][k] <= 1 for k in ("train_acc", "val_acc"))
    assert set(s["best"]) == {"val_acc", "epoch"} and 1 <= s["best"]["epoch"] <= epochs
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert float(rows[-1]["val_acc"]) == pytest.approx(s["final"]["val_acc"])
    assert max(float(r["val_acc"]) for r in rows) == pytest.approx(s["best"]["val_acc"])
    return s


@pytest.mark.slow
def test_all_seven_experiments_run_and_record(tmp_path):
    """One multirun over the seven presets (one process, so the suite stays quick)."""
    res = run_cli(tmp_path, "-m", f"experiment={','.join(EXPERIMENTS)}", *FAST, "data.n_train=128", "data.n_test=64")
    assert res.returncode == 0, res.stderr[-3000:]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 7
    seen = {check_outputs(d, load_summary(d)["experiment"], 1)["experiment"] for d in dirs}
    assert seen == set(EXPERIMENTS)


@pytest.mark.slow
def test_single_run_console_learning_and_tensorboard(tmp_path):
    """p1a on synthetic data: seed-style console lines, learning, and TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run_cli(
        tmp_path,
        "experiment=p1a",
        *FAST,
        "data.n_train=1000",
        "data.n_test=200",
        "data.batch_size=32",
        "optimizer.lr=0.05",
        "trainer.max_epochs=3",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Epoch: 3, Training Loss: " in res.stdout and "Validation Accuracy: " in res.stdout
    assert "SYNTHETIC" in res.stdout + res.stderr
    (run_dir,) = run_dirs(tmp_path)
    s = check_outputs(run_dir, "p1a", 3)
    assert s["best"]["val_acc"] > 0.3  # synthetic classes are learnable: far above chance (0.1)

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= tags
    val = acc.Scalars("val/acc")
    assert [e.step for e in val] == [1, 2, 3]
    assert val[-1].value == pytest.approx(s["final"]["val_acc"], abs=1e-6)
    from tensorboard.plugins.hparams import plugin_data_pb2

    contents = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(contents["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["01_experiment"].string_value == "p1a"
    assert session.hparams["03_lr"].number_value == pytest.approx(0.05)


def test_mission_usage_line_runs_and_dropout_acts(tmp_path):
    """README's ``model=resnet reg=dropout``, beside the same run with reg=none (one multirun, same seed):
    the checkpoint's net holds dropout layers that act in training mode only, and training with them
    gave other weights than without."""
    import torch

    from cifar_lab.task import ClassifierModule

    res = run_cli(
        tmp_path, "-m", "model=resnet", "reg=none,dropout", *FAST, "data.n_train=64", "data.n_test=32",
        "model.n_blocks=2", "seed=3",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    runs = {}
    for run_dir in run_dirs(tmp_path):
        s = load_summary(run_dir)
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        p = float(ClassifierModule.load_from_checkpoint(ckpt, map_location="cpu").hparams["net"]["dropout"])
        assert s["status"] == "completed" and s["experiment"] == ("resnet+dropout" if p else "resnet")
        runs[p] = ckpt
    assert set(runs) == {0.0, 0.3}
    module = ClassifierModule.load_from_checkpoint(runs[0.3], map_location="cpu")
    drops = [m for m in module.net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    assert drops and all(m.p == 0.3 for m in drops)  # the (tied) blocks' dropout
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.net.train()
        train_a, train_b = module.net(x), module.net(x)
        module.net.eval()
        eval_a, eval_b = module.net(x), module.net(x)
    assert not torch.allclose(train_a, train_b) and torch.equal(eval_a, eval_b) and not torch.allclose(train_a, eval_a)
    weights = [torch.load(runs[p], map_location="cpu", weights_only=False)["state_dict"] for p in (0.0, 0.3)]
    assert weights[0].keys() == weights[1].keys()  # dropout has no parameters: the same net, trained otherwise
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0] if k.endswith("weight"))
