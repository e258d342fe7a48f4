"""Record a run's epochs: metrics.csv, TensorBoard scalars and hparams, curves, the console line.

Everything lands in the Hydra run directory. The epochs also go to the run's :class:`RunSummary`
(the owner of summary.json), which is rewritten atomically every epoch, so a run that dies still
says how far it got.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cifar_lab import compat
from cifar_lab.files import read_metrics, significant, write_metrics
from cifar_lab.plots import plot_curves
from cifar_lab.resilience import epoch_complete
from cifar_lab.summary import RunSummary, aggregate, is_rank_zero

log = logging.getLogger("cifar_lab")
COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc")  # metrics.csv's, logged as "train/loss" ...


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    import hydra
    import torchvision

    import cifar_lab

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": L.__version__,
        "hydra": hydra.__version__,
        "cifar_lab": cifar_lab.__version__,
        "cuda": torch.version.cuda or "none",
    }


# TensorBoard's HPARAMS tab: a short set a student compares runs by, as (column, dotted config key, text or
# number), in the order shown. TensorBoard sorts the columns by name and ticks the first five, so each is named
# with its place ("01_experiment") and titled plainly ("experiment"). The full config: .hydra/config.yaml,
# tb/hparams.yaml.
HPARAMS = (
    ("experiment", "name", str),
    ("model", "model.name", str),
    ("lr", "optimizer.lr", float),
    ("dropout", "model.dropout", float),
    ("l2", "l2", float),
    ("weight_decay", "optimizer.weight_decay", float),
    ("momentum", "optimizer.momentum", float),
    ("batch_size", "data.batch_size", float),
    ("epochs", "trainer.max_epochs", float),
    ("seed", "seed", float),
    ("precision", "trainer.precision", str),  # 32-true, bf16-mixed, or a bare 32: text in every run
)
# The HPARAMS tab's metric columns: the last point of scalars the run logs anyway (so no scalar group repeats
# them), as (tag, column title). The last val/acc_best is the best val acc.
HPARAM_METRICS = (
    ("val/acc", "final val acc"),
    ("val/acc_best", "best val acc"),
    ("val/loss", "final val loss"),
    ("train/acc", "final train acc"),
    ("train/loss", "final train loss"),
)


def curated_hparams(flat: dict[str, Any]) -> dict[str, str | float]:
    """The :data:`HPARAMS` columns, by name ("01_experiment"), from a run's flattened config
    (``lifecycle.flat_hparams``); a key the config lacks (AdamW has no momentum, cnn no dropout) is left out:
    its cell stays empty."""
    out: dict[str, str | float] = {}
    for place, (column, key, kind) in enumerate(HPARAMS, 1):
        value = flat.get(key)
        if value is not None and (kind is str or (isinstance(value, (int, float)) and not isinstance(value, bool))):
            out[f"{place:02d}_{column}"] = kind(value)
    return out


def log_hparams(logger: Any, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """The run's config and final metrics, in whatever logger the run uses; TensorBoard gets the curated
    :data:`HPARAMS` with the :data:`HPARAM_METRICS` columns (the full config in tb/hparams.yaml)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if not isinstance(logger, TensorBoardLogger):
        logger.log_hyperparams(hparams)
        logger.log_metrics(metrics, step=step)
        return
    logger.hparams.update(hparams)  # tb/hparams.yaml
    for summary in tensorboard_hparams(curated_hparams(hparams)):
        compat.tensorboard_file_writer(logger).add_summary(summary, step)


