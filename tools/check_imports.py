"""The import contract of cifar_lab, checked from the source (what import-linter's layers contract checks).

Layers, top to bottom; a module imports only from its own layer or the ones below:

    entry    the command lines: python -m cifar_lab, .evaluate, .predict, .bench, .report, .configdoc
    packing  packed sweeps (cifar_lab/packing/)
    run      one run's lifecycle and its files: build, recording, checkpoints, summary, resume, sweeps
    parts    what a run is made of: configs and their checks, models, data, the LightningModule, compat

and no cycle anywhere. An import counts at module level and inside a function alike. A module that no
layer names is a breach too, so a new module is placed on purpose.

    python tools/check_imports.py        # exit 1 with one line per breach or cycle
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Module names without the package prefix; "x.*" is every module of package x. An exact name wins.
LAYERS: dict[str, tuple[str, ...]] = {
    "entry": ("__main__", "train", "evaluate", "predict", "bench", "report.__main__", "configdoc"),
    "packing": ("packing", "packing.*"),
    "run": (
        "lifecycle",
        "build",
        "inference",
        "recording",
        "resilience",
        "resume",
        "rundir",
        "summary",
        "preemption",
        "distributed",
        "launchers",
        "sweep",
        "timing",
    ),  # fmt: skip
    "parts": (
        "cifar_lab",
        "errors",
        "files",
        "console",
        "configs",
        "schema",
        "model_options",
        "hints",
        "trusted",
        "plan",
        "fast",
        "flops",
        "task",
        "plots",
        "compat",
        "models",
        "models.*",
        "data",
        "data.*",
        "report",
        "report.*",
    ),  # fmt: skip
}


def module_name(package_dir: Path, path: Path) -> str:
    """``packing/run.py`` -> ``packing.run``; the package's ``__init__.py`` -> the package's own name."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts) or package_dir.name


def import_graph(package_dir: Path = REPO / "cifar_lab") -> dict[str, list[str]]:
    """Module -> the package's modules it imports (top-level or inside a function), from the source."""
    package = package_dir.name
    prefix = package + "."

    def short(name: str) -> str:
        return name.removeprefix(prefix) if name != package else package

    def is_module(name: str) -> bool:
        target = package_dir.parent / Path(*name.split("."))
        return target.with_suffix(".py").exists() or (target / "__init__.py").exists()

    graph = {}
    for path in sorted(package_dir.rglob("*.py")):
        module = module_name(package_dir, path)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and (node.module + ".").startswith(prefix):
                for alias in node.names:  # `from pkg import submodule` imports the submodule, else pkg
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if is_module(sub) else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if (a.name + ".").startswith(prefix))
        deps = {short(d) for d in deps} - {module}
        graph[module] = sorted(deps)
    return graph


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in LAYERS (0: the top), or None if no layer names it."""
    exact = [i for i, names in enumerate(LAYERS.values()) if module in names]
    if exact:
        return exact[0]
    for i, names in enumerate(LAYERS.values()):
        if any(n.endswith(".*") and module.startswith(n[:-1]) for n in names):
            return i
    return None


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def problems(graph: dict[str, list[str]]) -> list[str]:
    """One line per module in no layer, per import into a higher layer, per cycle."""
    names = list(LAYERS)
    out = [f"{m} is in no layer of tools/check_imports.py's LAYERS" for m in graph if layer_of(m) is None]
    for module, deps in graph.items():
        here = layer_of(module)
        for dep in deps:
            there = layer_of(dep)
            if here is not None and there is not None and there < here:
                out.append(f"{module} ({names[here]}) imports {dep} ({names[there]}), a layer above it")
    out += ["import cycle: " + " <-> ".join(group) for group in cycles(graph)]
    return out


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else REPO / "cifar_lab"
    found = problems(import_graph(package_dir))
    for line in found:
        print(line, file=sys.stderr)
    print(f"import contract: {'ok' if not found else f'{len(found)} problem(s)'} ({package_dir.name}, layers "
          f"{' > '.join(LAYERS)})")  # fmt: skip
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
