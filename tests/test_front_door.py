"""Issue 22 items 1-4, through ``python -m cifar_lab``: a composed run's name and what it is composed of; every
mistake on a command line (a group value, a model option the model lacks, a bad value, a resume with nothing to
continue) is one paragraph with the closest valid choices, exit 2, and no directory under outputs/; the Optuna
example works for every experiment and a failed trial is a FAIL, not "Return value must be float-castable"."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXPERIMENTS, FAST, QUICK, compose_cfg, load_summary, run_cli, run_dirs

TINY_RESNET = [*FAST, "model.n_blocks=1", "model.width=8"]


def assert_refused(tmp_path: Path, *args: str, needles: tuple[str, ...] = ()) -> str:
    """Exit 2, one paragraph (``Error: ...``) naming each needle, nothing of Hydra's own, no outputs/ at all."""
    res = run_cli(tmp_path, *args)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert out.count("Error:") == 1 and "Traceback" not in out and "Could not find" not in out, out[-3000:]
    paragraph = next(line for line in out.splitlines() if line.startswith("Error:"))
    for needle in needles:
        assert needle in paragraph, f"{needle!r} not in:\n{paragraph}"
    assert not (tmp_path / "outputs").exists(), sorted((tmp_path / "outputs").rglob("*"))
    return paragraph


# --------------------------------------------------------------------------- item 3: group values


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["experiment=p1x"], ("experiment=p1x is not one of the experiment options", "did you mean p1b or p1a?")),
        (["data=synthetc"], ("data=synthetc", "did you mean synthetic?", "cifar10, image_folder, synthetic")),
        (["optimizer=adam"], ("optimizer=adam", "did you mean adamw?")),
        (["callbacks=nothere"], ("callbacks=nothere", "The callbacks options: default.")),
        (["reg=[l2,dropuot]"], ("reg=dropuot", "did you mean dropout?")),
        (["-m", "experiment=p1a,p1x"], ("experiment=p1x", "did you mean p1b or p1a?")),
        (["-m", "experiment=choice(p1a,p2x)"], ("experiment=p2x", "p2a")),
        (["hydra/launcher=pakced"], ("hydra/launcher=pakced", "did you mean packed?")),
        (["-m", "reg=[dropout],[dropot]"], ("reg=dropot", "did you mean dropout?")),  # a sweep of lists
        (["-m", "experiment=glob(p9*)"], ("experiment=glob(p9*) matches none of the experiment options", "p1a")),
    ],
)
def test_a_mistyped_group_value_is_refused_with_the_closest_choices(tmp_path, args, needles):
    assert_refused(tmp_path, *args, *FAST, needles=needles)


# --------------------------------------------------------------------------- item 2: model options


@pytest.mark.parametrize(
    "args",
    [
        ["experiment=p1a", "reg=dropout"],
        ["model=fc", "reg=dropout"],
        ["experiment=p1a", "model.dropout=0.2"],
        ["-m", "experiment=p1a,p2a", "reg=dropout"],
    ],
)
def test_a_model_option_the_model_lacks_is_refused(tmp_path, args):
    paragraph = assert_refused(tmp_path, *args, *FAST, needles=("has no option dropout", "model=resnet", "p2b_dropout"))
    if "reg=dropout" in args:
        assert "as reg=dropout sets it" in paragraph


def test_regularisers_the_model_has_combine(tmp_path):
    """The README's claim: a regulariser combines with every model that has its option (l2 and weight decay:
    every model; dropout and batchnorm: the ResNet), composed and checked as a run would be."""
    from cifar_lab.schema import problems

    for model in ("fc", "cnn", "cnn3", "resnet"):
        for reg in ("l2", "weight_decay", *(("dropout", "batchnorm", "[l2,dropout]") if model == "resnet" else ())):
            assert problems(compose_cfg(f"model={model}", f"reg={reg}")) == [], (model, reg)


