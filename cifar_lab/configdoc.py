"""``python -m cifar_lab.configdoc > docs/configuration.md``: the configuration reference, generated from conf/.

Every option is documented where it is defined, as a trailing comment in its YAML file, and each
file's leading comment says what the file is. This module turns them into one page; a test checks
that the committed page is what this prints and that no option lacks its comment, so the reference
cannot drift from the configs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from cifar_lab.configs import CONF_DIR

INTERNAL = "not a user option"  # a comment line with this marks the node below it as plumbing
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.]*):(?P<rest>.*)$")
SKIPPED_KEYS = ("_target_", "_partial_", "defaults")

INTRO = """# Configuration reference

Generated from `conf/` by `python -m cifar_lab.configdoc` (a test keeps it in sync): every option
below is documented by the comment beside it in its YAML file.

Hydra composes `conf/config.yaml` with one option of each group; `python -m cifar_lab --cfg job
[overrides]` prints the result. Override any key on the command line (`optimizer.lr=0.05`), pick a
group option (`model=resnet`), combine `reg` options (`reg=[l2,dropout]`). Later groups override
earlier ones: data → model → optimizer → trainer → reg → experiment → command line.
"""


@dataclass
class Option:
    key: str
    default: str
    doc: str


@dataclass
class ConfigFile:
    path: Path
    header: str
    options: list[Option] = field(default_factory=list)


def split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a '#' inside quotes is not a comment."""
    quote = None
    for i, ch in enumerate(text):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def parse(path: Path, prefix: str = "") -> ConfigFile:
    """The file's leading comment and every documented leaf key, as dotted keys under ``prefix``."""
    lines = path.read_text().splitlines()
    header_lines = []
    for line in lines:
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            header_lines.append(line.lstrip("# ").rstrip())
    doc = ConfigFile(path, " ".join(h for h in header_lines if h))
    stack: list[tuple[int, str]] = []  # (indent, key) of the open nodes
    skip_below: int | None = None  # indent of an internal or skipped node whose children are hidden
    internal_next = False
    block_below: int | None = None  # the indent of a key whose value is a block scalar (|, >): its text follows
    for line in lines:
        stripped = line.strip()
        if block_below is not None:
            if not stripped or len(line) - len(line.lstrip()) > block_below:
                continue
            block_below = None
        if stripped.startswith("#"):
            internal_next = internal_next or INTERNAL in stripped
            continue
        m = KEY.match(line)
        if not m:
            continue
        indent, key = len(m.group("indent")), m.group("key")
        value, comment = split_comment(m.group("rest"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if skip_below is not None and indent > skip_below:
            continue
        skip_below = None
        if internal_next or key in SKIPPED_KEYS:
            internal_next = False
            skip_below = indent
            continue
        dotted = ".".join([prefix, *(k for _, k in stack), key] if prefix else [*(k for _, k in stack), key])
        if value == "":  # a node: its children follow
            stack.append((indent, key))
            if comment:
                doc.options.append(Option(dotted, "", comment))
            continue
        if value[:1] in ("|", ">"):
            block_below = indent
            value = "(text)"
        doc.options.append(Option(dotted, value, comment))
    return doc


def group_files(conf: Path) -> list[tuple[str, Path]]:
    """(group, file) for every group option, groups in the order the defaults list composes them."""
    order = ["data", "model", "optimizer", "scheduler", "trainer", "reg", "logger", "experiment"]
    groups = sorted(
        (p for p in conf.iterdir() if p.is_dir() and p.name != "hydra"),
        key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name),
    )
    out = [(g.name, f) for g in groups for f in sorted(g.glob("*.yaml"))]
    hydra = conf / "hydra"
    if hydra.is_dir():
        out += [(f"hydra/{g.name}", f) for g in sorted(hydra.iterdir()) if g.is_dir() for f in sorted(g.glob("*.yaml"))]
    return out


def table(options: list[Option]) -> list[str]:
    if not options:
        return ["(no options of its own)", ""]
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for o in options:
        default = f"`{o.default}`" if o.default else ""
        meaning = o.doc.replace("|", "\\|")
        lines.append(f"| `{o.key}` | {default} | {meaning} |")
    return [*lines, ""]


def prefix_for(group: str, path: Path) -> str:
    """Where a group file's keys land: its group (``model.width``, ``hydra.launcher``), or the root for
    ``@package _global_``."""
    return "" if path.read_text().startswith("# @package _global_") else group.replace("/", ".")


def section(heading: str, parsed: ConfigFile) -> list[str]:
    return [heading, "", parsed.header, "", *table(parsed.options)]


def render(conf: Path | None = None) -> str:
    conf = Path(conf or CONF_DIR)
    out = [INTRO, *section("## Top level (`conf/config.yaml`)", parse(conf / "config.yaml"))]
    if (conf / "data_loading.yaml").is_file():
        loading = parse(conf / "data_loading.yaml", "data")
        out += section("## Loading options of every data source (`conf/data_loading.yaml`)", loading)
    for group, members in itertools.groupby(group_files(conf), key=lambda member: member[0]):
        paths = [path for _, path in members]
        out += [f"## `{group}`: {', '.join(f'`{p.stem}`' for p in paths)}", ""]
        for path in paths:
            out += section(f"### `{group}={path.stem}`", parse(path, prefix_for(group, path)))
    if (conf / "bench.yaml").is_file():
        out += section("## The bench (`conf/bench.yaml`, `python -m cifar_lab.bench`)", parse(conf / "bench.yaml"))
    return "\n".join(out).rstrip() + "\n"


def undocumented(conf: Path | None = None) -> list[str]:
    """Options without a comment (the test fails on any)."""
    conf = Path(conf or CONF_DIR)
    files = [conf / "config.yaml", conf / "data_loading.yaml", conf / "bench.yaml", *(p for _, p in group_files(conf))]
    return [f"{p.relative_to(conf)}: {o.key}" for p in files if p.is_file() for o in parse(p).options if not o.doc]


# ---------------------------------------------------------------------- conf/trainer_defaults.yaml

# Trainer arguments that cifar_lab sets itself (they are not options), and those that conf/trainer/default.yaml
# already sets with cifar_lab's own values.
TRAINER_SET_BY_CODE = ("logger", "callbacks", "plugins", "default_root_dir", "enable_model_summary",
                       "enable_checkpointing")  # fmt: skip
TRAINER_NOTES = {
    "strategy": "auto, ddp, ... (trainer=ddp sets it)",
    "num_nodes": "machines for DDP (trainer=ddp)",
    "fast_dev_run": "true or N: run N batches of train/val once, as a smoke test (no checkpoints)",
    "min_epochs": "train at least this many epochs",
    "max_steps": "stop after this many optimizer steps (-1: no limit)",
    "min_steps": "train at least this many steps",
    "max_time": "stop after this long, e.g. 00:12:00:00 (DD:HH:MM:SS)",
    "limit_train_batches": "batches (int) or share (float) of each training epoch",
    "limit_val_batches": "batches (int) or share (float) of each validation",
    "limit_test_batches": "batches (int) or share (float) of the test pass",
    "limit_predict_batches": "batches (int) or share (float) of a predict pass",
    "overfit_batches": "train and validate on this many (or this share of) training batches",
    "val_check_interval": "validate every N training batches (int) or share of an epoch (float)",
    "check_val_every_n_epoch": "validate every N epochs",
    "accumulate_grad_batches": "accumulate gradients over N batches per optimizer step (classic path)",
    "gradient_clip_val": "clip gradients at this value (classic path)",
    "gradient_clip_algorithm": "norm or value",
    "benchmark": "cudnn.benchmark",
    "inference_mode": "evaluate under torch.inference_mode",
    "use_distributed_sampler": "Lightning's distributed sampler (trainer=ddp turns it off: cifar_lab shards itself)",
    "profiler": "simple, advanced or pytorch",
    "detect_anomaly": "autograd anomaly detection (slow)",
    "barebones": "turn off Lightning's extras for speed",
    "sync_batchnorm": "synchronise BatchNorm across DDP ranks (trainer=ddp sets it for BatchNorm models)",
    "reload_dataloaders_every_n_epochs": "rebuild the loaders every N epochs",
    "enable_autolog_hparams": "let Lightning log the module's hyperparameters at fit start",
    "model_registry": "Lightning's model registry name",
}


def trainer_defaults(already: set[str]) -> list[tuple[str, object]]:
    """Every ``lightning.Trainer`` argument (name, default) that neither cifar_lab's code nor ``already`` sets."""
    import inspect

    from lightning import Trainer

    params = list(inspect.signature(Trainer.__init__).parameters.values())[1:]
    return [(p.name, p.default) for p in params if p.name not in TRAINER_SET_BY_CODE and p.name not in already]


def render_trainer_defaults(conf: Path | None = None) -> str:
    """conf/trainer_defaults.yaml: so that any Trainer argument can be set as ``trainer.<name>=...`` (no ``+``)."""
    import yaml

    conf = Path(conf or CONF_DIR)
    already = {o.key for o in parse(conf / "trainer" / "default.yaml").options}
    lines = [
        "# Every other lightning.Trainer argument, at Lightning's own default, so that any of them can be set on the",
        "# command line as trainer.<name>=... (Hydra refuses keys a config does not have). Generated by",
        "# `python -m cifar_lab.configdoc --trainer-defaults` from the installed Lightning; a test keeps it in sync.",
    ]
    for name, default in trainer_defaults(already):
        value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        note = TRAINER_NOTES.get(name, "see lightning.Trainer")
        lines.append(f"{name + ':':<32} {value:<8} # {note}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(render_trainer_defaults() if "--trainer-defaults" in sys.argv else render(), end="")
