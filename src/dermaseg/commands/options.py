"""Typer options that several commands share (`predict`, `evaluate MODEL`): declared once so
their flags and help read the same everywhere. Not a command; command modules may import it."""

from __future__ import annotations

import typer

MODEL_HELP = ("A checkpoint (.ckpt), a model folder (a path or hf://owner/name[@revision]) or "
              "an exported .onnx or .tflite model; several separated by commas (a,b,c) predict "
              "with their ensemble (mean probability).")
TTA = typer.Option(False, "--tta", help="Average over the four flips.")
KEEP_LARGEST = typer.Option(False, "--keep-largest", help="Keep the largest lesion.")
FILL_HOLES = typer.Option(False, "--fill-holes", help="Fill holes inside the lesion.")
MIN_AREA = typer.Option(0, "--min-area", min=0, help="Remove specks under N pixels.")
CRF = typer.Option(False, "--crf", help="Dense-CRF refinement (extra: dermaseg\\[crf]).")
BATCH_SIZE = typer.Option(8, "--batch-size", min=1, help="Images per forward pass.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
