"""A file is data, never code: crafted checkpoints and run records are refused before anything is built.

Each gadget below loads with ``torch.load(weights_only=True)`` (dicts and strings only) and, handed to
Hydra's ``instantiate`` as it stands, writes a marker file. Every consumer of a checkpoint must refuse
it in one paragraph, and the marker must not exist afterwards.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_lab.inference import trusted_source
from cifar_lab.trusted import UntrustedConfig, trusted_data_options, trusted_hparams
from tests.conftest import FAST, REPO, run_inprocess


def gadgets(marker: Path) -> dict[str, tuple[str, object]]:
    """name -> (which stored config, its crafted value); each writes ``marker`` if instantiated."""
    write = {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]},
             "data": "ran"}  # fmt: skip
    opener = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    return {
        "net_is_a_write_chain": ("net", write),
        "net_is_open": ("net", opener),
        "our_model_with_a_nested_gadget": (
            "net",
            {"_target_": "cifar_lab.models.create_model", "name": "cnn", "width": opener, "hidden": 32},
        ),  # fmt: skip
        "optimizer_is_a_copy": (
            "optimizer",
            {"_target_": "shutil.copyfile", "src": str(REPO / "README.md"), "dst": str(marker)},
        ),  # fmt: skip
        "partial_optimizer_gadget": (
            "optimizer",
            {"_target_": "builtins.open", "_partial_": True, "file": str(marker), "mode": "w"},
        ),  # fmt: skip
        "scheduler_schedule_gadget": ("scheduler", {"name": "step", "interval": "epoch", "schedule": write}),
        "our_target_extra_recursive_key": (
            "net",
            {
                "_target_": "cifar_lab.models.create_model",
                "name": "cnn",
                "_recursive_": True,
                "width": 32,
                "hidden": 32,
            },
        ),  # fmt: skip
        "interpolation_value": (
            "optimizer",
            {
                "_target_": "torch.optim.SGD",
                "_partial_": True,
                "lr": "${oc.env:HOME}",
                "momentum": 0.0,
                "weight_decay": 0.0,
            },
        ),  # fmt: skip
        "lightning_instantiator": ("_instantiator", "lightning.pytorch.cli.instantiate_module"),
        "record_datamodule_gadget": ("record", {"data.datamodule": opener}),
        "record_source_outside_conf": ("record", {"data.source": "../experiment/p1a"}),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trusted") / "run"
    summary = run_inprocess(run, "experiment=p1a", *FAST)
    assert summary["status"] == "completed"
    return run


def crafted_run(trained: Path, dest: Path, which: str, value: object) -> Path:
    """A copy of ``trained`` whose best.ckpt and last.ckpt carry the gadget."""
    shutil.copytree(trained, dest)
    for name in ("best.ckpt", "last.ckpt"):
        path = dest / "checkpoints" / name
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if which == "record":
            ckpt["cifar_lab"]["config"].update(value)
        else:
            ckpt["hyper_parameters"][which] = value
        torch.save(ckpt, path)
        torch.load(path, map_location="cpu", weights_only=True)  # the crafted file passes weights_only
    return dest


def assert_refused(res: subprocess.CompletedProcess, marker: Path) -> None:
    err = res.stderr
    assert res.returncode == 2, (res.returncode, err[-3000:])
    assert "Error:" in err and "was not loaded" in err and "Traceback" not in err, err[-3000:]
    assert not marker.exists(), "the crafted checkpoint ran code"


GADGETS = list(gadgets(Path("m")))


# Through the real commands (a process each): one gadget per way in; every gadget is refused in-process below.
@pytest.mark.slow
@pytest.mark.parametrize("gadget", ["net_is_a_write_chain", "scheduler_schedule_gadget", "record_datamodule_gadget"])
def test_evaluate_and_predict_refuse_a_crafted_checkpoint_before_running_anything(trained, tmp_path, gadget):
    marker = tmp_path / "marker"
    which, value = gadgets(marker)[gadget]
    run = crafted_run(trained, tmp_path / "sent", which, value)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(images / "a.png")
    for command in (["cifar_lab.evaluate", str(run)], ["cifar_lab.predict", str(run), str(images)]):
        res = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert_refused(res, marker)


@pytest.mark.parametrize("gadget", [g for g in GADGETS if not g.startswith("record")])
def test_load_from_checkpoint_refuses_a_crafted_checkpoint(trained, tmp_path, gadget):
    from cifar_lab.task import ClassifierModule

    marker = tmp_path / "marker"
    which, value = gadgets(marker)[gadget]
    run = crafted_run(trained, tmp_path / "sent", which, value)
    with pytest.raises(UntrustedConfig, match="was not loaded"):
        ClassifierModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    assert not marker.exists()


@pytest.mark.slow
def test_a_resume_refuses_a_crafted_checkpoint(trained, tmp_path):
    marker = tmp_path / "marker"
    which, value = gadgets(marker)["net_is_a_write_chain"]
    run = crafted_run(trained, tmp_path / "sent", which, value)
    before = (run / "summary.json").read_bytes()
    overrides = ["experiment=p1a", *FAST, f"data_dir={trained / 'data'}"]  # the trained run's, as composed
    command = [sys.executable, "-m", "cifar_lab", *overrides, "trainer.max_epochs=2", "resume=true",
               f"hydra.run.dir={run}"]  # fmt: skip
    res = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "was not loaded" in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert not marker.exists()
    assert (run / "summary.json").read_bytes() == before  # a refused start changes nothing


def test_the_checks_can_fail_and_pass_our_own_configs(trained):
    """The same configs as stored by a real run pass unchanged; each gadget alone is refused."""
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert trusted_hparams(hparams)["net"] == hparams["net"]
    assert trusted_hparams(hparams)["optimizer"] == hparams["optimizer"]
    record = ckpt["cifar_lab"]["config"]
    assert trusted_data_options(record)["data.n_train"] == 256
    assert trusted_source(record) == "synthetic"
    for which, value in gadgets(Path("/nonexistent/marker")).values():
        if which == "record":
            with pytest.raises(UntrustedConfig):
                trusted_data_options({**record, **value})
                trusted_source({**record, **value})
            continue
        crafted = copy.deepcopy(hparams)
        crafted[which] = value
        with pytest.raises(UntrustedConfig):
            trusted_hparams(crafted)


def test_a_value_the_command_line_would_refuse_is_refused_from_a_file(trained):
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    crafted = copy.deepcopy(ckpt["hyper_parameters"])
    crafted["optimizer"]["lr"] = -1.0
    with pytest.raises(UntrustedConfig, match="optimizer.lr must be > 0"):
        trusted_hparams(crafted)
    crafted = copy.deepcopy(ckpt["hyper_parameters"])
    crafted["net"]["shell"] = "rm -rf /"
    with pytest.raises(UntrustedConfig, match="does not take model.shell"):
        trusted_hparams(crafted)


def test_the_report_resolves_a_run_config_without_calling_resolvers(monkeypatch):
    """A run directory's config.yaml may refer to its own keys; ``${oc.env:...}`` is kept as text, not read."""
    from cifar_lab.report.runs import config_settings

    monkeypatch.setenv("CIFAR_LAB_TEST_SECRET", "hunter2")
    cfg = {"name": "p1a", "model": {"name": "${oc.env:CIFAR_LAB_TEST_SECRET}", "width": "${optimizer.w}"},
           "optimizer": {"lr": 0.01, "w": 32}}  # fmt: skip
    settings = config_settings(cfg)
    assert settings["model.name"] == "${oc.env:CIFAR_LAB_TEST_SECRET}"
    assert settings["model.width"] == 32  # a reference to another key still resolves
    assert "hunter2" not in repr(settings)


