"""The layers point one way: no module of glif_jax/ or experiments/ imports, at its top or lazily
inside a function, a module that imports it back, and none imports another's private names."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("glif_jax", "experiments")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, modules) -> tuple[set[str], list[str]]:
    """The project modules ``name`` imports anywhere in its file, and the private names it
    imports from them."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found, private = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
                    if alias.name.startswith("_"):
                        private.append(f"{name} imports {base}.{alias.name}")
    return found - {name}, private


def test_the_import_graph_has_no_cycle_and_no_private_import():
    modules = _modules()
    graph, private = {}, []
    for name, path in modules.items():
        graph[name], names = _imports(name, path, modules)
        private += names
    assert not private, private

    cycles = []
    state = dict.fromkeys(graph, "new")

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state[target] == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif state[target] == "new":
                visit(target, [*stack, target])
        state[node] = "done"

    for name in sorted(graph):
        if state[name] == "new":
            visit(name, [name])
    assert not cycles, cycles
    assert graph["experiments.main"] >= {"experiments.train", "experiments.analyze"}
