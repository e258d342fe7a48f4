"""Every config group composes and instantiates through Hydra's compose API."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cifar_lab.build import build_data
from cifar_lab.configs import CONF_DIR
from cifar_lab.models import count_params
from cifar_lab.plan import SpeedPlan
from tests.conftest import EXPERIMENTS, LR, PARAMS, compose_cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_experiment_group_has_the_seven_presets():
    assert options("experiment") == sorted(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_uses_the_seed_protocol(name):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.name == name
    assert cfg.data.batch_size == 1024
    assert (
        cfg.optimizer._target_ == "torch.optim.SGD"
        and cfg.optimizer.lr == LR.get(name, 0.01)
        and cfg.optimizer.momentum == 0
    )
    assert cfg.trainer.max_epochs == 300
    assert cfg.data.augment is False
    assert count_params(instantiate(cfg.model)) == PARAMS[name]


def test_regularised_presets_differ_from_p2a_only_in_their_regulariser():
    """Each p2b preset is p2a plus its regulariser (and, for BatchNorm and dropout, the seed notebook's layout);
    the name is a label, not part of what a run computes."""
    from cifar_lab.resume import run_identity

    base = run_identity(compose_cfg("experiment=p2a"))
    expected = {
        "p2b_l2": {"l2"},
        "p2b_dropout": {"model.dropout", "model.dropout_kind", "model.stem_dropout"},
        "p2b_batchnorm": {
            "model.batchnorm",
            "model.bn_stem",
            "model.block_conv_bias",
            "model.block_init",
            "model.bn_weight_init",
        },  # fmt: skip
    }
    for preset, keys in expected.items():
        cfg = run_identity(compose_cfg(f"experiment={preset}"))
        assert {k for k in base if cfg.get(k) != base[k]} == keys, preset
    assert compose_cfg("experiment=p2b_l2").l2 == 0.001 and compose_cfg("experiment=p2b_dropout").model.dropout == 0.3
    assert base["model.tied_blocks"] is True and base["optimizer.lr"] == 0.003


def test_regularisers_combine_and_weight_decay_matches_l2():
    cfg = compose_cfg("model=resnet", "reg=[l2,dropout,batchnorm]")
    assert (cfg.l2, cfg.model.dropout, cfg.model.batchnorm) == (0.001, 0.3, True)
    wd = compose_cfg("reg=weight_decay")
    assert wd.optimizer.weight_decay == 2 * compose_cfg("reg=l2").l2  # plain SGD: wd = 2λ


def test_mission_usage_line_composes():
    cfg = compose_cfg("model=resnet", "reg=dropout")
    assert cfg.model.name == "resnet" and cfg.model.dropout == 0.3


EXPECTED_TYPES = {
    "data": L.LightningDataModule,
    "model": torch.nn.Module,
    "optimizer": torch.optim.Optimizer,
    "trainer": L.Trainer,
}


@pytest.mark.parametrize("group", ["data", "model", "optimizer", "trainer"])
def test_every_option_instantiates(group, tmp_path):
    for option in options(group):
        if group == "trainer" and option == "gpu" and not torch.cuda.is_available():
            continue  # needs a GPU; its CPU-side error is tested in test_errors.py
        overrides = [f"{group}={option}", f"data_dir={tmp_path}"]
        if group == "data" and option == "image_folder":
            overrides.append(f"data.root={tmp_path}")
        cfg = compose_cfg(*overrides)
        obj = build_data(cfg, SpeedPlan()) if group == "data" else instantiate(cfg[group])
        if group == "optimizer":  # a partial, completed with the parameters in configure_optimizers
            obj = obj(params=[torch.zeros(1, requires_grad=True)])
        assert isinstance(obj, EXPECTED_TYPES[group]), (group, option, type(obj))


def test_every_reg_option_changes_only_what_it_names():
    base = compose_cfg("model=resnet")
    changed = {
        "none": {},
        "l2": {"l2": 0.001},
        "weight_decay": {"optimizer.weight_decay": 0.002},
        "dropout": {"model.dropout": 0.3},
        "batchnorm": {"model.batchnorm": True},
    }
    assert set(options("reg")) == set(changed)
    keys = ["l2", "optimizer.weight_decay", "model.dropout", "model.batchnorm"]
    for option, expected in changed.items():
        cfg = compose_cfg("model=resnet", f"reg={option}")
        for key in keys:
            assert OmegaConf.select(cfg, key) == expected.get(key, OmegaConf.select(base, key)), (option, key)


def test_batchnorm_preset_is_the_seeds_model():
    model = compose_cfg("experiment=p2b_batchnorm").model
    assert (model.bn_stem, model.bn_position, model.bn_eval, model.bn_momentum) == (
        "conv_relu_bn",
        "after_act",
        "running",
        0.1,
    )
    assert (model.block_conv_bias, model.block_init, model.bn_weight_init) == (False, "kaiming_normal", 0.5)
    assert model.tied_blocks is True


def test_one_flattener_for_every_reader_of_a_config():
    """configs.flatten serves the run identity, the report's settings, the schema's ??? check, the "did you
    mean" keys and TensorBoard's hparams: dotted leaves, empty nodes none, ``_`` keys kept or left out whole."""
    from cifar_lab.configs import flatten
    from cifar_lab.hints import option_keys
    from cifar_lab.schema import missing_keys

    node = {"a": {"b": 1, "_target_": "x", "_n": {"c": 2}, "e": {}}, "l": [1, {"k": 2}], "m": "???"}
    assert flatten(node) == {"a.b": 1, "a._target_": "x", "a._n.c": 2, "l": [1, {"k": 2}], "m": "???"}
    assert flatten(node, private=False) == {"a.b": 1, "l": [1, {"k": 2}], "m": "???"}
    assert missing_keys(OmegaConf.create(node)) == ["m"]
    cfg = compose_cfg("experiment=p1a")
    keys = option_keys(OmegaConf.to_container(cfg, resolve=False))
    assert "optimizer.lr" in keys and "data.datamodule.batch_size" not in keys and "optimizer._target_" not in keys
