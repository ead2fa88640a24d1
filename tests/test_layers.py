"""The command layer sits on top: `dermaseg.commands` parses options and calls the library.

Nothing outside `commands/` and `cli.py` imports it, and no command module imports another
(options several commands share live in `commands/options.py`, which holds no command).
Read from the source with `ast`, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dermaseg"
COMMANDS = "dermaseg.commands"
SHARED = {f"{COMMANDS}.options"}  # imported by command modules; not a command itself


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (type hints, not run)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for body in node.body for inner in ast.walk(body))
    return hidden


def imported(path: Path) -> set[str]:
    """Every module `path` imports at run time, absolute (imports under TYPE_CHECKING do not
    count); `from X import name` counts as X.name too (name may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    hidden = type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_walk_sees_the_package():
    names = {module_name(path) for path in modules()}
    assert {"dermaseg.cli", "dermaseg.commands.export", "dermaseg.export.parity"} <= names


@pytest.mark.parametrize("path", modules(), ids=lambda path: module_name(path))
def test_only_the_cli_imports_the_commands(path):
    name = module_name(path)
    if name == "dermaseg.cli" or under(name, COMMANDS):
        return
    wrong = sorted(module for module in imported(path) if under(module, COMMANDS))
    assert not wrong, f"{path}: library code imports the command layer: {', '.join(wrong)}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "commands").glob("*.py")),
                         ids=lambda path: module_name(path))
def test_no_command_module_imports_another(path):
    name = module_name(path)
    wrong = sorted(module for module in imported(path)
                   if under(module, COMMANDS) and module not in (COMMANDS, name)
                   and not any(under(module, shared) for shared in SHARED))
    assert not wrong, f"{path}: imports another command module: {', '.join(wrong)}"


def test_the_check_catches_each_kind_of_import(tmp_path, monkeypatch):
    fake = tmp_path / "dermaseg"
    (fake / "commands").mkdir(parents=True)
    (fake / "commands" / "predict.py").write_text("x = 1\n")
    sources = {
        "lib.py": "def f():\n    from dermaseg.commands.predict import x\n",
        "absolute.py": "import dermaseg.commands.export\n",
        "package.py": "from dermaseg import commands\n",
        "relative.py": "from .commands import predict\n",
    }
    for file, text in sources.items():
        (fake / file).write_text(text)
    (fake / "commands" / "evaluate.py").write_text("from . import predict, options\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    for file in sources:
        with pytest.raises(AssertionError, match="imports the command layer"):
            test_only_the_cli_imports_the_commands(fake / file)
    # options is allowed: only predict is named
    with pytest.raises(AssertionError, match=r"command module: dermaseg\.commands\.predict\b"):
        test_no_command_module_imports_another(fake / "commands" / "evaluate.py")


def stage(module: str) -> str:
    """The package a module belongs to (`dermaseg.infer.predictor` -> `dermaseg.infer`); a
    top-level module is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def stage_graph() -> dict[str, set[str]]:
    """Which stage imports which, over every import (those inside functions too)."""
    graph: dict[str, set[str]] = {}
    names = {module_name(path) for path in modules()}
    for path in modules():
        source = stage(module_name(path))
        targets = {stage(module) for module in imported(path)
                   if under(module, "dermaseg") and module in names}
        graph.setdefault(source, set()).update(targets - {source})
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path, or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_stages():
    found = cycle(stage_graph())
    assert found is None, f"stages import each other in a cycle: {' -> '.join(found)}"


@pytest.mark.parametrize("path", modules(), ids=lambda path: module_name(path))
def test_no_module_imports_a_private_name_of_another(path):
    wrong = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dermaseg"):
            wrong += [f"{node.module}.{alias.name}" for alias in node.names
                      if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not wrong, f"{path}: imports private names: {', '.join(wrong)}"
