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
