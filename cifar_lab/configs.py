"""Where Hydra's ``conf/`` is, for every way cifar_lab is run, and a compose helper.

``conf/`` sits at the top of the repository and is shipped inside the wheel as ``cifar_lab/conf``
(pyproject maps one onto the other). An installed wheel finds it beside this file; an editable
install or a plain checkout on ``PYTHONPATH`` finds it one level up. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

_HERE = Path(__file__).resolve().parent


def find_conf_dir() -> Path:
    """The folder holding ``config.yaml``: ``cifar_lab/conf`` in a wheel, else the checkout's ``conf/``."""
    for candidate in (_HERE / "conf", _HERE.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"cifar_lab's Hydra configs were not found in {_HERE / 'conf'} or {_HERE.parent / 'conf'}")


CONF_DIR = str(find_conf_dir())


def flatten(node: Any, prefix: str = "", private: bool = True) -> dict[str, Any]:
    """A nested config (plain dicts, as ``OmegaConf.to_container`` gives) as dotted keys -> leaf values; an
    empty node has none. ``private=False`` leaves out ``_``-keys (``_target_``) and what is below them."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() if private or not str(key).startswith("_")
            for k, v in flatten(value, f"{prefix}{key}.", private).items()}  # fmt: skip


def compose(*overrides: str, config_name: str = "config", hydra_node: bool = False) -> Any:
    """The composed config for ``overrides``, as ``python -m cifar_lab <overrides>`` would see it (``hydra_node``:
    with Hydra's own ``hydra`` node). Inside a Hydra job it composes with the job's Hydra (same search path)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # a second initialize would raise
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra_node)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra_node)


def group_options(groups: list[str]) -> dict[str, list[str]]:
    """Each config group's options (``experiment``, ``hydra/launcher``: the plugins' too), as Hydra lists them."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return {group: loader.get_group_options(group) for group in groups}


# What a composed run is called when no experiment names it: the model and the regularisers in force, in the
# order of conf/reg/ (``resnet+dropout``). A key's value turns its regulariser on, so ``model.dropout=0.2``
# counts as dropout and ``reg=dropout model.dropout=0`` does not; AdamW's own weight decay counts too.
REGULARISERS = (("l2", "l2"), ("weight_decay", "optimizer.weight_decay"), ("dropout", "model.dropout"),
                ("batchnorm", "model.batchnorm"))  # fmt: skip


def in_force(value: Any) -> bool:
    """Whether a regulariser's value turns it on: true, or a number above 0."""
    return value is True or (not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0)


def composed_name(root: Any) -> str:
    """``model.name`` plus ``+<regulariser>`` for each regulariser in force (``REGULARISERS``)."""
    value = lambda key: OmegaConf.select(root, key, default=None, throw_on_missing=False)  # noqa: E731
    on = [reg for reg, key in REGULARISERS if in_force(value(key))]
    return "+".join([str(OmegaConf.select(root, "model.name", default="model")), *on])


# conf/config.yaml: ``name: ${cifar_lab.name:}``; each preset: ``${cifar_lab.name:p2b_dropout,resnet+dropout}``.
# Registered on import: every reader of a run's config (the job,
# a pack, Hydra's run dir) imports this module first.
def run_name(root: Any, preset: str | None = None, composition: str | None = None) -> str:
    """A preset's name while its model and regularisers are the preset's (``composition``), else the composed name:
    ``experiment=p2a reg=dropout`` is ``resnet+dropout``, not ``p2a``."""
    name = composed_name(root)
    return preset if preset and name == composition else name


OmegaConf.register_new_resolver(
    "cifar_lab.name",
    lambda preset=None, composition=None, *, _root_: run_name(_root_, preset, composition),
    replace=True,
)


# Lightning's debug switches and their neutral values (None: unset, neutral too): a run with any of them on
# trained a part of its data, or was a smoke test; its numbers are not a result.
DEBUG_NEUTRAL = {
    "fast_dev_run": (False, 0),
    "limit_train_batches": (1.0,),
    "limit_val_batches": (1.0,),
    "limit_test_batches": (1.0,),
    "overfit_batches": (0, 0.0),
}


def debug_settings(trainer: Any) -> list[str]:
    """The debug settings in force in a run's ``trainer`` config (a DictConfig or a plain dict), as
    ``trainer.<name>=<value>``; [] for a real run. ``limit_*_batches=1`` (an int) is one batch, 1.0 all of them."""
    found = []
    for name, neutral in DEBUG_NEUTRAL.items():
        value = trainer.get(name) if hasattr(trainer, "get") else None
        if value is None or any(value is n or (type(value) is type(n) and value == n) for n in neutral):
            continue
        found.append(f"trainer.{name}={str(value).lower() if isinstance(value, bool) else value}")
    return found
