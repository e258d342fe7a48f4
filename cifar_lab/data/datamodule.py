"""One LightningDataModule for every source: arrays in, normalised batches out.

Two loaders serve the same batches in the same order (both use :class:`EpochBatchSampler`):
``classic`` is a torch DataLoader (workers, pin_memory); ``gpu`` keeps each split resident on the
training device as uint8 and slices batches there, with no workers and no per-image Python.
Normalisation (and optional flip/crop augmentation) always runs on the device, after transfer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cifar_lab.data import cache, sources
from cifar_lab.data.sources import Arrays, Split
from cifar_lab.errors import UserError

log = logging.getLogger(__name__)

CIFAR_MEAN = (0.4915, 0.4823, 0.4468)  # the seed's per-channel mean
CIFAR_STD = (0.2470, 0.2435, 0.2616)  # and std
LOADERS = ("auto", "classic", "gpu")
SOURCES = ("cifar10", "image_folder", "synthetic")


class EpochBatchSampler(Sampler[torch.Tensor]):
    """Yields index tensors, one per batch; the order depends only on (seed, epoch).

    Restarting at any epoch therefore reproduces the data order. Under DDP each rank takes
    ``batch[rank::world_size]``, so the global batch stays ``batch_size``.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def batches(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        """Cut ``order`` (on any device) into this rank's batches."""
        for batch in order.split(self.batch_size):
            if self.drop_last and len(batch) < self.batch_size:
                break
            yield batch[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches(self.order())

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


class BatchDataset(Dataset):
    """Indexed by a whole batch of indices at once (used with ``batch_size=None``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


class ResidentLoader:
    """The ``gpu`` loader: a split resident on ``device`` as uint8, sliced by the shared sampler.

    With ``chunk=K`` it yields lists of K batches, one list per Lightning step (the fast path).
    The permutation is drawn on the CPU from (seed, epoch), as for the classic loader, so both
    loaders serve identical batches; only its 8-byte-per-image index tensor crosses to the device.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sampler: EpochBatchSampler, device: torch.device,
                 chunk: int | None = None) -> None:
        self.x, self.y = x.to(device), y.to(device)
        self.sampler, self.device, self.chunk = sampler, device, chunk
        self.batch_sampler = None  # read by Lightning, which inspects loaders like DataLoaders

    def __len__(self) -> int:
        return len(self.sampler) if self.chunk is None else -(-len(self.sampler) // self.chunk)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.sampler.order().to(self.device, non_blocking=True)
        for idx in self.sampler.batches(order):
            yield self.x[idx], self.y[idx]

    def __iter__(self):
        if self.chunk is None:
            return self.batches()
        from cifar_lab.fast import chunk_batches

        return chunk_batches(self.batches(), self.chunk)


def available_cpus() -> int:
    """CPUs this process may use (affinity where the OS has it, e.g. not on macOS)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def to_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 32, 32, 3) uint8 -> contiguous (N, 3, 32, 32) uint8, plus int64 labels."""
    x = torch.from_numpy(np.ascontiguousarray(split.x)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.asarray(split.y, dtype=np.int64))


class CifarDataModule(L.LightningDataModule):
    """Loads any source as uint8 arrays (cached), splits off validation, and serves batches."""

    def __init__(
        self,
        source: str = "cifar10",
        root: str | None = "data",
        cache_dir: str | None = "data/cache",
        batch_size: int = 1024,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        val_from_train: int = 0,
        loader: str = "auto",
        augment: bool = False,
        drop_last: bool = False,
        resize: bool = False,
        download: bool = True,
        n_train: int = 5000,
        n_test: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"unknown data source {source!r}. Valid sources: {', '.join(SOURCES)}.")
        if loader not in LOADERS:
            raise UserError(f"unknown data.loader {loader!r}. Valid loaders: {', '.join(LOADERS)}.")
        self.source, self.root, self.cache_dir = source, root, cache_dir
        self.batch_size, self.val_from_train, self.loader, self.augment = batch_size, val_from_train, loader, augment
        self.num_workers = available_cpus() if num_workers is None else num_workers
        self.pin_memory, self.persistent_workers, self.drop_last = pin_memory, persistent_workers, drop_last
        self.resize, self.download, self.n_train, self.n_test, self.seed = resize, download, n_train, n_test, seed
        self.arrays: Arrays | None = None
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.setup_seconds = 0.0
        self.cache_hit = False
        self.steps_per_call: int | None = None  # set by the fast path: batches per Lightning step
        self.channels_last = False
        self.mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1) * 255

    # ------------------------------------------------------------------ arrays

    def prepare_data(self) -> None:
        if self.source == "cifar10":
            sources.ensure_cifar10(Path(self.root or "data"), self.download)

    def load_arrays(self) -> Arrays:
        """The source's arrays, from the cache where the inputs are unchanged."""
        if self.source == "synthetic":
            return sources.make_synthetic(self.n_train, self.n_test, self.seed)
        root = Path(self.root or "data").expanduser()
        if self.source == "cifar10":
            sources.ensure_cifar10(root, self.download)
            files = sources.cifar10_files(root)
            build = lambda: sources.load_cifar10(root)  # noqa: E731
            options: dict[str, object] = {"source": "cifar10"}
        else:
            scan = sources.scan_image_folder(root)  # listed once: it keys the cache and drives the decoding
            files = [p for split in scan[1].values() for p, _ in split]
            build = lambda: decode_with_progress(root, self.resize, scan)  # noqa: E731
            options = {"source": "image_folder", "root": str(root.resolve()), "resize": self.resize}
        key = cache.fingerprint(files, options)
        if self.cache_dir is None:
            return build()
        arrays, self.cache_hit = cache.cached(Path(self.cache_dir).expanduser(), self.source, key, build)
        return arrays

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        import time

        t0 = time.perf_counter()
        arrays = self.load_arrays()
        train, val = arrays.train, arrays.test
        if self.val_from_train:
            if not 0 < self.val_from_train < len(train):
                raise UserError(f"data.val_from_train={self.val_from_train} must be between 1 and {len(train) - 1} (the training set has {len(train)} images).")
            perm = np.random.default_rng(self.seed).permutation(len(train))
            held, kept = perm[: self.val_from_train], perm[self.val_from_train :]
            train, val = Split(train.x[kept], train.y[kept]), Split(train.x[held], train.y[held])
        self.arrays = arrays
        self.tensors = {"train": to_tensors(train), "val": to_tensors(val), "test": to_tensors(arrays.test)}
        self.setup_seconds = time.perf_counter() - t0

    @property
    def num_classes(self) -> int:
        return len(self.arrays.classes) if self.arrays else 10

    def describe(self) -> dict[str, object]:
        """What the run's outputs record about the data."""
        a = self.arrays
        return {
            "source": self.source,
            "root": a.root if a else self.root,
            "synthetic": bool(a.synthetic) if a else self.source == "synthetic",
            "n_train": len(self.tensors["train"][1]) if self.tensors else None,
            "n_val": len(self.tensors["val"][1]) if self.tensors else None,
            "val_from_train": self.val_from_train,
            "loader": self.resolved_loader(),
            "drop_last": self.drop_last,
            "augment": self.augment,
            "batch_size": self.batch_size,
            "setup_seconds": round(self.setup_seconds, 3),
            "cache_hit": self.cache_hit,
        }

    # ------------------------------------------------------------------ loaders

    def device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def resolved_loader(self) -> str:
        """The entry point resolves ``auto`` beforehand (cifar_lab.fast.resolve); this covers direct use."""
        if self.loader != "auto":
            return self.loader
        from cifar_lab.fast import auto_loader

        return auto_loader(self.device(), self.trainer.world_size if self.trainer is not None else 1)

    def make_loader(self, split: str, shuffle: bool):
        x, y = self.tensors[split]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = EpochBatchSampler(len(y), self.batch_size, shuffle, self.seed, self.drop_last and shuffle, rank, world)
        if self.trainer is not None:
            # A resumed fit fetches its first batch before Lightning calls set_epoch (Lightning issue #21938).
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        if self.resolved_loader() == "gpu":
            return ResidentLoader(x, y, sampler, self.device(), self.steps_per_call)
        pin = self.device().type == "cuda" if self.pin_memory is None else self.pin_memory
        workers = self.num_workers
        return DataLoader(
            BatchDataset(x, y), batch_size=None, sampler=sampler, num_workers=workers, pin_memory=pin,
            persistent_workers=self.persistent_workers and workers > 0,
            # Its own generator: a DataLoader draws a worker seed per epoch, which would otherwise
            # consume the global RNG that dropout uses (and make the two loaders differ).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self):
        return self.make_loader("train", shuffle=True)

    def val_dataloader(self):
        return self.make_loader("val", shuffle=False)

    def test_dataloader(self):
        return self.make_loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        augment = self.augment and self.trainer is not None and self.trainer.training
        if self.mean.device != x_device(x):  # once: a per-batch CPU->GPU copy would sync the host
            self.mean, self.std = self.mean.to(x_device(x)), self.std.to(x_device(x))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        prepare = lambda b: normalize(b, self.mean, self.std, augment).contiguous(memory_format=fmt)  # noqa: E731
        if isinstance(x, list):  # a fast-path chunk of batches
            return LazyBatches(x, prepare), y
        return prepare(x), y


class LazyBatches(Sequence):
    """A chunk's batches, each normalised when it is used: one float batch in memory at a time, and
    augmentation draws its random numbers between the steps exactly as on the classic path."""

    def __init__(self, raw: list[torch.Tensor], prepare: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.raw, self.prepare = raw, prepare

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        return self.prepare(self.raw[i])


def x_device(x: torch.Tensor | list[torch.Tensor]) -> torch.device:
    return (x[0] if isinstance(x, list) else x).device


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, augment: bool = False) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) -> float32 normalised with the seed's mean/std (given on x's device)."""
    x = x.float()
    if augment:
        x = flip_crop(x)
    return (x - mean) / std


def flip_crop(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random crop after ``pad``-pixel reflect padding, batched on x's device."""
    b, c, h, w = x.shape
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")  # (B, C, H+2p, W+2p)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), device=x.device)
    rows = (dy.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    cols = (dx.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def decode_with_progress(root: Path, resize: bool, scan) -> Arrays:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("decode", total=sum(len(items) for items in scan[1].values()))
        return sources.load_image_folder(root, resize, progress=lambda n: bar.advance(task, n), scan=scan)
