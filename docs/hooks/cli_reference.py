"""MkDocs hook: the CLI reference page, generated at build time from the Typer app.

Every command of `dermaseg.cli.app` (as Click sees it: `typer.main.get_command`) becomes a
section with its usage line, its help text and a table of its arguments and options (each
one's help record: what `--help` prints for it), in the order `dermaseg --help` lists them.
Nothing is written by hand, so the page cannot drift from the commands.
"""

from __future__ import annotations

import html
import inspect
import re

import typer.main
from mkdocs.structure.files import File

PAGE = "reference/cli.md"
INTRO = """# Command-line reference

Generated from the Typer application (`dermaseg.cli.app`) each time the site is built: it is
what `dermaseg COMMAND --help` says (every command also takes `--help`). Run the installed
command as `.venv/bin/dermaseg` after `make demo` or `make test`, or `source
.venv/bin/activate` first.
"""
_CODE = re.compile(r"(`[^`]*`)")
_ITEM = re.compile(r"^([-*] |\d+[.)] )")


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


def _help(command) -> str:
    """The help text as Markdown: its paragraphs, list items as a list, indented lines (an
    example) as a code block; a paragraph marked with Click's \\b keeps its lines."""
    text = inspect.cleandoc(command.help or "").partition("\f")[0]
    blocks = []
    for paragraph in text.split("\n\n"):
        if paragraph.startswith("\b"):
            lines = paragraph.lstrip("\b").strip("\n").splitlines()
            blocks.append("<br>\n".join(_text(line) for line in lines))
            continue
        prose, items, example = [], [], []
        for line in paragraph.splitlines():
            if line[:1].isspace() and not items:
                example.append(line)
            elif _ITEM.match(line):
                items.append("- " + _text(_ITEM.sub("", line)))
            elif items and line[:1].isspace():
                items[-1] += " " + _text(line.strip())
            else:
                prose.append(_text(line.strip()))
        if prose:
            blocks.append("\n".join(prose))
        if items:
            blocks.append("\n".join(items))
        if example:
            blocks.append("```text\n" + "\n".join(inspect.cleandoc("\n".join(example))
                                                    .splitlines()) + "\n```")
    return "\n\n".join(block for block in blocks if block.strip())


def _table(params: list, ctx) -> str:
    """Each parameter's help record: what `--help` prints for it (names and type; help,
    default, range, required)."""
    rows = ["| argument / option | description |", "|---|---|"]
    for param in params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, description = record
        # names: "-o, --out <path>" / "MODEL <str>"; code spans for the switches
        switches, _, kind = names.partition(" <")
        shown = ", ".join(f"`{name.strip()}`" for name in switches.split(","))
        if kind:
            shown += " " + _cell("<" + kind)
        description = description.replace("\\[", "[")  # Rich markup's escape
        rows.append(f"| {shown} | {_cell(description)} |")
    return "\n".join(rows)


def _anchor(path: list[str]) -> str:
    """`dermaseg data prepare` -> dermaseg-data-prepare (what pages link to)."""
    return "-".join(path)


def _section(command, path: list[str], ctx) -> list[str]:
    name = " ".join(path)
    level = min(max(2, len(path)), 4)  # dermaseg and its commands: ##; data's commands: ###
    usage = " ".join(command.collect_usage_pieces(ctx))
    heading = f"{'#' * level} `{name}` {{ #{_anchor(path)} }}"
    out = [heading, "", f"```text\n{name} {usage}\n```", "",
           _help(command), ""]
    # every command has --help: the intro says so once
    params = [p for p in command.get_params(ctx)
              if not getattr(p, "hidden", False) and p.name != "help"]
    if params:
        out += [_table(params, ctx), ""]
    if hasattr(command, "list_commands"):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is None or sub.hidden:
                continue
            with _context(sub, sub_name, ctx) as sub_ctx:
                out += _section(sub, [*path, sub_name], sub_ctx)
    return out


def _context(command, name: str, parent=None):
    """The command's own Click context class (Typer ships its own Click)."""
    return command.context_class(command, info_name=name, parent=parent)


def _summary(group, ctx) -> str:
    rows = ["| command | what it does |", "|---|---|"]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        link = f"[`{name}`](#{_anchor(['dermaseg', name])})"
        rows.append(f"| {link} | {_cell(command.get_short_help_str(1000))} |")
    return "\n".join(rows)


def render() -> str:
    """The whole page: a summary table, then one section per command and sub-command."""
    import dermaseg.cli

    root = typer.main.get_command(dermaseg.cli.app)
    with _context(root, "dermaseg") as ctx:
        body = _section(root, ["dermaseg"], ctx)
        return "\n".join([INTRO, _summary(root, ctx), "", *body])


def on_files(files, config):
    """Add the generated page to the site (it has no file under docs/)."""
    files.append(File.generated(config, PAGE, content=render()))
    return files
