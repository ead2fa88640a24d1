"""How `--help` reads: each docstring paragraph reflows to the terminal's width (Typer keeps
the source's line breaks, which cut sentences in two at 80 columns), flags without a `<bool>`
type, arguments in the usage line as NAME and [NAME] (click's convention, not `{name}`), and
commands in the order of the pipeline. Used by `dermaseg.cli` alone: not a command."""

from __future__ import annotations

import inspect
import re

from typer.core import TyperCommand, TyperGroup

# The order `--help` lists a group's commands in; a command not named here comes last.
COMMAND_ORDER = {
    "dermaseg": ("data", "plan", "train", "cv-summary", "evaluate", "calibrate", "compare",
                 "predict", "export", "serve", "demo", "doctor", "recipes"),
    "data": ("check", "prepare", "synth", "download"),
}
LIST_ITEM = re.compile(r"^([-*] |\d+[.)] )")


def reflow(text: str | None) -> str | None:
    """`text` with every paragraph's lines joined into one, so the help renderer wraps it at
    the terminal's width. A list item starts a line of its own (its indented continuation
    lines join it), and so does an indented line outside a list (an example)."""
    if not text:
        return text
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        in_item = False
        for line in paragraph.split("\n"):
            item = bool(LIST_ITEM.match(line))
            if lines and not item and (in_item or not line[:1].isspace()):
                lines[-1] = f"{lines[-1]} {line.strip()}"
            else:
                lines.append(line.rstrip())
                in_item = item
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def plain_flags(params: list) -> list:
    """`--tta`, not `--tta <bool>`: flags get an empty metavar."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose help reflows, whose flags show no type and whose arguments read as
    NAME in the usage line and the Arguments panel."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["help"] = reflow(kwargs.get("help"))
        super().__init__(*args, **kwargs)

    def get_params(self, ctx):
        params = plain_flags(super().get_params(ctx))
        for param in params:
            if param.param_type_name == "argument" and param.metavar is None:
                param.metavar = (param.name or "").upper() + ("..." if param.nargs != 1 else "")
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or ""
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(TyperGroup):
    """A group whose help reflows, listing its commands in COMMAND_ORDER."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["help"] = reflow(kwargs.get("help"))
        super().__init__(*args, **kwargs)

    def get_params(self, ctx):
        return plain_flags(super().get_params(ctx))

    def list_commands(self, ctx) -> list[str]:
        order = COMMAND_ORDER.get(self.name or "", ())
        names = list(self.commands)
        return sorted(names, key=lambda name: (order.index(name) if name in order
                                               else len(order), names.index(name)))


def apply(app) -> None:
    """Make every command and group of the Typer `app` (and of its sub-apps) use Command and
    Group, unless it names a class of its own."""
    if not app.info.cls or app.info.cls is TyperGroup:
        app.info.cls = Group
    for info in app.registered_commands:
        if not info.cls or info.cls is TyperCommand:
            info.cls = Command
    for group in app.registered_groups:
        if not group.cls or group.cls is TyperGroup:
            group.cls = Group
        apply(group.typer_instance)
