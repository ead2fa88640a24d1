"""`dermaseg demo` (argument checks, the pipeline on a small folder) and `dermaseg doctor`."""

from __future__ import annotations

import pytest
import torch

from dermaseg.data.synth import SynthOptions, synth_dataset
from dermaseg.demo import run_demo
from dermaseg.invocation import dermaseg_command
from helpers.badinputs import run_cli


@pytest.mark.parametrize(("args", "words"), [
    (["-n", "5"], "-n must be at least 6"),
    (["--minutes", "-1"], "--minutes must be > 0"),
    (["--minutes", "0"], "--minutes must be > 0"),
])
def test_bad_arguments_are_usage_errors_and_create_nothing(tmp_path, args, words):
    out = tmp_path / "demo"
    code, output = run_cli("demo", "-o", out, *args)
    assert code == 2 and words in output and "Traceback" not in output
    assert not out.exists()


def test_too_few_user_pairs_are_named(tmp_path):
    synth_dataset(3, tmp_path / "mine", seed=0, options=SynthOptions(size=(64, 48)),
                  progress=False)
    code, output = run_cli("demo", "--data", tmp_path / "mine", "-o", tmp_path / "demo")
    assert code == 1 and "the demo needs at least 4" in output, output


def test_demo_on_a_small_user_folder_makes_every_artefact(tmp_path):
    """Seven pairs (4 training images: the batch shrinks to fit), a few seconds of training:
    every stage runs and writes its files; the closing text does not call the data synthetic."""
    synth_dataset(7, tmp_path / "mine", seed=1, options=SynthOptions(size=(96, 72)),
                  progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    said: list[str] = []
    try:
        result = run_demo(tmp_path / "demo", tmp_path / "mine", minutes=0.05, min_epochs=2,
                          say=said.append)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "demo"
    sections = sections_said(said)
    assert list(sections) == ["data", "check", "prepare", "train", "evaluate", "predict",
                              "export"]
    # each section says what it did and where its outputs are
    evaluated = "\n".join(sections["evaluate"])
    assert "scored on 1 image of the test split" in evaluated and f"Dice {result.test_dice:.4f}" \
        in evaluated and str(out / "eval" / "report.html") in evaluated
    predicted = "\n".join(sections["predict"])
    assert "1 image of the test split predicted" in predicted
    assert str(out / "predictions") in predicted
    assert "measurements.csv" in predicted and "overlay/" in predicted
    assert "quality.csv" in predicted and "review recommended for" in predicted
    assert str(out / "prepared") in "\n".join(sections["prepare"])
    assert str(out / "model.onnx") in "\n".join(sections["export"])
    for name in ("run/best.ckpt", "run/curves.png", "eval/report.html", "eval/metrics.csv",
                 "predictions/measurements.jsonl", "predictions/quality.csv", "model.onnx"):
        assert (out / name).is_file(), name
    assert list((out / "predictions").glob("*_segmentation.png"))
    assert 0.0 <= result.test_dice <= 1.0
    text = "\n".join(result.lines)
    assert "Your data" in text and "synthetic task" not in text
    assert result.epochs >= 2 and f"{result.epochs} epochs on the CPU" in text
    assert result.lines[-1].startswith(f"next: {dermaseg_command()} serve ")  # works from here
    assert (out / "predictions" / "measurements.csv").is_file()
    # a second demo into the same folder replaces the first one's run (`make demo` twice)
    said.clear()
    torch.set_num_threads(1)
    try:
        run_demo(out, tmp_path / "mine", minutes=0.05, min_epochs=1, say=said.append)
    finally:
        torch.set_num_threads(threads)
    assert any("replacing the earlier run" in line for line in said)
    assert (out / "run" / "best.ckpt").is_file()


def sections_said(said: list[str]) -> dict[str, list[str]]:
    """The demo's words by section ("== name ==" opens one): section -> its lines."""
    sections: dict[str, list[str]] = {}
    for line in "\n".join(said).splitlines():
        if line.startswith("== ") and line.endswith(" =="):
            sections[line[3:-3]] = []
        elif line.strip() and sections:
            sections[list(sections)[-1]].append(line)
    return sections


def test_demo_keeps_a_folder_that_is_not_a_run(tmp_path):
    synth_dataset(7, tmp_path / "mine", seed=1, options=SynthOptions(size=(96, 72)),
                  progress=False)
    (tmp_path / "demo" / "run").mkdir(parents=True)
    (tmp_path / "demo" / "run" / "notes.txt").write_text("mine")
    code, output = run_cli("demo", "--data", tmp_path / "mine", "-o", tmp_path / "demo",
                           "--minutes", "0.05")
    assert code == 2 and "is not a training run" in output, output
    assert (tmp_path / "demo" / "run" / "notes.txt").read_text() == "mine"


def test_doctor_reports_this_machine(tmp_path):
    code, output = run_cli("doctor", "--path", tmp_path)
    assert code == 0, output
    assert "torch" in output and "accelerators:" in output
    assert "GiB available of" in output and f"disk ({tmp_path}):" in output
    assert "runtime for .tflite models (ai-edge-litert): " in output
    code, output = run_cli("doctor", "--path", tmp_path / "absent")
    assert code == 2 and "--path" in output and "absent: no such folder" in output, output
