"""`--help` of every command, rendered as an 80-column terminal shows it: the docstring's words
all there and in order, no line broken where the next word would have fitted (a sentence cut
in two), no `<bool>` after a flag, arguments as NAME in the usage line, and the commands in
the order of the pipeline."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from dermaseg.cli import app
from dermaseg.commands.helpstyle import reflow

WIDTH = 80
TEXT_WIDTH = WIDTH - 2  # the help text is padded by one column on each side
PIPELINE = ["data", "plan", "train", "cv-summary", "evaluate", "calibrate", "compare", "predict",
            "export", "serve", "demo", "doctor", "recipes"]


def commands(group=None, path=()):
    """(argv path, click command) of every group and command under the root."""
    group = group or typer.main.get_command(app)
    found = [(path, group)]
    for name, command in getattr(group, "commands", {}).items():
        found += commands(command, (*path, name)) if hasattr(command, "commands") \
            else [((*path, name), command)]
    return found


def render(path, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def description(output: str) -> list[list[str]]:
    """The help text's paragraphs (between the usage line and the first panel), each as its
    rendered lines."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:"))
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    paragraphs, current = [], []
    for line in lines[start + 1:end]:
        if line.strip():
            current.append(line[1:].rstrip())  # the one-column padding
        elif current:
            paragraphs.append(current)
            current = []
    return [*paragraphs, current] if current else paragraphs


def words(text: str) -> list[str]:
    return text.replace("\\[", "[").split()


COMMANDS = commands()


def test_every_command_is_rendered():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "data", "data prepare", "train", "evaluate", "recipes show"} <= names


@pytest.mark.parametrize("path,command", COMMANDS,
                         ids=[" ".join(path) or "dermaseg" for path, _ in COMMANDS])
def test_help_reads_as_written(path, command, monkeypatch):
    output = render(path, monkeypatch)
    paragraphs = description(output)
    shown = [word for paragraph in paragraphs for line in paragraph for word in line.split()]
    assert shown == words(reflow(command.help) or ""), f"dermaseg {' '.join(path)} --help"
    for paragraph in paragraphs:
        for line, following in zip(paragraph, paragraph[1:], strict=False):
            if re.match(r"^(\s|[-*] )", following):
                continue  # a list item or an indented example starts its own line
            first = following.split()[0]
            assert len(line) + 1 + len(first) > TEXT_WIDTH, (
                f"dermaseg {' '.join(path)} --help breaks a line early: {line!r} / "
                f"{following!r}")
    usage = next(line for line in output.splitlines() if "Usage:" in line)
    assert "{" not in usage and "<" not in usage, usage
    assert "<bool>" not in output


def test_commands_are_listed_in_the_order_of_the_pipeline(monkeypatch):
    output = render((), monkeypatch)
    panel = output[output.index("Commands"):]
    listed = re.findall(r"^│ ([a-z-]+) ", panel, flags=re.MULTILINE)
    assert listed == PIPELINE


def test_reflow_joins_lines_but_keeps_list_items():
    text = ("First line\n    goes on.\n\n    A paragraph\n    cut in two.\n\n    - one\n"
            "    - two\n      more\n\n    Example:\n        dermaseg demo")
    assert reflow(text) == ("First line goes on.\n\nA paragraph cut in two.\n\n- one\n- two more"
                            "\n\nExample:\n    dermaseg demo")
