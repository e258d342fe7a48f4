"""The LightningModule's bookkeeping: per-image loss means, classes from the data."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from cifar_lab.models import create_model
from cifar_lab.task import ClassifierModule
from tests.conftest import QUICK, run_inprocess, write_image_folder


def test_epoch_loss_is_the_per_image_mean():
    """A batch of 3 with loss 1 and a partial batch of 1 with loss 5: the epoch loss is 2, not 3."""
    m = ClassifierModule(create_model("cnn"), partial(torch.optim.SGD, lr=0.1))
    y3, y1 = torch.zeros(3, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    m.update_metrics("train", torch.tensor(1.0), torch.tensor([0, 0, 1]), y3)
    m.update_metrics("train", torch.tensor(5.0), torch.tensor([0]), y1)
    assert float(m.loss_mean["train_"].compute()) == pytest.approx(2.0)
    assert float(m.acc["train_"].compute()) == pytest.approx(0.75)


def test_an_image_folder_with_three_classes_trains_a_three_way_head(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), n_train=4, n_test=2)
    summary = run_inprocess(tmp_path / "run", "experiment=p1a", *QUICK, "data=image_folder", f"data.root={root}")
    assert summary["status"] == "completed"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"]["net.head.3.weight"].shape == (3, 32)


@pytest.mark.slow
def test_a_checkpoint_is_self_contained(tmp_path):
    """load_from_checkpoint(path) rebuilds the network from the checkpoint alone, in a fresh process."""
    import subprocess
    import sys

    summary = run_inprocess(tmp_path / "run", "experiment=p2b_dropout", *QUICK, "data=synthetic", "data.n_train=64",
                            "data.n_test=32", "model.n_blocks=2", "model.width=8")  # fmt: skip
    assert summary["status"] == "completed"
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    code = (
        "import sys, torch; from cifar_lab.task import ClassifierModule\n"
        "m = ClassifierModule.load_from_checkpoint(sys.argv[1], map_location='cpu')\n"
        "x = torch.zeros(2, 3, 32, 32)\n"
        "print(type(m.net).__name__, m.hparams['net']['dropout'], m.classes[0], tuple(m.eval()(x).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ckpt)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ResNet", "0.3", "synthetic_0", "(2,", "10)"]
