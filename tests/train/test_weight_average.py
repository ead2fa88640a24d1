"""`train.ema_decay`: validation, best.ckpt and the end of the run see an exponential moving
average of the weights, computed here independently; last.ckpt keeps the training weights
too, so that a resumed run is the uninterrupted one, bit for bit."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from dermaseg.checkpoint import WEIGHT_AVERAGE, model_state_dict, read_checkpoint
from dermaseg.errors import DermasegError
from dermaseg.train.runner import train
from helpers.training import Interrupt, InterruptAt, read_rows, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

DECAY = 0.4  # the warm-up reaches it after 5 of the 12 steps: both phases are run
EMA = [f"train.ema_decay={DECAY}", "optim.scheduler=cosine", "train.fit_quality=false"]


class IndependentAverage(L.Callback):
    """The average by its definition, from the training weights after each optimizer step
    (this callback runs after dermaseg's, which swaps the training weights back first), and
    the weights the model holds at each validation's end."""

    def __init__(self) -> None:
        self.average: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self.validated: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        weights = _floats(pl_module.model.state_dict())
        if self.average is None:
            self.average, self.updates = weights, 1
            return
        decay = min(DECAY, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for name, value in weights.items():
            self.average[name] = decay * self.average[name] + (1 - decay) * value

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        assert self.average is not None
        held = _floats(pl_module.model.state_dict())
        assert all(torch.allclose(held[name], self.average[name], atol=1e-6)
                   for name in held), "validation does not see the average"
        self.validated.append(held)


def _floats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in state.items()
            if value.is_floating_point()}


@pytest.fixture(scope="module")
def averaged_run(tiny_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ema"
    independent = IndependentAverage()
    summary = train(tiny(*EMA), tiny_prepared, out, progress=False, callbacks=[independent])
    return out, summary, independent


def test_validation_and_best_ckpt_hold_the_average(averaged_run):
    out, summary, independent = averaged_run
    assert len(independent.validated) == 3
    best = _floats(model_state_dict(read_checkpoint(out / "best.ckpt")))
    kept = independent.validated[summary["best_epoch"]]
    assert all(torch.equal(best[name], kept[name]) for name in kept)


def test_last_ckpt_holds_the_average_and_the_training_weights(averaged_run):
    out, _, independent = averaged_run
    last = read_checkpoint(out / "last.ckpt")
    average = _floats(model_state_dict(last))
    assert all(torch.equal(average[name], independent.validated[-1][name]) for name in average)
    training = _floats(last[WEIGHT_AVERAGE]["training_weights"])
    assert average.keys() == training.keys()
    assert any(not torch.allclose(average[name], training[name]) for name in average)


def test_non_finite_training_weights_are_refused_as_damaged(averaged_run, tmp_path):
    out, _, _ = averaged_run
    last = read_checkpoint(out / "last.ckpt")
    name = next(iter(last[WEIGHT_AVERAGE]["training_weights"]))
    last[WEIGHT_AVERAGE]["training_weights"][name].fill_(float("nan"))
    torch.save(last, tmp_path / "last.ckpt")
    with pytest.raises(DermasegError, match=rf"damaged.*{WEIGHT_AVERAGE}/training_weights"):
        read_checkpoint(tmp_path / "last.ckpt")


@pytest.mark.parametrize("crash", [InterruptAt(7), InterruptAt(5)],
                         ids=["mid-epoch", "after-validation"])
def test_resume_continues_the_average_exactly(averaged_run, tiny_prepared, tmp_path, crash):
    """InterruptAt(5): last.ckpt from epoch 0's validation, written while the model held the
    average; InterruptAt(7): from a step in the middle of epoch 1."""
    full, _, _ = averaged_run
    out = tmp_path / "crashed"
    with pytest.raises(Interrupt):
        train(tiny(*EMA), tiny_prepared, out, progress=False, callbacks=[crash])
    train(tiny(*EMA), tiny_prepared, out, resume=True, progress=False)
    for name in ("last.ckpt", "best.ckpt"):
        a, b = read_checkpoint(full / name), read_checkpoint(out / name)
        assert _same(model_state_dict(a), model_state_dict(b)), name
    assert _same(read_checkpoint(full / "last.ckpt")[WEIGHT_AVERAGE]["training_weights"],
                 read_checkpoint(out / "last.ckpt")[WEIGHT_AVERAGE]["training_weights"])


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


class EagerBackendCompile(L.Callback):
    """A real torch.compile (dynamo's tracing, the eager backend instead of inductor's
    minutes of C++ compilation on a CPU)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.compile_model(backend="eager")


def test_a_compiled_model_validates_the_average(averaged_run, tiny_prepared, tmp_path):
    """The compiled model must see the weights swapped into the network in place: the same
    validation results as the eager run."""
    eager, _, _ = averaged_run
    out = tmp_path / "compiled"
    train(tiny(*EMA, "train.compile=true"), tiny_prepared, out, progress=False,
          callbacks=[EagerBackendCompile()])
    rows = [read_rows(run / "metrics.csv") for run in (eager, out)]
    dice = [[float(row["val_dice"]) for row in run_rows] for run_rows in rows]
    assert dice[0] == pytest.approx(dice[1], abs=1e-4)