# ---- found by a hostile read of the above (each was a hole before its fix) ----


@pytest.mark.parametrize(
    "which, value, needle",
    [
        ("net", ("builtins.open", "x"), "not a config node"),
        ("optimizer", {"_target_": "torch.optim.SGD", "_partial_": torch.tensor([True, True]), "lr": 0.1},
         "_partial_ is"),
        ("optimizer", {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.001, "betas": ["???", 0.9]},
         "not a plain value"),
        ("num_classes", 2**62, "num_classes must be"),
        ("net", {"_target_": "cifar_lab.models.create_model", "name": "cnn", "width": 2**62, "hidden": 32},
         "model.width .*must be <="),
        ("net", {"_target_": "cifar_lab.models.create_model", "name": "cnn", "width": list(range(10**6))},
         "a list of 1000000 items"),
        ("scheduler", {"name": "step", "interval": "epoch"}, "lacks schedule"),
        ("scheduler", {"name": "step", "interval": "never", "schedule": {
            "_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1, "gamma": 0.5}},
         "scheduler.interval must be one of"),
    ],
)  # fmt: skip
def test_configs_of_another_shape_are_refused_in_one_short_paragraph(trained, which, value, needle):
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    crafted = copy.deepcopy(ckpt["hyper_parameters"])
    crafted[which] = value
    with pytest.raises(UntrustedConfig, match=needle) as err:
        trusted_hparams(crafted)
    assert len(str(err.value)) < 2000


@pytest.mark.parametrize("entry", ["module_arguments", "hparams"])
def test_lightnings_older_rebuild_entries_are_refused(trained, tmp_path, entry):
    """Lightning's own loader merges these into the arguments and calls an allow-listed ``_instantiator``."""
    from cifar_lab.task import ClassifierModule

    path = tmp_path / "sent.ckpt"
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt[entry] = {"_instantiator": "lightning.pytorch.cli.instantiate_module",
                   "_class_path": "cifar_lab.task.ClassifierModule"}  # fmt: skip
    torch.save(ckpt, path)
    with pytest.raises(UntrustedConfig, match=f"it holds {entry}"):
        ClassifierModule.load_from_checkpoint(path)


def test_a_run_record_never_chooses_where_data_is_written():
    record = {"data.source": "cifar10", "data_dir": "/elsewhere", "data.cache_dir": "/elsewhere/cache",
              "data.download": True, "data.root": "/elsewhere", "data.batch_size": 64}  # fmt: skip
    assert trusted_data_options(record) == {"data.source": "cifar10", "data.batch_size": 64}
    folder = {**record, "data.source": "image_folder"}
    assert trusted_data_options(folder)["data.root"] == "/elsewhere"  # only read, and needed


@pytest.mark.slow
def test_a_checkpoints_callback_state_cannot_make_a_resume_delete_files(trained, tmp_path):
    """Lightning deletes the files a ModelCheckpoint's state names when a better epoch replaces them."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    run = tmp_path / "sent"
    shutil.copytree(trained, run)
    path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key, state in ckpt["callbacks"].items():
        if key.startswith("ModelCheckpoint"):
            state["best_model_path"] = f"local://{victim}"
            state["kth_best_model_path"] = f"{state['dirpath']}/../../victim/keep.txt"
            state["best_k_models"] = {f"{state['dirpath']}/../../victim/keep.txt": torch.tensor(0.0)}
    torch.save(ckpt, path)
    overrides = ["experiment=p1a", *FAST, f"data_dir={trained / 'data'}"]  # the trained run's, as composed
    command = [sys.executable, "-m", "cifar_lab", *overrides, "trainer.max_epochs=3", "resume=true",
               f"hydra.run.dir={run}"]  # fmt: skip
    res = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (victim / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_run_directory_with_links_is_refused_before_anything_is_written(trained, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.yaml").write_text("victim")
    run = tmp_path / "sent"
    shutil.copytree(trained, run)
    shutil.rmtree(run / ".hydra", ignore_errors=True)
    (run / ".hydra").symlink_to(victim)
    (run / "eval").symlink_to(victim)
    overrides = ["experiment=p1a", *FAST, f"data_dir={trained / 'data'}"]  # the trained run's, as composed
    for command in (["cifar_lab", *overrides, "trainer.max_epochs=2", "resume=true", f"hydra.run.dir={run}"],
                    ["cifar_lab.evaluate", str(run)]):  # fmt: skip
        res = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert res.returncode == 2 and "symbolic links" in res.stderr, res.stderr[-3000:]
    assert sorted(p.name for p in victim.iterdir()) == ["config.yaml"]
    assert (victim / "config.yaml").read_text() == "victim"


def test_checkpoint_removal_never_removes_a_folder_or_a_url(tmp_path):
    from cifar_lab.resilience import AtomicCheckpointIO

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x").write_text("x")
    AtomicCheckpointIO().remove_checkpoint(folder)
    AtomicCheckpointIO().remove_checkpoint(f"local://{folder / 'x'}")
    assert (folder / "x").exists()
    AtomicCheckpointIO().remove_checkpoint(folder / "x")
    assert not (folder / "x").exists()


def test_a_damaged_random_state_is_one_paragraph():
    from cifar_lab.errors import UserError
    from cifar_lab.resilience import RngState

    state = RngState().state_dict()
    state["python"] = [1, 2, 3]
    with pytest.raises(UserError, match="random-number state is damaged"):
        RngState().load_state_dict(state)


@pytest.mark.parametrize(
    "cfg",
    [
        {"model": {"name": "\\${oc.env:CIFAR_LAB_TEST_SECRET}"}},
        {"model": {"name": "${${model.r}:CIFAR_LAB_TEST_SECRET}", "r": "oc.env"}},
        {"model": {"name": "${model.a}", "a": "${model.name}"}},  # a cycle
    ],
)
def test_the_report_reads_no_resolver_in_any_spelling(monkeypatch, cfg):
    from cifar_lab.report.runs import config_settings

    monkeypatch.setenv("CIFAR_LAB_TEST_SECRET", "hunter2")
    assert "hunter2" not in repr(config_settings(cfg))


def test_the_report_reads_a_damaged_run_as_unreadable(tmp_path):
    import json

    from cifar_lab.report.runs import load_run

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "completed", "final": {"val_acc": "high"}}))
    (run / ".hydra" / "config.yaml").write_text("a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]\n")
    loaded = load_run(run)
    assert loaded.status == "unreadable" and "final.val_acc" in loaded.summary["error"]
    assert loaded.settings == {"data.source": "unknown"}  # the aliases were not expanded


def test_the_markdown_report_shows_names_as_text():
    from cifar_lab.report.document import Section, Table, to_markdown

    table = Table(header=["run"], rows=[["<img src=x onerror=alert(1)>"]])
    text = to_markdown("t", [Section("s", [table, "<script>x</script>"])], Path("."))
    assert "<img" not in text and "<script>" not in text and "&lt;img" in text


def test_a_signals_stop_wrapped_by_a_library_is_still_an_interruption():
    from hydra.errors import InstantiationException

    from cifar_lab.errors import outcome_of
    from cifar_lab.preemption import SignalStop

    try:
        try:
            raise SignalStop("SIGTERM")
        except SignalStop as stop:
            raise InstantiationException("Error in call to target") from stop
    except InstantiationException as wrapped:
        outcome = outcome_of(wrapped)
    assert (outcome.status, outcome.exit_code, outcome.expected) == ("interrupted", 143, True)


def test_a_run_whose_final_summary_the_disk_refuses_is_never_reported_done(tmp_path, monkeypatch):
    """The training ended, but summary.json could not say so: exit 4 with one paragraph, not 'completed'."""
    import errno

    from cifar_lab import summary as summary_module
    from cifar_lab.errors import EXIT_IO, outcome_of

    write = summary_module.write_json_atomic

    def full_at_the_end(path, data, *args, **kwargs):
        if data.get("status") == "completed":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(path, data, *args, **kwargs)

    monkeypatch.setattr(summary_module, "write_json_atomic", full_at_the_end)
    with pytest.raises(OSError) as err:
        run_inprocess(tmp_path / "run", "experiment=p1a", *FAST)
    outcome = outcome_of(err.value)
    assert (outcome.exit_code, outcome.status) == (EXIT_IO, "failed") and "no space left" in outcome.message
