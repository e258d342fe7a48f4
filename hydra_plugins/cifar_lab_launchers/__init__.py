"""cifar_lab's Hydra launchers (see launchers.py)."""