# --------------------------------------------------------------------------- item 4: nothing written


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["optimizer.lr=-1"], ("optimizer.lr must be > 0",)),
        (["name=a/b"], ("name must be a plain name",)),
        (["data=image_folder"], ("data.root has no value",)),
        (["experiment=p2a", "resume=true"], ("resume=true but there is no checkpoint", "hydra.run.dir=")),
        (["-m", "optimizer.lr=0.01,-1"], ("optimizer.lr must be > 0", "Fix the swept values")),
        (["-m", "seed=0,1", "trainer.max_epochs=0"], ("trainer.max_epochs must be > 0",)),
        (["-m", "seed=0,1", "hydra/launcher=packed", "hydra.launcher.pack=garbage"], ("hydra.launcher.pack must be",)),
        (["-m", "seed=0,1", "hydra/launcher=packed", "hydra.launcher.max_pack=0"], ("hydra.launcher.max_pack",)),
        (["-m", "seed=0,1", "hydra.launcher.pack=false"], ("an option of the packed launcher",)),
        (["-m", "seed=0,1", "--cfg", "job"], ("--cfg and --multirun cannot be given together",)),
    ],
)
def test_a_refused_start_leaves_no_run_directory(tmp_path, args, needles):
    base = QUICK if "data=image_folder" in args else FAST
    assert_refused(tmp_path, *base, *args, needles=needles)


def test_a_resume_into_a_folder_that_holds_no_run_creates_nothing(tmp_path):
    target = tmp_path / "elsewhere" / "run"
    assert_refused(tmp_path, *FAST, "resume=true", f"hydra.run.dir={target}", needles=(f"no run in {target}",))
    assert not (tmp_path / "elsewhere").exists()


def test_printing_flags_and_their_values_still_work(tmp_path):
    res = run_cli(tmp_path, "--cfg", "job", "--resolve", "model=resnet", "reg=dropout")
    assert res.returncode == 0 and "name: resnet+dropout" in res.stdout, res.stderr[-2000:]
    res = run_cli(tmp_path, "--help")
    assert res.returncode == 0 and "Config groups" in res.stdout, res.stderr[-2000:]
    res = run_cli(tmp_path, "--info", "searchpath", "optimizer.lr=-1")  # prints; the value is the run's to refuse
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()


# --------------------------------------------------------------------------- item 1: the name and `composed`


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "resnet"),
        (["reg=dropout"], "resnet+dropout"),
        (["model=resnet", "reg=[l2,dropout]"], "resnet+l2+dropout"),
        (["model=cnn", "reg=weight_decay"], "cnn+weight_decay"),
        (["model.dropout=0.2"], "resnet+dropout"),
        (["reg=dropout", "model.dropout=0"], "resnet"),
        (["experiment=p2b_dropout"], "p2b_dropout"),
        (["experiment=p2b_dropout", "optimizer.lr=0.01"], "p2b_dropout"),  # a preset at another lr keeps its name
        (["experiment=p2a", "reg=dropout"], "resnet+dropout"),  # a preset whose model or regularisers changed
        (["experiment=p1a", "model=resnet"], "resnet"),
        (["experiment=p2b_dropout", "model.dropout=0"], "resnet"),
        (["experiment=p2b_l2", "optimizer=adamw"], "resnet+l2+weight_decay"),
    ],
)
def test_the_name_says_what_was_composed(overrides, name):
    assert compose_cfg(*overrides).name == name


def test_every_preset_is_recognised_as_itself():
    from cifar_lab.presets import describe

    for experiment in EXPERIMENTS:
        composed = describe(compose_cfg(f"experiment={experiment}", "data=synthetic", "seed=7", "trainer=cpu"))
        assert composed == {"name": experiment, "preset": experiment, "closest": None, "differs": []}


