"""Synthetic data behaves like images: every preset learns it, clearly above chance, in a few epochs.

A smoke test on generated data must look like learning, not like a bug. The presets run unchanged on
``data=synthetic`` (its default batch is 128: 5,000 images give 40 steps per epoch); here with 2,048
training images to keep the suite quick, and with more epochs for the small CNNs, which leave their
initial plateau slowly under plain SGD at lr 0.01, as they do on CIFAR-10.
"""

from __future__ import annotations

import pytest

from tests.conftest import EXPERIMENTS, run_inprocess

# p1b (the seed's tanh head) leaves its 2.30 plateau at epoch 8 here (measured: val 23.0% at 8, 45.2% at 11).
EPOCHS = {"fc": 1, "p1a": 3, "p1b": 11, "p2a": 2, "p2b_l2": 2, "p2b_dropout": 2, "p2b_batchnorm": 2}
CHANCE = 0.1


@pytest.mark.parametrize(
    "experiment", [e if e == "fc" else pytest.param(e, marks=pytest.mark.slow) for e in EXPERIMENTS]
)  # fc: the quick selection's one
def test_every_preset_learns_synthetic_data(tmp_path, experiment):
    epochs = EPOCHS[experiment]
    summary = run_inprocess(tmp_path, f"experiment={experiment}", "data=synthetic", "data.n_train=2048",
                            "data.n_test=500", "data.num_workers=0", "trainer=cpu", f"trainer.max_epochs={epochs}",
                            "trainer.enable_progress_bar=false")  # fmt: skip
    assert summary["status"] == "completed" and summary["data"]["synthetic"] is True
    assert summary["best"]["val_acc"] >= 2 * CHANCE, summary["best"]  # 500 images: chance's sd is 1.3 points
