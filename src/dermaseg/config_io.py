"""Recipes in and out: a YAML file (or a shipped recipe's name) with `--set` overrides to a
validated Config, a checkpoint's config dict back to a Config, the saved YAML, the JSON
Schema."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from dermaseg.config import Config, validation_message
from dermaseg.config_errors import section_at
from dermaseg.errors import DermasegError, UsageError

# What inference reads from a checkpoint's config: training settings that a later release
# checks more strictly must not stop an old model from predicting.
INFERENCE_FIELDS = ("model.", "data.image_size", "data.mean", "data.std", "data.colour_constancy",
                    "data.colour_constancy_p", "train.threshold")


def config_from_dict(data: dict[str, Any] | None, where: str = "config",
                     fields: tuple[str, ...] | None = None) -> Config:
    """Build a validated Config from a nested dict (a recipe, a checkpoint's config).

    With `fields` (names or prefixes, e.g. INFERENCE_FIELDS for a checkpoint's config) only
    those are held to today's rules: a value elsewhere that this release refuses, or a key it
    no longer knows, takes the default instead (inference does not read them), and the rules
    across fields are not applied.

    Raises:
        DermasegError: naming `where` and the field when a field is unknown or a value wrong.
    """
    data = data or {}
    context = {"fields": fields} if fields is not None else None
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        error = exc
    if fields is not None:  # once more without the values outside `fields`
        lenient = copy.deepcopy(data)
        for problem in error.errors():
            if not _among(problem["loc"], fields):
                _drop(lenient, problem["loc"])
        try:
            return Config.model_validate(lenient, context=context)
        except ValidationError as exc:
            error, data = exc, lenient
    message = validation_message(error, data)
    raise DermasegError(message if where == "config" else f"{where}: {message}") from None


def _among(loc: tuple[Any, ...], fields: tuple[str, ...]) -> bool:
    """Whether the error at `loc` concerns one of `fields` (or the section holding one)."""
    path = ".".join(str(part) for part in loc if not isinstance(part, int))
    return any(path.startswith(f) or f.startswith(f"{path}.") for f in fields if path)


def _drop(data: Any, loc: tuple[Any, ...]) -> None:
    """Remove the key at `loc` (up to its first list index) from nested dicts."""
    names = [part for part in loc if isinstance(part, str)]
    *parents, name = names if names else [""]
    for part in parents:
        data = data.get(part) if isinstance(data, dict) else None
    if isinstance(data, dict):
        data.pop(name, None)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML recipe file (empty file: {}).

    Raises:
        UsageError: no such file.
        DermasegError: naming the file: unreadable, not UTF-8, not valid YAML.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such recipe file") from exc
    except OSError as exc:
        raise DermasegError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise DermasegError(f"{path}: not a YAML text file (not UTF-8: {exc.reason} at "
                            f"byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise DermasegError(f"{path}: not valid YAML ({exc})") from exc
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a recipe (a YAML file, or a shipped recipe's name such as "cpu_small"; defaults
    when `path` is None) and apply `section.key=value` overrides; validated once.

    Raises:
        UsageError: no such file nor shipped recipe (the message lists the shipped names), or
            a wrong --set (named as given).
        DermasegError: naming the file and field: bad YAML, an unknown key, a wrong value.
    """
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        from dermaseg.recipes import recipe_path

        file = recipe_path(path)
        data, where = read_recipe(file), str(file)
    merged = copy.deepcopy(data)
    for item in overrides or []:
        apply_override(merged, item)
    try:
        return config_from_dict(merged, where)
    except DermasegError:
        if _error_of(data, where) is None and (named := _override_error(data, overrides or [])):
            raise named from None  # the recipe alone is valid: that --set is wrong
        raise


def _error_of(data: dict[str, Any], where: str) -> DermasegError | None:
    try:
        config_from_dict(copy.deepcopy(data), where)
    except DermasegError as exc:
        return exc
    return None


def _override_error(data: dict[str, Any], overrides: list[str]) -> UsageError | None:
    """The error of the first override that is wrong on its own, named as given."""
    for item in overrides:
        alone = copy.deepcopy(data)
        apply_override(alone, item)
        error = _error_of(alone, "config")
        if error is not None:
            return UsageError(f"--set {item}: {error}")
    return None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists, null).

    Raises:
        UsageError: naming the override: no `=`, a key that is not a field (with a
            did-you-mean), or a part of the key that is a value.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item}: expected section.key=value")
    parts = key.strip().split(".")
    _check_override_key(item, parts)
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"--set {item}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def _check_override_key(item: str, parts: list[str]) -> None:
    """Raises UsageError naming the override when its key is not a field of Config."""
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        section = section_at(Config, parts[:depth])
        if section is None:
            raise UsageError(f"--set {item}: {where} is a value, not a section")
        names = sorted(section.model_fields)
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {'.'.join([*parts[:depth], close[0]])}?" if close else ""
            raise UsageError(f"--set {item}: no field {part!r} in {where or 'the config'}{hint}"
                             f" (valid: {', '.join(names)})")


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from dermaseg.fileio import write_bytes_atomic

    write_bytes_atomic(path, config.to_yaml().encode())


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe (pydantic's, of `Config`), for editors that complete and
    check YAML."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Config.model_json_schema()}
