"""cifar_lab.compat, each private touch point against the real Lightning or Hydra object: a release that moves
one of them fails here, not in a run."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cifar_lab import compat

BATCHES = 3  # per epoch


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCHES * 4, 5, generator=g), torch.randn(BATCHES * 4, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


class Tiny(L.LightningModule):
    """A linear regression; ``manual=True``: it steps the raw optimizer K times a step and counts them itself,
    as the fast path does."""

    def __init__(self, manual: bool = False, steps_per_batch: int = 2, order: list[str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["order"])
        self.net = nn.Linear(5, 1)
        self.automatic_optimization = not manual
        self.order = order

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.automatic_optimization:
            return nn.functional.mse_loss(self.net(x), y)
        optimizer = self.optimizers().optimizer  # the raw optimizer: Lightning does not see these steps
        for _ in range(self.hparams.steps_per_batch):
            optimizer.zero_grad()
            nn.functional.mse_loss(self.net(x), y).backward()
            optimizer.step()
            progress = compat.optimizer_step_progress(self.trainer)
            progress.increment_ready()
            progress.increment_completed()

    def on_train_epoch_end(self):
        if self.order is not None:
            self.order.append("module")

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.01)


class Probe(Callback):
    """Reads the loop state through compat at the hooks where cifar_lab reads it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, bool]] = []

    def on_train_start(self, trainer, pl_module):
        self.seen.append(("start", compat.epoch_index(trainer), compat.batches_trained(trainer), False))

    def on_train_epoch_end(self, trainer, pl_module):
        seen = ("end", compat.epoch_index(trainer), compat.batches_trained(trainer), compat.fit_restarting(trainer))
        self.seen.append(seen)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    return L.Trainer(**{**options, **kwargs})


def test_loop_state_counts_epochs_and_batches(tmp_path):
    probe = Probe()
    t = trainer(tmp_path, max_epochs=2, callbacks=[probe])
    t.fit(Tiny(), loader())
    # At each epoch end: the epochs processed, this one included; all of its batches; no replay.
    assert probe.seen == [("start", 0, 0, False), ("end", 1, BATCHES, False), ("end", 2, BATCHES, False)]
    assert compat.epoch_index(t) == 2


def test_a_resume_restores_the_epoch_index_and_replays_the_last_epoch_end(tmp_path):
    first = trainer(tmp_path, max_steps=BATCHES)  # max_steps: Lightning replays the epoch end on resume
    first.fit(Tiny(), loader())
    first.save_checkpoint(tmp_path / "one.ckpt")
    probe = Probe()
    trainer(tmp_path, max_steps=2 * BATCHES, callbacks=[probe]).fit(Tiny(), loader(), ckpt_path=tmp_path / "one.ckpt")
    assert probe.seen[0][:2] == ("start", 1)  # the checkpoint's whole epoch, known at on_train_start
    assert [restarting for *_, restarting in probe.seen[1:]] == [True, False]  # the replay, then a real epoch end
    probe = Probe()  # with max_epochs there is no replay
    trainer(tmp_path, max_epochs=2, callbacks=[probe]).fit(Tiny(), loader(), ckpt_path=tmp_path / "one.ckpt")
    assert probe.seen[0][:2] == ("start", 1) and probe.seen[1:] == [("end", 2, BATCHES, False)]


def test_optimizer_step_progress_is_what_global_step_counts(tmp_path):
    t = trainer(tmp_path, max_epochs=2)
    t.fit(Tiny(manual=True, steps_per_batch=3), loader())
    assert t.global_step == 2 * BATCHES * 3


def test_hparams_name_is_what_a_checkpoint_stores(tmp_path):
    module = Tiny()
    t = trainer(tmp_path, max_epochs=1)
    t.fit(module, loader())
    t.save_checkpoint(tmp_path / "saved.ckpt")
    saved = torch.load(tmp_path / "saved.ckpt", weights_only=False)
    assert compat.hparams_name(module) == saved[module.CHECKPOINT_HYPER_PARAMS_NAME] == "kwargs"
    assert compat.hparams_name(nn.Linear(1, 1)) is None  # no hyperparameters saved


def test_tensorboard_file_writer_writes_into_the_logger_s_event_file(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    compat.tensorboard_file_writer(logger).add_event(Event(step=7, session_log=SessionLog(status=SessionLog.START)))
    logger.experiment.flush()
    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    starts = [e.step for e in EventFileLoader(str(events)).Load() if e.HasField("session_log")]
    assert starts == [7]


def test_after_module_callbacks_run_after_the_module_and_other_callbacks_in_their_order(tmp_path):
    order: list[str] = []

    class Named(Callback):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_train_epoch_end(self, trainer, pl_module):
            order.append(self.name)

    class Late(compat.AfterModuleCallback, Named):
        pass

    callbacks = [Late("late1"), Named("plain"), Late("late2")]  # Checkpoints: Lightning adds no ModelCheckpoint
    t = trainer(tmp_path, max_epochs=1, callbacks=callbacks, enable_checkpointing=True)
    t.fit(Tiny(order=order), loader())
    assert order == ["plain", "module", "late1", "late2"]


def test_hydra_ddp_child_command_replaces_lightning_s_for_a_hydra_job(monkeypatch):
    """Lightning's DDP launcher, inside a Hydra job, asks the replacement for each child's command."""
    from hydra.core.hydra_config import HydraConfig
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies.launchers import subprocess_script

    started = []
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(subprocess_script.subprocess, "Popen", lambda command, env, cwd: started.append((command, cwd)))
    original = subprocess_script._hydra_subprocess_cmd
    saved = dict(os.environ)
    try:
        with compat.hydra_ddp_child_command(lambda rank: ([f"child{rank}"], "/job")):
            launcher = subprocess_script._SubprocessScriptLauncher(LightningEnvironment(), num_processes=3, num_nodes=1)
            launcher._call_children_scripts()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert started == [(["child1"], "/job"), (["child2"], "/job")]
    assert subprocess_script._hydra_subprocess_cmd is original  # put back when the block ends


def test_hydra_ddp_child_command_is_put_back_after_an_error():
    from lightning.pytorch.strategies.launchers import subprocess_script

    original = subprocess_script._hydra_subprocess_cmd
    with pytest.raises(KeyError), compat.hydra_ddp_child_command(lambda rank: ([], "")):
        raise KeyError("x")
    assert subprocess_script._hydra_subprocess_cmd is original


def test_epoch_bar_describes_the_epochs_from_one_where_lightning_s_bar_makes_its_text():
    import inspect

    from lightning.pytorch.callbacks import RichProgressBar

    # Lightning's bar makes its epoch's text in _get_train_description, when each epoch starts.
    assert "self._get_train_description(trainer.current_epoch)" in inspect.getsource(
        RichProgressBar.on_train_epoch_start
    )
    assert list(inspect.signature(RichProgressBar._get_train_description).parameters) == ["self", "current_epoch"]
    for max_epochs, expected in ((3, "Epoch 1/3"), (-1, "Epoch 1")):  # -1: no end
        bar = compat.EpochBar()
        bar.setup(L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False), nn.Linear(1, 1), "fit")
        assert bar._get_train_description(0).strip() == expected
