"""Data: sources -> uint8 arrays (cached) -> loaders -> device transforms, behind one thin DataModule."""

from cifar_lab.data.datamodule import CifarDataModule
from cifar_lab.data.sources import Cifar10, ImageFolder, Source, Synthetic
from cifar_lab.data.transforms import CIFAR_MEAN, CIFAR_STD

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "Cifar10", "CifarDataModule", "ImageFolder", "Source", "Synthetic"]
