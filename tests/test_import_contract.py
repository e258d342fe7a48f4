"""tools/check_imports.py, the import contract .ci/run checks: layers (entry > packing > run > parts), no cycle."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO
from tests.test_docs import load_tool

checker = load_tool("check_imports")


def package(root, files: dict[str, str]):
    """A fake cifar_lab in ``root`` with ``files`` (path -> source)."""
    pkg = root / "cifar_lab"
    for name, source in {"__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(source)
    return pkg


def check(pkg) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "check_imports.py"), str(pkg)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_cifar_lab_keeps_the_contract():
    assert checker.problems(checker.import_graph()) == []


def test_a_layered_acyclic_package_passes(tmp_path):
    pkg = package(tmp_path, {
        "train.py": "from cifar_lab import build\nfrom cifar_lab.packing import run\n",
        "packing/__init__.py": "", "packing/run.py": "from cifar_lab.build import build\n",
        "build.py": "import cifar_lab.errors\n", "errors.py": "",
    })  # fmt: skip
    assert checker.problems(checker.import_graph(pkg)) == []
    res = check(pkg)
    assert res.returncode == 0 and "import contract: ok" in res.stdout, res


def test_a_cycle_is_refused_even_through_a_function_s_import(tmp_path):
    pkg = package(tmp_path, {
        "files.py": "from cifar_lab.configs import CONF_DIR\n",
        "configs.py": "def f():\n    from cifar_lab import files\n",
    })  # fmt: skip
    res = check(pkg)
    assert res.returncode == 1 and "import cycle: configs <-> files" in res.stderr, res


def test_an_import_into_a_higher_layer_is_refused(tmp_path):
    pkg = package(tmp_path, {
        "train.py": "", "packing/__init__.py": "", "packing/throughput.py": "import cifar_lab.train\n",
        "errors.py": "from cifar_lab.packing import throughput\n",
    })  # fmt: skip
    found = checker.problems(checker.import_graph(pkg))
    assert found == [
        "errors (parts) imports packing.throughput (packing), a layer above it",
        "packing.throughput (packing) imports train (entry), a layer above it",
    ]
    assert check(pkg).returncode == 1


def test_a_module_in_no_layer_is_refused(tmp_path):
    pkg = package(tmp_path, {"newthing.py": ""})
    assert checker.problems(checker.import_graph(pkg)) == ["newthing is in no layer of tools/check_imports.py's LAYERS"]
