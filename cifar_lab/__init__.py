"""cifar_lab: train, sweep and compare CIFAR-10 classifiers (Lightning + Hydra)."""

__version__ = "0.1.0"
