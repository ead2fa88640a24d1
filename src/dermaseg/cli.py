"""The `dermaseg` command: `dermaseg <group> <command>`; thin wrappers over the library.

Every user-facing problem is a DermasegError: printed as one line naming the file or field,
exit code 1 (2 for usage errors), no traceback.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import typer

from dermaseg import __version__
from dermaseg.commands import calibrate as calibrate_command
from dermaseg.commands import compare as compare_command
from dermaseg.commands import data as data_commands
from dermaseg.commands import evaluate as evaluate_command
from dermaseg.commands import export as export_command
from dermaseg.commands import plan as plan_command
from dermaseg.commands import predict as predict_command
from dermaseg.commands import recipes as recipes_commands
from dermaseg.commands import serve as serve_command
from dermaseg.commands import train as train_command
from dermaseg.commands.demo import demo
from dermaseg.commands.doctor import doctor
from dermaseg.commands.helpstyle import Group
from dermaseg.commands.helpstyle import apply as apply_help_style
from dermaseg.errors import DermasegError

app = typer.Typer(
    name="dermaseg",
    help="Skin-lesion segmentation in dermoscopy images with DeepLab-v3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
)
app.add_typer(data_commands.app, name="data")
app.add_typer(recipes_commands.app, name="recipes")
app.command("train")(train_command.train)
app.command("cv-summary")(train_command.cv_summary)
app.command("plan")(plan_command.plan)
app.command()(doctor)
app.command()(demo)
app.command("predict")(predict_command.predict)
app.command("evaluate")(evaluate_command.evaluate)
app.command("calibrate")(calibrate_command.calibrate)
app.command("compare")(compare_command.compare)
app.command("export")(export_command.export)
app.command("serve")(serve_command.serve)
apply_help_style(app)  # listed in the order of the pipeline (helpstyle.COMMAND_ORDER)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dermaseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Skin-lesion segmentation in dermoscopy images with DeepLab-v3."""


# Needed by training, export and .ckpt models; an environment for ONNX models can go without
TORCH_STACK = {"torch", "torchvision", "timm", "lightning", "lightning_fabric", "torchmetrics"}
TORCH_INSTALL = "pip install 'torch>=2.4' torchvision timm lightning torchmetrics"


PACKAGE = Path(__file__).resolve().parent


def one_line_warnings() -> None:
    """Show dermaseg's own warnings as `warning: MESSAGE`, one line without the source path
    and line Python adds (the message names the file or field); others as before."""
    python_format = warnings.formatwarning
    if getattr(python_format, "one_line", False):  # installed already (main called again)
        return

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if Path(filename).resolve().is_relative_to(PACKAGE):
            return f"warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    format_warning.one_line = True  # type: ignore[attr-defined]
    warnings.formatwarning = format_warning


def main() -> None:
    """Console entry point: run the app, turning DermasegError into a message + exit code."""
    one_line_warnings()
    try:
        app()
    except DermasegError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        # the package itself missing; a submodule missing from an installed one (a version
        # too old or too new) is not cured by installing PyTorch: the traceback names it
        if exc.name not in TORCH_STACK:
            raise
        typer.secho(f"error: this needs PyTorch ({exc.name} is not installed here): "
                    f"{TORCH_INSTALL}. Without PyTorch, dermaseg runs .onnx models (predict, "
                    "evaluate, serve) and the data commands.", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
