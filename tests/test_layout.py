"""The package's layers: every import points down (io → data → model → evaluation → archive →
callbacks → training → serving → commands), no module imports another in a cycle (type-only imports aside), and a command
imports no other command but the shared options."""

import ast
from pathlib import Path

import busi

PACKAGE = Path(busi.__file__).parent
LAYERS = (
    "",
    "io",
    "data",
    "model",
    "evaluation",
    "archive",
    "callbacks",
    "training",
    "serving",
    "commands",
)  # "": busi/*.py


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


def layer(module: str) -> str:
    """`busi.model.network` → `model`; busi's own top-level modules (errors, progress) → ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


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
    assert "busi.model.classifier" in graph and "busi.data.catalog" in graph  # the graph was really read


def test_every_import_points_down_the_layers():
    upward = [
        f"{module} → {imported}"
        for module, imports in import_graph().items()
        for imported in imports
        if LAYERS.index(layer(imported)) > LAYERS.index(layer(module))
    ]
    assert not upward, "imports that point up the layers: " + "; ".join(sorted(upward))
    assert {layer(m) for m in import_graph()} == set(LAYERS)  # every layer holds modules


def test_commands_share_only_their_options():
    graph = import_graph()
    between = [
        f"{module} → {imported}"
        for module, imports in graph.items()
        if layer(module) == "commands"
        for imported in imports
        if layer(imported) == "commands" and imported not in ("busi.commands", "busi.commands.options")
    ]
    assert not between, "; ".join(between)


def test_cross_validation_does_not_import_the_training_command_wiring():
    graph = import_graph()
    assert "busi.training.cli" not in graph["busi.commands.cv"] and "busi.training.run" in graph["busi.commands.cv"]
    assert "busi.model.inference" not in graph["busi.model.network"]
    assert "busi.model.classifier" not in graph["busi.model.inference"]
