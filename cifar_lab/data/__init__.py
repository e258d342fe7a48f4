"""Data: sources -> uint8 arrays (cached) -> one LightningDataModule."""

from cifar_lab.data.datamodule import CIFAR_MEAN, CIFAR_STD, CifarDataModule

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "CifarDataModule"]
