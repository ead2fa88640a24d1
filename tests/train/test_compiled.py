"""`train.compile` falls back to eager when compiling fails: a real torch.compile with a
compiler backend that refuses, in a real (one-epoch) training run."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from dermaseg.train.compiled import CompiledOrEager
from dermaseg.train.runner import train
from helpers.training import STEPS_PER_EPOCH, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def refusing_backend(graph_module, example_inputs):
    """A torch.compile backend that fails as a missing Triton does: at the first call."""
    raise RuntimeError("Cannot find a working triton installation (test backend)")


class RefusingCompiler(L.Callback):
    """Compiles the model with the refusing backend instead of inductor."""

    def setup(self, trainer, pl_module, stage) -> None:
        assert pl_module.compiled is not None  # train.compile=true compiled it
        pl_module.compile_model(pl_module.config.train.compile_mode, backend=refusing_backend)


def test_a_failed_compilation_trains_eager_with_a_note(tiny_prepared, tmp_path, capsys):
    config = tiny("train.compile=true", "train.max_epochs=1")
    compiler = RefusingCompiler()
    summary = train(config, tiny_prepared, tmp_path / "run", callbacks=[compiler],
                    progress=False)
    assert summary["epochs"] == 1 and summary["best"]["val_dice"] >= 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert len(notes) == 1, notes  # once, though training and validation both called it
    assert notes[0].startswith("note: torch.compile failed (")
    assert "Cannot find a working triton" in notes[0] and notes[0].endswith(": training eager")
    assert (tmp_path / "run" / "best.ckpt").is_file()
    last = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert last["global_step"] == STEPS_PER_EPOCH  # every step trained (eager)


def test_an_error_of_the_model_itself_is_still_raised():
    """Compiling fails, then the eager model raises its own error: that one propagates."""
    model = torch.nn.Conv2d(3, 1, 1)
    net = CompiledOrEager(model, backend=refusing_backend)
    with pytest.raises(RuntimeError, match="channels"):
        net(torch.zeros(1, 5, 8, 8))  # 5 channels for a 3-channel convolution
    assert net.failed is not None
    assert net(torch.zeros(1, 3, 8, 8)).shape == (1, 1, 8, 8)  # eager from then on


def test_a_compiler_refusing_at_once_gives_the_eager_model(capsys):
    """torch.compile itself raises (here: a backend it does not know, as a platform without
    the compiler's dependencies can): the eager model runs, with one note."""
    model = torch.nn.Conv2d(3, 1, 1)
    net = CompiledOrEager(model, backend="no-such-backend")
    assert net.failed is not None and "no-such-backend" in net.failed
    assert torch.equal(net(torch.ones(1, 3, 4, 4)), model(torch.ones(1, 3, 4, 4)))
    notes = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert len(notes) == 1 and notes[0].endswith(": training eager")