def test_the_summary_says_which_preset_a_run_is_closest_to(tmp_path):
    from cifar_lab.lifecycle import summary_fields

    composed = summary_fields(compose_cfg("model=resnet", "reg=dropout"), tmp_path, [])["composed"]
    assert composed == {
        "name": "resnet+dropout",
        "preset": None,
        "closest": "p2b_dropout",
        "differs": [  # reg=dropout is element dropout in the blocks; the preset is the seed's channel + stem layout
            "model.dropout_kind=element (p2b_dropout: channel)",
            "model.stem_dropout=false (p2b_dropout: true)",
            "optimizer.lr=0.01 (p2b_dropout: 0.003)",
        ],
    }
    composed = summary_fields(compose_cfg("experiment=p2a", "optimizer=adamw"), tmp_path, [])["composed"]
    assert composed["closest"] == "p2a" and composed["differs"][0] == "optimizer=AdamW (p2a: SGD)"


@pytest.mark.slow
def test_a_composed_run_is_named_after_it_and_says_how_it_differs_from_the_closest_preset(tmp_path):
    res = run_cli(tmp_path, "model=resnet", "reg=dropout", *TINY_RESNET)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.parent == tmp_path / "outputs" / "resnet+dropout"
    composed = load_summary(run_dir)["composed"]
    assert composed["name"] == "resnet+dropout" and composed["preset"] is None
    assert composed["closest"] == "p2b_dropout"
    assert "optimizer.lr=0.01 (p2b_dropout: 0.003)" in composed["differs"]
    assert "model.n_blocks=1 (p2b_dropout: 10)" in composed["differs"]
    (line,) = [ln for ln in out.splitlines() if "matches no preset" in ln]
    assert "closest: p2b_dropout" in line and "optimizer.lr=0.01 (p2b_dropout: 0.003)" in line
    assert out.index("matches no preset") < out.index("run directory")  # said at the start


# --------------------------------------------------------------------------- item 2: Optuna


def test_the_optuna_search_space_exists_for_every_experiment():
    """Each parameter of conf/hydra/sweeper/optuna_search.yaml is an option of every experiment's config (it
    searched model.dropout, which only the ResNet has: "Could not override 'model.dropout'" for p1a)."""
    from hydra import compose, initialize_config_dir

    from cifar_lab.configs import CONF_DIR
    from cifar_lab.hints import has_key

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        params = compose("config", ["hydra/sweeper=optuna_search"], return_hydra_config=True).hydra.sweeper.params
    for experiment in EXPERIMENTS:
        cfg = compose_cfg(f"experiment={experiment}")
        for key in params:
            assert has_key(cfg, key), (experiment, key)


needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None, reason="the optuna sweeper is not installed"
)


def optuna_search(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    res = run_cli(
        tmp_path,
        "-m",
        "hydra/sweeper=optuna_search",
        "experiment=p1a",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}",
        *FAST,
        "data.n_train=128",
        "data.n_test=64",
        "model.width=4",
        "model.hidden=8",
        *args,
    )
    return res, storage


def trial_states(storage: str) -> list[str]:
    import optuna

    return [t.state.name for t in optuna.load_study(study_name="p1a", storage=storage).get_trials()]


@needs_optuna
@pytest.mark.slow
def test_the_optuna_example_runs_for_p1a(tmp_path):
    res, storage = optuna_search(tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert trial_states(storage) == ["COMPLETE", "COMPLETE"]


@needs_optuna
@pytest.mark.slow
def test_a_diverged_trial_is_a_failed_trial_not_a_cast_error(tmp_path):
    res, storage = optuna_search(tmp_path, "optimizer.lr=1e30")  # every trial diverges
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]  # the sweep's status: a job did not complete
    assert "float-castable" not in out and "Traceback" not in out, out[-3000:]
    assert out.count("Failed experiment: diverged: training diverged") == 2, out[-3000:]
    assert "no trial of Optuna study 'p1a' completed" in out
    assert trial_states(storage) == ["FAIL", "FAIL"]
    assert sorted(load_summary(d)["status"] for d in run_dirs(tmp_path)) == ["diverged", "diverged"]
