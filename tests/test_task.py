"""The LightningModule's bookkeeping: per-image loss means, classes from the data."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from cifar_lab.models import create_model
from cifar_lab.task import ClassifierModule
from tests.conftest import QUICK, compose_cfg, run_inprocess, write_image_folder


def test_epoch_loss_is_the_per_image_mean():
    """A batch of 3 with loss 1 and a partial batch of 1 with loss 5: the epoch loss is 2, not 3."""
    m = ClassifierModule.from_modules(create_model("cnn"), partial(torch.optim.SGD, lr=0.1))
    y3, y1 = torch.zeros(3, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    m.update_metrics("train", torch.tensor(1.0), torch.tensor([0, 0, 1]), y3)
    m.update_metrics("train", torch.tensor(5.0), torch.tensor([0]), y1)
    assert float(m.loss_mean["train_"].compute()) == pytest.approx(2.0)
    assert float(m.acc["train_"].compute()) == pytest.approx(0.75)


def test_the_module_takes_configs_and_load_from_checkpoint_rebuilds_it(tmp_path):
    """Built from configs (as build.py builds it), its checkpoint rebuilds it: same configs, same weights."""
    import lightning as L
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    cfg = compose_cfg("experiment=p2b_batchnorm", "model.n_blocks=1", "model.width=4", "scheduler=cosine")
    configs = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "optimizer", "scheduler")}
    m = ClassifierModule(configs["model"], configs["optimizer"], l2=0.01, num_classes=3, classes=["a", "b", "c"],
                         scheduler=configs["scheduler"])  # fmt: skip
    data = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(m, data, data)
    from cifar_lab.lifecycle import LOGGED_METRICS  # what a callback's monitor may name

    assert sorted(trainer.callback_metrics) == sorted(LOGGED_METRICS)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    back = ClassifierModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert dict(back.hparams) == dict(m.hparams) == {"net": configs["model"], "optimizer": configs["optimizer"],
        "l2": 0.01, "num_classes": 3, "classes": ["a", "b", "c"], "scheduler": configs["scheduler"]}  # fmt: skip
    assert back.classes == ["a", "b", "c"] and back.scheduler_cfg == configs["scheduler"] and back.l2 == 0.01
    for key, value in m.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_the_constructor_takes_configs_only_and_from_modules_a_built_network():
    net, optimizer = create_model("cnn"), partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="from_modules"):
        ClassifierModule(net, optimizer)
    m = ClassifierModule.from_modules(net, optimizer, l2=0.5, num_classes=10)
    assert m.net is net and m.optimizer_factory is optimizer and m.l2 == 0.5 and dict(m.hparams) == {}


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
