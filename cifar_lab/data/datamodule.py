"""The LightningDataModule: a source's arrays in, batches out, as the speed plan says.

It owns the split into train/val/test tensors and hands them to one of the two loaders
(:mod:`cifar_lab.data.loaders`); normalisation and augmentation run on the device
(:mod:`cifar_lab.data.transforms`). The source does the reading; the plan picks the loader.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import numpy as np
import torch

from cifar_lab import compat
from cifar_lab.data.arrays import Arrays, Split
from cifar_lab.data.loaders import EpochBatchSampler, ResidentLoader, available_cpus, classic_loader, to_tensors
from cifar_lab.data.sources import Source
from cifar_lab.data.transforms import DeviceTransform, LazyBatches
from cifar_lab.errors import UserError
from cifar_lab.plan import SpeedPlan


class CifarDataModule(L.LightningDataModule):
    """Splits a source's arrays (holding out validation images if asked) and serves batches."""

    def __init__(
        self,
        source: Source,
        batch_size: int = 1024,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        val_from_train: int = 0,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        plan: SpeedPlan | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.batch_size, self.val_from_train = batch_size, val_from_train
        self.augment, self.drop_last = augment, drop_last
        self.num_workers = available_cpus() if num_workers is None else num_workers
        self.pin_memory, self.persistent_workers, self.seed = pin_memory, persistent_workers, seed
        self.plan = plan or SpeedPlan()
        self.transform = DeviceTransform(self.plan.channels_last, self.plan.input_dtype)
        self.arrays: Arrays | None = None
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.setup_seconds = 0.0
        self.cache_hit = False
        self.fingerprint: str | None = None  # of the input data, stored in checkpoints for resume

    # ------------------------------------------------------------------ arrays

    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        t0 = time.perf_counter()
        loaded = self.source.load()
        arrays, self.cache_hit, self.fingerprint = loaded.arrays, loaded.cache_hit, loaded.fingerprint
        train, val = arrays.train, arrays.test
        if self.val_from_train:
            if not 0 < self.val_from_train < len(train):
                raise UserError(
                    f"data.val_from_train={self.val_from_train} must be between 1 and {len(train) - 1} "
                    f"(the training set has {len(train)} images)."
                )
            perm = np.random.default_rng(self.seed).permutation(len(train))
            held, kept = perm[: self.val_from_train], perm[self.val_from_train :]
            train, val = Split(train.x[kept], train.y[kept]), Split(train.x[held], train.y[held])
        if self.drop_last and self.batch_size > len(train):
            raise UserError(
                f"data.drop_last=true with data.batch_size={self.batch_size} and {len(train)} training images: every "
                "batch would be dropped and nothing trained. Use a smaller batch or data.drop_last=false."
            )
        self.arrays = arrays
        self.tensors = {"train": to_tensors(train), "val": to_tensors(val), "test": to_tensors(arrays.test)}
        self.setup_seconds = time.perf_counter() - t0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def classes(self) -> list[str]:
        return list(self.arrays.classes) if self.arrays else self.source.classes()

    def describe(self) -> dict[str, Any]:
        """What the run's summary records about the data (after setup)."""
        a = self.arrays
        return {
            **self.source.describe(),
            "root": a.root if a else self.source.describe()["root"],
            "n_train": len(self.tensors["train"][1]) if self.tensors else None,
            "n_val": len(self.tensors["val"][1]) if self.tensors else None,
            "val_from_train": self.val_from_train,
            "loader": self.plan.loader,
            "drop_last": self.drop_last,
            "augment": self.augment,
            "batch_size": self.batch_size,
            "setup_seconds": round(self.setup_seconds, 3),
            "cache_hit": self.cache_hit,
        }

    # ------------------------------------------------------------------ loaders

    def device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device(self.plan.device)

    def make_loader(self, split: str, shuffle: bool) -> Any:
        x, y = self.tensors[split]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = EpochBatchSampler(
            len(y), self.batch_size, shuffle, self.seed, self.drop_last and shuffle, rank, world
        )
        return self.serve(x, y, sampler)

    def serve(self, x: torch.Tensor, y: torch.Tensor, sampler: Any) -> Any:
        """The plan's loader over ``x[idx], y[idx]`` for each index tensor ``sampler`` yields (a pack's too)."""
        if self.trainer is not None:
            # A resumed fit fetches its first batch before Lightning calls set_epoch (Lightning issue #21938).
            sampler.set_epoch(compat.epoch_index(self.trainer))
        if self.plan.fast:
            return ResidentLoader(x, y, sampler, self.device(), self.plan.steps_per_call)
        pin = self.device().type == "cuda" if self.pin_memory is None else self.pin_memory
        return classic_loader(x, y, sampler, self.num_workers, pin, self.persistent_workers, self.seed)

    def train_dataloader(self) -> Any:
        return self.make_loader("train", shuffle=True)

    def val_dataloader(self) -> Any:
        return self.make_loader("val", shuffle=False)

    def test_dataloader(self) -> Any:
        return self.make_loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        augment = self.augment and self.trainer is not None and self.trainer.training
        if self.plan.fast:  # a chunk of K batches, each transformed when its step uses it
            return LazyBatches(x, lambda b: self.transform(b, augment)), y
        return self.transform(x, augment), y
