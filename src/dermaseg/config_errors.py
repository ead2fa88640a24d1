"""Turn pydantic's validation errors into dermaseg's messages: each names the field's path and
the value given (`optim.lr: must be > 0, got 0.0`); unknown keys come with a did-you-mean.

Used by `dermaseg.config`; nothing here knows the recipe's fields.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

TYPE_ERRORS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true/false",
    "bool_parsing": "true/false", "string_type": "text", "list_type": "a list",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "dict_type": "a mapping",
}


def describe_errors(exc: ValidationError, data: Any, root: type[BaseModel],
                    rules: Mapping[str, str], prefix: str = "") -> str:
    """pydantic's errors as one line per field: `path: must be RULE, got VALUE`, unknown keys
    grouped by section with a did-you-mean.

    Args:
        exc: what pydantic raised while validating `data`.
        root: the model that paths start from (Config); `prefix`: the path of the model that
            was validated below it ("data.augment"), "" for `root` itself.
        rules: the rule text of fields whose constraints alone do not say it well.
    """
    lines: list[str] = []
    unknown: dict[str, list[str]] = {}
    seen: set[str] = set()
    for error in exc.errors():
        names = [str(part) for part in error["loc"] if not isinstance(part, int)]
        path = ".".join(filter(None, [prefix, *names]))
        if error["type"] == "extra_forbidden":
            unknown.setdefault(path.rpartition(".")[0], []).append(names[-1])
        elif path not in seen:
            seen.add(path)
            value = _lookup(data, names, error["input"])
            problem = _problem(error, path, value, root, rules)
            lines.append(f"{path}: {problem}" if path else problem)
    lines += [_unknown_message(root, section, keys) for section, keys in unknown.items()]
    return "; ".join(lines)


def _lookup(data: Any, names: list[str], default: Any) -> Any:
    """The value given at `names` (a whole list, not the item pydantic names)."""
    for name in names:
        if not isinstance(data, Mapping) or name not in data:
            return default
        data = data[name]
    return data


def _problem(error: Any, path: str, value: Any, root: type[BaseModel],
             rules: Mapping[str, str]) -> str:
    kind = error["type"]
    if kind == "value_error":  # a rule across fields: its message names them
        return str(error["ctx"]["error"])
    if kind in TYPE_ERRORS:
        return "must not be empty" if value is None else \
            f"expected {TYPE_ERRORS[kind]}, got {value!r}"
    return f"must be {_rule(path, error, root, rules)}, got {value!r}"


def _rule(path: str, error: Any, root: type[BaseModel], rules: Mapping[str, str]) -> str:
    """What a value of field `path` must be: `rules`, else its range or its choices."""
    if path in rules:
        return rules[path]
    field = field_at(root, path)
    if field is not None:
        bounds = {name: getattr(item, name) for item in field.metadata
                  for name in ("ge", "gt", "le", "lt") if getattr(item, name, None) is not None}
        if bounds:
            return _range_text(bounds)
        choices = _choices(field.annotation)
        if choices:
            return " or ".join([", ".join(choices[:-1]), choices[-1]]) if len(choices) > 1 \
                else choices[0]
    return str(error["msg"]).removeprefix("Input should be ")


def _choices(annotation: Any) -> list[str]:
    """The values of a Literal annotation (also inside `| None`, then with "null")."""
    arms = get_args(annotation) if get_origin(annotation) in (Union, UnionType) \
        else (annotation,)
    values = [str(v) for arm in arms if get_origin(arm) is Literal for v in get_args(arm)]
    return values + ["null"] if values and type(None) in arms else values


def _range_text(bounds: dict[str, float]) -> str:
    """">= 1", "in [0, 1)", ... from pydantic's ge/gt/le/lt bounds."""
    low = next(((k, v) for k, v in bounds.items() if k in ("ge", "gt")), None)
    high = next(((k, v) for k, v in bounds.items() if k in ("le", "lt")), None)
    if low and high:
        return (f"in {'[' if low[0] == 'ge' else '('}{low[1]:g}, "
                f"{high[1]:g}{']' if high[0] == 'le' else ')'}")
    sign = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    name, bound = next(iter(bounds.items()))
    return f"{sign[name]} {bound:g}"


def section_at(root: type[BaseModel], parts: list[str]) -> type[BaseModel] | None:
    """The model class at `parts` below `root` (None when a part is not a section)."""
    model = root
    for part in parts:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def field_at(root: type[BaseModel], path: str) -> FieldInfo | None:
    """The field at dotted `path` below `root` (None when there is none)."""
    *parts, name = path.split(".")
    section = section_at(root, parts)
    return None if section is None else section.model_fields.get(name)


def _unknown_message(root: type[BaseModel], section: str, keys: list[str]) -> str:
    model = section_at(root, section.split(".") if section else [])
    valid = sorted(model.model_fields) if model is not None else []
    close = [match for key in keys for match in difflib.get_close_matches(key, valid, n=1)]
    hint = "; did you mean " + ", ".join(".".join(filter(None, [section, c])) for c in close) \
        + "?" if close else ""
    return (f"{section or 'config'}: unknown field(s) {', '.join(keys)}{hint} "
            f"(valid: {', '.join(valid)})")
