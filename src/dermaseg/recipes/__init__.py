"""The recipes shipped inside the package (the YAML files beside this module), usable by name.

Everywhere a recipe is taken (`train --config`, `plan --base`, `load_config`) a file path
works, and so does a shipped recipe's name: `--config cpu_small`. `recipe_path` resolves what
was given; `recipe_summaries` and `recipe_text` back `dermaseg recipes list/show`
(`dermaseg.config.recipe_schema`, `schema`). Torch-free.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from dermaseg.errors import UsageError

RECIPES_DIR = Path(__file__).resolve().parent
SUFFIXES = (".yaml", ".yml")


def shipped_recipes() -> dict[str, Path]:
    """{name: file} of the shipped recipes, sorted by name."""
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_path(recipe: str | Path, option: str | None = None) -> Path:
    """The file of a recipe given as a path, or as a shipped recipe's name ("cpu_small", also
    "cpu_small.yaml"); a file of that name in the working directory comes first.

    Args:
        recipe: what the user gave.
        option: how the message names it ("--config", "--base"); None: the recipe alone.

    Raises:
        UsageError: neither a file nor a shipped name: suggests the closest file beside it or
            shipped name, and lists the shipped recipes.
    """
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = path.stem if path.suffix in SUFFIXES else path.name
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    given = f"{option} {recipe}" if option else str(recipe)
    if path.is_dir():
        raise UsageError(f"{given}: a folder, not a recipe file (shipped recipes: "
                         f"{', '.join(shipped)})")
    raise UsageError(f"{given}: no such recipe file, nor a shipped recipe"
                     f"{_suggestion(path, name, shipped)}")


def _suggestion(path: Path, name: str, shipped: dict[str, Path]) -> str:
    """"; did you mean X? (shipped recipes: ...; recipes in FOLDER: ...)" for a missing recipe:
    the closest file beside `path` first, else the closest shipped name."""
    folder = path.parent if path.parent != Path(".") and path.parent.is_dir() else None
    beside = sorted(p.name for p in folder.iterdir() if p.suffix in SUFFIXES) if folder else []
    close = difflib.get_close_matches(path.name, beside, n=1, cutoff=0.5)
    if folder is not None and close:
        hint = f"; did you mean {folder / close[0]}?"
    else:
        close = difflib.get_close_matches(name, list(shipped), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
    listing = f"shipped recipes: {', '.join(shipped)}"
    if beside:
        listing += f"; recipes in {folder}: {', '.join(beside)}"
    return f"{hint} ({listing}; `dermaseg recipes list` describes them)"


def shipped_recipe(name: str) -> Path:
    """The file of the shipped recipe `name` ("cpu_small"; "cpu_small.yaml" also works).

    Raises:
        UsageError: no shipped recipe of that name (the message lists them).
    """
    shipped = shipped_recipes()
    stem = Path(name).stem if Path(name).suffix in SUFFIXES else name
    if stem in shipped:
        return shipped[stem]
    close = difflib.get_close_matches(stem, list(shipped), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UsageError(f"{name}: no shipped recipe of that name{hint} (shipped recipes: "
                     f"{', '.join(shipped)})")


def recipe_summaries() -> list[tuple[str, str]]:
    """(name, one-line description) of each shipped recipe: the first line of its leading
    comment."""
    return [(name, _summary(path)) for name, path in shipped_recipes().items()]


def _summary(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text:
            return text
    return ""


def recipe_text(name: str) -> str:
    """The YAML text of the shipped recipe `name`, comments included.

    Raises:
        UsageError: no shipped recipe of that name.
    """
    return shipped_recipe(name).read_text(encoding="utf-8")
