"""The entry point: compose the config, check it, build data/model/trainer, fit, record."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from cifar_lab.errors import EXIT_USER_ERROR, RunStopped, UserError, print_user_error
from cifar_lab.files import write_json_atomic
from cifar_lab.schema import validate
from cifar_lab.sweep import ddp_job_scope

if TYPE_CHECKING:  # torch and Lightning load inside run(), so that config errors are reported at once
    import lightning as L

    from cifar_lab.recording import Recorder

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("cifar_lab")


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but a UserError raised by the target is passed on unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config flattened to dotted keys with scalar values, for TensorBoard's HPARAMS tab."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def build_trainer(cfg: DictConfig, run_dir: Path, recorder: Recorder) -> L.Trainer:
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from cifar_lab import resilience

    if cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("trainer=gpu (accelerator gpu) needs a CUDA GPU, and this machine has none. Use "
                        "trainer=default (picks what is there) or trainer=cpu.")
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/acc", mode="max",
        save_top_k=1, save_last=True, auto_insert_metric_name=False, save_on_train_epoch_end=True,
    )
    # The recorder writes an epoch's row before the checkpoint marks the epoch done, so a resume never misses a row.
    callbacks: list[L.Callback] = [recorder, checkpoints, *resilience.callbacks()]
    show_bar = bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()
    if show_bar:
        callbacks.append(RichProgressBar())
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(run_dir),
                       enable_progress_bar=show_bar, enable_model_summary=False, plugins=resilience.plugins())


def setup_speed(cfg: DictConfig, trainer: L.Trainer, datamodule: Any, module: Any) -> None:
    """Resolve data.loader and the ``speed`` options; switch the module to the fast path if chosen."""
    import torch

    from cifar_lab import fast

    speed = OmegaConf.to_container(cfg.speed)
    loader, options = fast.resolve(speed, cfg.data.loader, trainer.strategy.root_device, trainer.world_size,
                                   str(trainer.precision))
    datamodule.loader = loader
    if options is not None:
        module.enable_fast_path(options)
        datamodule.steps_per_call = options.steps_per_call
    if speed.get("channels_last"):
        module.net.to(memory_format=torch.channels_last)
        datamodule.channels_last = True
    if speed.get("compile"):
        module.net = torch.compile(module.net)
    module.speed_info = {"loader": loader, "steps_per_call": options.steps_per_call if options else 1,
                         "cuda_graph": bool(options and options.cuda_graph), "channels_last": bool(speed.get("channels_last")),
                         "compile": bool(speed.get("compile")), "precision": str(trainer.precision)}


def build_parts(cfg: DictConfig) -> tuple[Any, Any]:
    """Seed, then the datamodule (data loaded) and the LightningModule, as the config says."""
    import lightning as L
    import torch

    from cifar_lab.task import ClassifierModule

    for name in ("lightning.pytorch", "lightning.fabric"):  # Hydra's handlers already print these records
        logging.getLogger(name).handlers.clear()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls/convs on Ampere and later
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    n = datamodule.num_classes  # an image folder may have any number of classes
    module = ClassifierModule(instantiate(cfg.model, num_classes=n), instantiate(cfg.optimizer), l2=cfg.l2, num_classes=n)
    return datamodule, module


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one configuration; returns the final summary. Raises UserError for user mistakes."""
    synthetic = cfg.data.source == "synthetic"
    summary: dict[str, Any] = {
        "status": "running", "experiment": cfg.name, "params": None, "run_dir": str(run_dir),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "data": {"source": cfg.data.source, "root": cfg.data.get("root"), "synthetic": synthetic},
    }
    try:
        validate(cfg)  # before the heavy imports, so that a bad value is reported at once
    except UserError as err:
        if not (cfg.get("resume") and (run_dir / "summary.json").exists()):  # keep a resumed run's record
            write_json_atomic(run_dir / "summary.json", {**summary, "status": "failed", "error": str(err)})
        raise

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from cifar_lab import resilience
    from cifar_lab.models import count_params
    from cifar_lab.recording import Recorder, versions

    ckpt_path = resilience.resume_path(cfg, run_dir, summary["overrides"])  # before any file is rewritten
    summary["versions"] = versions()
    recorder = Recorder(run_dir, summary, flat_hparams(cfg), synthetic)
    try:
        if synthetic:
            log.warning("SYNTHETIC DATA: this run trains on generated images, not CIFAR-10. Its numbers are for testing only.")
        datamodule, module = build_parts(cfg)
        summary["params"] = count_params(module.net)
        trainer = build_trainer(cfg, run_dir, recorder)
        setup_speed(cfg, trainer, datamodule, module)
        summary["data"].update(datamodule.describe())
        summary["speed"] = module.speed_info
        log.info("%s: %s parameters, %s train / %s val images", cfg.name, f"{summary['params']:,}",
                 summary["data"]["n_train"], summary["data"]["n_val"])
        if ckpt_path:
            summary["resumed_from"] = ckpt_path
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.data.get("val_from_train"):
            (test,) = trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False)
            summary["test"] = {"loss": test["test/loss"], "acc": test["test/acc"]}
        recorder.finish("completed", trainer=trainer)
    except UserError as err:
        recorder.finish("failed", error=str(err))
        raise
    except SIGTERMException:  # Lightning stopped after the current step; Recorder.on_exception wrote the status
        raise resilience.interrupted(run_dir) from None
    except Exception as err:
        if summary.get("status") == "running":
            recorder.finish("failed", error=f"{type(err).__name__}: {err}")
        raise
    if recorder.is_writer():
        print_final(summary)
    return summary


