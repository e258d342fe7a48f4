"""Every bad input we promise to reject: a one-paragraph error, a non-zero exit, no completed summary."""

from __future__ import annotations

import pytest

from tests.conftest import FAST, QUICK, load_summary, run_cli, run_dirs, write_image_folder


def assert_rejected(tmp_path, overrides, *needles: str, base=FAST):
    res = run_cli(tmp_path, *base, *overrides)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-3000:]}"
    for d in run_dirs(tmp_path):
        assert load_summary(d)["status"] != "completed"
    for metrics in (tmp_path / "outputs").rglob("metrics.csv"):  # rejected before any epoch ran
        assert len(metrics.read_text().splitlines()) <= 1
    return res


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("model=vgg", ["cnn", "cnn3", "fc", "resnet"]),
        ("reg=lasso", ["batchnorm", "dropout", "l2", "none", "weight_decay"]),
        ("experiment=p3", ["fc", "p1a", "p1b", "p2a", "p2b_batchnorm", "p2b_dropout", "p2b_l2"]),
        ("data=imagenet", ["cifar10", "image_folder", "synthetic"]),
    ],
)
def test_unknown_names_list_the_valid_choices(tmp_path, override, choices):
    assert_rejected(tmp_path, [override], *choices)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optimizer.lr=0", "optimizer.lr must be > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr must be > 0"),
        ("data.batch_size=0", "data.batch_size must be > 0"),
        ("data.batch_size=-8", "data.batch_size must be > 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be > 0"),
        ("trainer.max_epochs=-1", "trainer.max_epochs must be > 0"),
        ("optimizer.lr=fast", "optimizer.lr must be a number"),
    ],
)
def test_out_of_range_numbers(tmp_path, override, needle):
    res = assert_rejected(tmp_path, [override], needle)
    assert res.returncode == 2
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made the run's directory


@pytest.mark.slow
@pytest.mark.parametrize("p", ["1.0", "1.5", "-0.1"])
def test_dropout_outside_unit_interval(tmp_path, p):
    assert_rejected(tmp_path, ["model=resnet", f"model.dropout={p}"], "model.dropout")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model=resnet", "model.bn_stem=bn_conv_relu"], "model.bn_stem must be one of conv_bn_relu, conv_relu_bn"),
        (["model=resnet", "model.bn_eval=train"], "model.bn_eval must be one of running, batch"),
        (["model=resnet", "model.bn_momentum=1.5"], "model.bn_momentum"),
        (["model=resnet", "model.dropout_kind=spatial"], "model.dropout_kind must be one of element, channel"),
        (["experiment=p1b", "model.fc_act=gelu"], "model.fc_act must be one of relu, tanh"),
    ],
)
def test_seed_layout_options_are_checked_before_training(tmp_path, overrides, needle):
    assert_rejected(tmp_path, overrides, needle)


def test_mistyped_key(tmp_path):
    assert_rejected(tmp_path, ["trainer.max_epoch=3"], "max_epoch", "not in struct")


@pytest.mark.slow
def test_dropout_on_a_model_without_it(tmp_path):
    assert_rejected(tmp_path, ["model=fc", "reg=dropout"], "model=fc has no option dropout", "model=resnet")


@pytest.mark.slow
def test_gpu_trainer_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_rejected(tmp_path, ["trainer=gpu", "trainer.enable_progress_bar=false"], "needs a CUDA GPU")


def folder_overrides(root):
    return [*QUICK, "data=image_folder", f"data.root={root}", "data.cache_dir=null"]


@pytest.mark.slow
def test_image_folder_missing_root(tmp_path):
    assert_rejected(tmp_path, folder_overrides(tmp_path / "nowhere"), "does not exist", base=[])


@pytest.mark.slow
def test_image_folder_without_class_folders(tmp_path):
    (tmp_path / "imgs" / "train").mkdir(parents=True)
    (tmp_path / "imgs" / "test").mkdir()
    assert_rejected(tmp_path, folder_overrides(tmp_path / "imgs"), "has no class folders", base=[])


@pytest.mark.slow
def test_image_folder_train_and_test_classes_differ(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=1, n_test=1)
    (root / "test" / "dog").rename(root / "test" / "frog")
    assert_rejected(tmp_path, folder_overrides(root), "differ", "dog", "frog", base=[])


@pytest.mark.slow
def test_image_folder_unreadable_image_is_named(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=2, n_test=1)
    bad = root / "train" / "dog" / "0001.png"
    bad.write_bytes(b"this is not an image")
    assert_rejected(tmp_path, folder_overrides(root), "cannot read image", str(bad), base=[])


@pytest.mark.slow
def test_image_folder_wrong_size_is_named(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), n_train=1, n_test=1, size=48)
    assert_rejected(tmp_path, folder_overrides(root), "not 32x32", "data.resize=true", base=[])


@pytest.mark.slow
def test_cifar10_absent_offline(tmp_path):
    assert_rejected(
        tmp_path,
        [*QUICK, "data=cifar10", "data.download=false"],
        "cifar-10-python.tar.gz",
        "data=image_folder",
        base=[],
    )