def tensorboard_hparams(hparams: dict[str, Any]) -> list[Any]:
    """The HPARAMS tab's three summaries (torch's ``hparams()``), its metric columns titled as in
    :data:`HPARAM_METRICS`; their values are the last points of those scalars, which the run logs itself."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams as torch_hparams

    titles = dict(HPARAM_METRICS)
    summaries = torch_hparams(hparams, dict.fromkeys(titles, 0.0))  # the values: only their names are used
    for summary in summaries:
        for value in summary.value:
            data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
            if data.HasField("experiment"):
                # Every run declares all the columns: TensorBoard takes them from whichever run it reads first.
                kinds = {str: api_pb2.DATA_TYPE_STRING, float: api_pb2.DATA_TYPE_FLOAT64}
                data.experiment.ClearField("hparam_infos")
                for place, (title, _, kind) in enumerate(HPARAMS, 1):
                    data.experiment.hparam_infos.add(name=f"{place:02d}_{title}", display_name=title, type=kinds[kind])
                for info in data.experiment.metric_infos:
                    info.display_name = titles[info.name.tag]
                value.metadata.plugin_data.content = data.SerializeToString()
    return list(summaries)


def purge_tensorboard(logger: Any, step: int) -> None:
    """Hide the TensorBoard points at ``step`` and later that an earlier process of this run wrote (a
    killed run's epochs past its checkpoint, trained again now), as metrics.csv drops its rows: the marker
    ``SummaryWriter(purge_step=...)`` writes, a ``SessionLog.START`` event at that step, which
    TensorBoard's reader honours for the event files before it."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    if isinstance(logger, TensorBoardLogger):
        marker = Event(step=step, session_log=SessionLog(status=SessionLog.START))
        compat.tensorboard_file_writer(logger).add_event(marker)


def seed_line(row: dict[str, float]) -> str:
    """One console line per epoch, in the seed's own format."""
    return (
        f"Epoch: {row['epoch']}, Training Loss: {row['train_loss']:.4f}, Validation Loss: {row['val_loss']:.4f}, "
        f"Train Accuracy: {100 * row['train_acc']:.2f}%, Validation Accuracy: {100 * row['val_acc']:.2f}%"
    )


class EpochWriter:
    """One run's epoch records, with no trainer: metrics.csv, the logger's scalars, the console line
    and the summary's rows each epoch; the curves, TensorBoard hparams and the logger's finish at the end.

    The solo :class:`Recorder` callback feeds it its trainer's epoch metrics; a pack feeds one per
    member with that member's (:mod:`cifar_lab.packing.record`). ``logger`` is the run's Lightning
    logger (None: none).
    """

    def __init__(
        self, run_dir: Path, summary: RunSummary, hparams: dict[str, Any], synthetic: bool, label: str = ""
    ) -> None:
        self.run_dir = Path(run_dir)
        self.label = label  # before each console line: which member of a pack it is ("" for a solo run)
        self.summary = summary
        self.hparams = hparams
        self.synthetic = synthetic
        self.logger: Any = None
        self.csv_path = self.run_dir / "metrics.csv"
        self.rows = read_metrics(self.csv_path)  # a resumed run's earlier epochs; trimmed in start()
        self.summary.set_rows(self.rows)  # from the start: a resume that stops before training keeps its epochs

    def start(self, done: int, data: dict[str, Any] | None) -> None:
        """Training starts after ``done`` whole epochs (a resume's checkpoint): later rows are redone, so
        they go; ``data``: the datamodule's description (None: none)."""
        self.rows = [r for r in self.rows if r["epoch"] <= done]
        if is_rank_zero():  # under DDP the other ranks must not touch the run directory
            write_metrics(self.csv_path, self.rows)
            purge_tensorboard(self.logger, done + 1)
        data = {**self.summary.data.get("data", {}), **(data or {})}
        self.summary.update(data=data, **aggregate(self.rows))
        if is_rank_zero():
            log.info(
                "%s: %s parameters, %s train / %s val images",
                self.summary.data.get("experiment"),
                f"{self.summary.data.get('params') or 0:,}",
                data.get("n_train"),
                data.get("n_val"),
            )

    def write(self, metrics: dict[str, Any], epoch: int, seconds: float, lr: float | None) -> None:
        """Epoch ``epoch``'s row from its metrics (named as the module logs them); ``lr`` the one it trained with
        (TensorBoard's ``lr``; None at a constant learning rate: nothing to plot)."""
        row = {"epoch": epoch, **{k: significant(float(metrics[k.replace("_", "/")])) for k in COLUMNS}}
        row["seconds"] = round(seconds, 4)
        self.rows.append(row)
        if is_rank_zero():
            write_metrics(self.csv_path, self.rows)  # the whole file, atomically: a row is never half written
            if self.logger is not None:
                scalars = {k.replace("_", "/"): row[k] for k in COLUMNS}
                scalars["val/acc_best"] = max(r["val_acc"] for r in self.rows)
                # TensorBoard opens its groups by name: train/ and val/ first, the clock after them.
                scalars["wallclock/epoch_seconds"] = row["seconds"]
                if lr is not None:
                    scalars["train/lr"] = lr
                self.logger.log_metrics(scalars, step=epoch)
                self.logger.save()  # flushed before the epoch's checkpoint: a kill after it cannot lose the point
            print(self.label + seed_line(row), flush=True)
        self.summary.set_rows(self.rows)

    def close(self) -> None:
        """After the summary has its final status: curves and TensorBoard hparams (optional: an OS error
        here is reported as a warning and does not change the run's outcome)."""
        if not is_rank_zero() or not self.rows:
            return
        try:
            plot_curves(self.rows, self.run_dir, str(self.summary.data.get("experiment")), self.synthetic)
            if self.logger is not None:
                agg = aggregate(self.rows)
                metrics = {f"hparams/{k}": v for k, v in agg["final"].items()}
                metrics["hparams/val_acc_best"] = agg["best"]["val_acc"]
                log_hparams(self.logger, self.hparams, metrics, step=int(agg["epochs"]))
                # Lightning's loggers call a finished run "success" (TensorBoard then writes hparams.yaml).
                self.logger.finalize("success" if self.summary.status == "completed" else self.summary.status)
        except OSError as err:
            log.warning("could not write the curves or TensorBoard hparams of %s: %s", self.run_dir, err)


class Recorder(compat.AfterModuleCallback):
    """A solo run's :class:`EpochWriter`, fed at the trainer's hooks.

    Its ``on_train_epoch_end`` runs after the LightningModule's, where the epoch's metrics are computed
    (``compat.AfterModuleCallback``); it comes before ModelCheckpoint in the
    callback list, so an epoch's row is written before its checkpoint.
    """

    def __init__(
        self, run_dir: Path, summary: RunSummary, hparams: dict[str, Any], synthetic: bool, label: str = ""
    ) -> None:
        self.writer = EpochWriter(run_dir, summary, hparams, synthetic, label)
        self.summary = summary
        self.epoch_t0 = 0.0
        self.epoch_lr: float | None = None
        self.exception: BaseException | None = None  # what stopped fit, as Lightning saw it

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.writer.logger = trainer.logger
        self.summary.update(device=device_name(trainer.strategy.root_device))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only now is a resumed checkpoint's epoch restored (its processed epochs: with max_steps set,
        # current_epoch lags one behind until Lightning has replayed the checkpoint's epoch end).
        data = trainer.datamodule.describe() if trainer.datamodule is not None else None  # set up: sizes known
        self.writer.start(compat.epoch_index(trainer), data)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_t0 = time.perf_counter()
        # The lr the epoch trains with, read before its first step (as LearningRateMonitor's per-epoch value; at
        # the epoch's end a schedule has already moved it); a constant one (no schedule) is not logged.
        self.epoch_lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.lr_scheduler_configs else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = trainer.callback_metrics
        if "val/acc" not in m or "train/loss" not in m or not epoch_complete(trainer):
            return
        self.writer.write(m, trainer.current_epoch + 1, time.perf_counter() - self.epoch_t0, self.epoch_lr)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.exception = exception

    def close(self, trainer: L.Trainer | None) -> None:
        """The writer's :meth:`EpochWriter.close`, with the trainer's logger (None: no trainer was built)."""
        self.writer.logger = trainer.logger if trainer is not None else None
        self.writer.close()
