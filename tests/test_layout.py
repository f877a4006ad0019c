"""The package's import graph has no cycles (type-only imports aside), and busi-cv trains without the
busi-train command's module."""

import ast
from pathlib import Path

import busi

PACKAGE = Path(busi.__file__).parent


def runtime_imports(path: Path) -> set[str]:
    """The busi modules `path` imports when it runs (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("busi"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("busi")}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {m for m in runtime_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_busi_modules_import_each_other_without_cycles():
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' → '.join((*path, module))}"
        if module in done:
            return
        for imported in graph[module]:
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    assert "busi.model" in graph and "busi.data.catalog" in graph  # the graph was really read


def test_cross_validation_does_not_import_the_training_command_wiring():
    graph = import_graph()
    assert "busi.cli" not in graph["busi.cv"] and "busi.training" in graph["busi.cv"]
    assert "busi.inference" not in graph["busi.network"] and "busi.model" not in graph["busi.inference"]