def print_final(summary: dict[str, Any]) -> None:
    final, best = summary.get("final") or {}, summary.get("best") or {}
    tag = " [SYNTHETIC DATA]" if summary["data"]["synthetic"] else ""
    print(
        f"\n{summary['experiment']}{tag}: {summary['status']} after {summary['epochs']} epochs in "
        f"{summary['train_seconds']:.1f} s ({summary['seconds_per_epoch']} s/epoch) on {summary.get('device')}\n"
        f"  params {summary['params']:,} | final val acc {100 * final.get('val_acc', float('nan')):.2f}% | "
        f"best val acc {100 * best.get('val_acc', float('nan')):.2f}% (epoch {best.get('epoch')}) | "
        f"final train/val loss {final.get('train_loss', float('nan')):.4f} / {final.get('val_loss', float('nan')):.4f}\n"
        f"  outputs: {summary['run_dir']}",
        flush=True,
    )


def may_be_distributed(cfg: DictConfig) -> bool:
    """Whether Lightning may launch several processes for this trainer config."""
    t = cfg.trainer
    return ("ddp" in str(t.get("strategy", "")) or str(t.get("devices", 1)) not in ("1", "[0]")
            or int(t.get("num_nodes", 1) or 1) > 1)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's task: best val acc (a fraction) for sweepers; in a multirun a failed job returns None."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        # The scope imports Lightning, so a single-device run skips it (and reports config errors at once).
        with ddp_job_scope() if may_be_distributed(cfg) else contextlib.nullcontext():
            summary = run(cfg, run_dir)
    except UserError as err:
        print_user_error(err)
        if multirun:
            return None  # summary.json says failed; the sweep goes on and its summary lists the job
        sys.exit(EXIT_USER_ERROR)
    except RunStopped as err:
        print_user_error(err)
        if err.status == "diverged" and multirun:
            return None  # a diverged sweep point is a result (summary.json says so); a signal stops the process
        sys.exit(err.exit_code)
    except Exception:
        if not multirun:
            raise
        log.exception("job failed; the sweep goes on")  # a raise here would end the sweep (Hydra's sweepers re-raise)
        return None
    best = summary.get("best") or {}
    return best.get("val_acc")


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
