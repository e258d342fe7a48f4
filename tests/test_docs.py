"""The docs cannot drift: the configuration reference is generated from conf/, links stay inside the repo."""

from __future__ import annotations

import re

from cifar_lab.configdoc import render, undocumented
from tests.conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_configuration_page_is_generated_from_conf():
    page = REPO / "docs" / "configuration.md"
    assert page.read_text() == render(), "regenerate: python -m cifar_lab.configdoc > docs/configuration.md"


def test_every_config_option_has_its_comment():
    assert undocumented() == []


def test_readme_is_the_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for heading in ("## Set-up", "## The seven experiments", "## Outputs"):
        assert heading in readme


def test_no_link_leaves_the_repository_and_every_link_resolves():
    for path in [REPO / "README.md", *DOCS]:
        text = path.read_text()
        assert "../shared" not in text, path
        for target, _ in LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def load_tool(name: str):
    """A script of tools/ as a module (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_graph() -> dict[str, list[str]]:
    """cifar_lab module -> the cifar_lab modules it imports, as tools/check_imports.py reads them."""
    return load_tool("check_imports").import_graph()


def test_architecture_page_has_the_current_import_graph():
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("## Import graph", 1)[1].split("```", 2)[1]
    documented = {}
    for line in block.strip().splitlines():
        module, _, deps = line.partition("->")
        documented[module.strip()] = sorted(d.strip() for d in deps.split(",") if d.strip() and d.strip() != "-")
    assert documented == import_graph(), "update docs/architecture.md's import graph (tests/test_docs.py prints it)"


def fidelity_tables():
    return load_tool("fidelity_doc_tables")


def test_fidelity_page_is_generated_from_its_run_files(tmp_path):
    out = tmp_path / "fidelity.md"
    fidelity_tables().splice(str(REPO / "tools" / "fidelity_doc.tmpl.md"), str(out))
    assert (REPO / "docs" / "fidelity.md").read_text() == out.read_text(), (
        "regenerate: python tools/fidelity_doc_tables.py splice tools/fidelity_doc.tmpl.md docs/fidelity.md"
    )


def test_readme_300_epoch_column_is_the_recorded_runs():
    """Each preset's README row shows its 300-epoch run's final val accuracy, or says it was not measured."""
    import json

    readme = (REPO / "README.md").read_text()
    for name in fidelity_tables().EXPERIMENTS:
        start = f"| `python -m cifar_lab experiment={name}` |"
        row = next(line for line in readme.splitlines() if line.startswith(start))
        ours = row.rstrip(" |").rsplit("|", 1)[1].strip()
        summary = json.loads((REPO / "docs" / "record-300" / "runs" / name / "summary.json").read_text())
        if summary["status"] == "completed" and summary["epochs"] == 300:
            assert ours.startswith(f"{100 * summary['final']['val_acc']:.2f}%"), (name, ours)
        else:
            assert ours.startswith("not measured"), (name, ours)
