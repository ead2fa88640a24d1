"""MkDocs hook: the CLI reference page, generated at build time from the Typer app.

Every command of `dermaseg.cli.app` (as Click sees it: `typer.main.get_command`) becomes a
section with its usage line, its help text and a table of its arguments and options, in the
order `dermaseg --help` lists them. Nothing is written by hand, so the page cannot drift from
the commands.
"""

from __future__ import annotations

import html
import inspect
import re

import click
import typer.main
from mkdocs.structure.files import File

PAGE = "reference/cli.md"
INTRO = """# Command-line reference

Generated from the Typer application (`dermaseg.cli.app`) each time the site is built: it is
what `dermaseg COMMAND --help` says. Run the installed command as `.venv/bin/dermaseg` after
`make demo` or `make test`, or `source .venv/bin/activate` first.
"""
_CODE = re.compile(r"(`[^`]*`)")


def _text(value: str) -> str:
    """Help text as Markdown: code spans kept, everything else shown literally."""
    parts = []
    for part in _CODE.split(value):
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            parts.append(part)
        else:
            escaped = html.escape(part, quote=False)
            parts.append(re.sub(r"([\\*_\[\]])", r"\\\1", escaped))
    return "".join(parts)


def _cell(value: str) -> str:
    return _text(" ".join(value.split())).replace("|", "&#124;")


def _help(command: click.Command) -> str:
    """The docstring's paragraphs; a paragraph marked with Click's \\b keeps its lines."""
    text = inspect.cleandoc(command.help or "").partition("\f")[0]
    paragraphs = []
    for paragraph in text.split("\n\n"):
        if paragraph.startswith("\b"):
            lines = paragraph.lstrip("\b").strip("\n").splitlines()
            paragraphs.append("<br>\n".join(_text(line) for line in lines))
        elif paragraph.strip():
            paragraphs.append(_text(paragraph.strip()))
    return "\n\n".join(paragraphs)


def _default(param: click.Parameter) -> str:
    if getattr(param, "show_default", None) is False or param.default in (None, False, ()):
        return ""
    if callable(param.default):
        return ""
    if isinstance(param.default, (list, tuple)):
        return ", ".join(str(item) for item in param.default)
    if param.default is True and getattr(param, "secondary_opts", None):
        return param.opts[-1]
    return str(param.default)


def _names(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return f"`{param.human_readable_name.upper()}`"
    names = [*param.opts, *getattr(param, "secondary_opts", [])]
    return ", ".join(f"`{name}`" for name in names)


def _kind(param: click.Parameter) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    kind = param.type.name if param.type else ""
    if param.multiple or (isinstance(param, click.Argument) and param.nargs == -1):
        kind += ", several"
    return kind


def _table(params: list[click.Parameter]) -> str:
    rows = ["| argument / option | type | default | required | description |",
            "|---|---|---|---|---|"]
    for param in params:
        required = "yes" if param.required else ""
        description = getattr(param, "help", None) or ""
        rows.append(f"| {_names(param)} | {_cell(_kind(param))} | {_cell(_default(param))} "
                    f"| {required} | {_cell(description)} |")
    return "\n".join(rows)


def _section(command: click.Command, path: list[str], ctx: click.Context) -> list[str]:
    name = " ".join(path)
    depth = min(len(path), 4)
    usage = " ".join(command.collect_usage_pieces(ctx))
    out = [f"{'#' * (depth + 1)} `{name}`", "", f"```text\n{name} {usage}\n```", "",
           _help(command), ""]
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    if params:
        out += [_table(params), ""]
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is None or sub.hidden:
                continue
            with click.Context(sub, info_name=sub_name, parent=ctx) as sub_ctx:
                out += _section(sub, [*path, sub_name], sub_ctx)
    return out


def _summary(group: click.Group, ctx: click.Context) -> str:
    rows = ["| command | what it does |", "|---|---|"]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        anchor = "dermaseg-" + name
        rows.append(f"| [`{name}`](#{anchor}) | {_cell(command.get_short_help_str(200))} |")
    return "\n".join(rows)


def render() -> str:
    """The whole page: a summary table, then one section per command and sub-command."""
    import dermaseg.cli

    root = typer.main.get_command(dermaseg.cli.app)
    with click.Context(root, info_name="dermaseg") as ctx:
        body = _section(root, ["dermaseg"], ctx)
        return "\n".join([INTRO, _summary(root, ctx), "", *body])


def on_files(files, config):
    """Add the generated page to the site (it has no file under docs/)."""
    files.append(File.generated(config, PAGE, content=render()))
    return files
