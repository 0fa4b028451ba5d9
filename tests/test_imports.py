"""Every import between fmpe's subpackages and top-level modules runs downward: the graph of
who imports whom, read from the source (imports inside functions included), has no cycle.

The package root, fmpe/__init__.py, gathers the public face and may import anything; it is
not part of the graph, and neither is an import of the root itself.

Lightning is imported only to train: loading and using a saved posterior does without it.
"""

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fmpe"

Edges = dict[tuple[str, str], str]


def module_name(path: Path) -> str:
    """fmpe/tasks/gw.py -> "fmpe.tasks.gw"; fmpe/tasks/__init__.py -> "fmpe.tasks"."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The subpackage or top-level module that a module belongs to: "fmpe.tasks.gw" ->
    "fmpe.tasks"; "fmpe" for the root."""
    return ".".join(module.split(".")[:2])


def imported_modules(path: Path, modules: set[str]) -> Iterator[tuple[str, int]]:
    """(module, line) of every fmpe module that the file at `path` imports, anywhere in it;
    relative imports resolved, and ``from package import submodule`` named as the submodule."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in modules else base, node.lineno


def import_graph() -> Edges:
    """(importing unit, imported unit) -> the first place it happens, "path:line"."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    edges: Edges = {}
    for path in paths:
        source = unit(module_name(path))
        for module, line in imported_modules(path, modules):
            target = unit(module)
            if module.split(".")[0] != "fmpe" or "fmpe" in (source, target) or source == target:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            edges.setdefault((source, target), where)
    return edges


def find_cycle(edges: Edges) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None if it has none."""
    successors: dict[str, list[str]] = {}
    for source, target in sorted(edges):
        successors.setdefault(source, []).append(target)
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for successor in successors.get(node, []):
            if state.get(successor) == "open":
                return [*path[path.index(successor) :], node, successor]
            if successor not in state and (cycle := visit(successor, [*path, node])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(successors):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def describe(cycle: list[str], edges: Edges) -> str:
    return "\n".join(f"{a} -> {b}  ({edges[a, b]})" for a, b in zip(cycle, cycle[1:]))


def test_the_import_graph_has_no_cycle():
    edges = import_graph()
    cycle = find_cycle(edges)
    assert cycle is None, "an import cycle between fmpe's parts:\n" + describe(cycle, edges)


def test_tasks_do_not_import_the_benchmark_and_posteriors_do_not_import_io_files():
    edges = import_graph()
    assert ("fmpe.tasks", "fmpe.benchmark") not in edges
    assert ("fmpe.io", "fmpe.posteriors") not in edges
    assert ("fmpe.diagnostics", "fmpe.plot") not in edges


def test_a_cycle_is_found_and_named():
    edges = {("fmpe.a", "fmpe.b"): "a.py:1", ("fmpe.b", "fmpe.c"): "b.py:2"}
    assert find_cycle(edges) is None
    edges["fmpe.c", "fmpe.b"] = "c.py:3"
    assert find_cycle(edges) == ["fmpe.b", "fmpe.c", "fmpe.b"]
    assert describe(["fmpe.b", "fmpe.c", "fmpe.b"], edges).splitlines() == [
        "fmpe.b -> fmpe.c  (b.py:2)",
        "fmpe.c -> fmpe.b  (c.py:3)",
    ]


def test_loading_and_using_a_posterior_does_not_import_lightning(gaussian_posterior, tmp_path):
    """Nor does the benchmark's scoring (its workers only load posteriors); the names that
    need Lightning load on first use."""
    path = tmp_path / "posterior.fmpe"
    gaussian_posterior.save(path)
    script = (
        "import sys, torch, fmpe\n"
        "from fmpe.benchmark.evaluation import evaluate_saved\n"
        f"posterior = fmpe.load({str(path)!r})\n"
        "x = torch.zeros(2)\n"
        "posterior.log_prob(posterior.sample(5, x), x)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning'}))\n"
        "print(fmpe.FMPE.__name__, fmpe.TrainingSettings.__name__, 'FMPE' in dir(fmpe))\n"
        "import fmpe.benchmark\n"
        "print(fmpe.benchmark.Run.__name__, fmpe.benchmark.load_card.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "FMPE TrainingSettings True", "Run load_card"]
