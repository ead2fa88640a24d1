"""Several models as one: the mean of their lesion probabilities, thresholded once.

    predictor = load_predictor("runs/fold0/best.ckpt,runs/fold1/best.ckpt", tta=TTAConfig())
    probs = predictor.predict_proba([image])   # the same methods as a Predictor

`load_predictor` takes one model (a Predictor, exactly as `Predictor.load`) or a comma list
(an Ensemble). The members must share input size, mean/std and threshold: they then letterbox
and normalise an image identically, so it is prepared once, each member computes its own
probability on it (after its own TTA), the maps are averaged at network resolution and
restored to the original size once per image. Restoring is linear (crop + bilinear resize), so
this equals the mean of the members' restored maps up to float rounding (~1e-7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dermaseg.errors import UsageError
from dermaseg.infer.predictor import Predictor
from dermaseg.infer.tta import TTAConfig

AGREED_FIELDS = ("image_size", "mean", "std", "threshold")  # what makes the mean meaningful


def is_model_list(text: str | Path) -> bool:
    """True for a comma list of models (a file whose own name holds a comma is one model)."""
    return "," in str(text) and not Path(text).exists()


def split_models(text: str | Path) -> list[str]:
    """"a.ckpt,b.onnx" -> ["a.ckpt", "b.onnx"]; one model -> [it].

    Raises:
        UsageError: the list names no model, or one model twice.
    """
    if not is_model_list(text):
        return [str(text)]
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    if not names:
        raise UsageError(f"{text}: no model named (give MODEL or MODEL1,MODEL2,...)")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"{text}: {', '.join(twice)} listed twice (each member once)")
    return names


def refuse_model_list(text: str | Path, command: str) -> None:
    """For the commands that take one model (serve, export).

    Raises:
        UsageError: `text` is a comma list.
    """
    if is_model_list(text):
        raise UsageError(f"{text}: `dermaseg {command}` takes one model; a comma list of "
                         "models (an ensemble) is for `dermaseg predict` and `dermaseg evaluate`")


def check_agreement(members: list[Predictor], names: list[str]) -> None:
    """Raises UsageError naming the first member that differs from the first one, and how."""
    first = members[0].meta
    for member, name in zip(members[1:], names[1:], strict=True):
        for field in AGREED_FIELDS:
            ours, theirs = getattr(first, field), getattr(member.meta, field)
            if ours != theirs:
                raise UsageError(
                    f"ensemble members {names[0]} and {name} differ in {field} ({ours} vs "
                    f"{theirs}); members must share input size, mean/std and threshold")
        if member.preprocessing.colours != members[0].preprocessing.colours:
            raise UsageError(
                f"ensemble members {names[0]} and {name} differ in data.colour_constancy "
                f"({members[0].preprocessing.colours} vs {member.preprocessing.colours}); "
                "members must prepare an image alike")


class Ensemble(Predictor):
    """Predictor whose network pass is the mean of its members' probabilities.

    Everything else (prepare, batching, restoring, thresholding, post-processing) is the
    Predictor's, run once on the shared letterbox and threshold."""

    def __init__(self, members: list[Predictor], names: list[str]) -> None:
        if not members or len(members) != len(names):
            raise ValueError("an Ensemble needs one name per member, and at least one member")
        check_agreement(members, names)
        # no backend of its own: the members run the network (`_run`, `with_tta`)
        super().__init__(None, members[0].meta,  # pyright: ignore[reportArgumentType]
                         batch_size=members[0].batch_size)
        self.tta = members[0].tta  # each member runs its own; kept for information
        self.members = members
        self.names = names

    @classmethod
    def load(cls, path: str | Path, device="cpu", **kwargs) -> Predictor:
        """`load_predictor`: one model gives a Predictor, a comma list an Ensemble."""
        return load_predictor(path, device, **kwargs)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (N, 3, S, S) -> the members' mean probabilities (N, S, S), and their
        standard deviation between the members (each member's own after its TTA)."""
        first = self.members[0]._run(batch)[0]
        total = np.array(first, dtype=np.float32, copy=True)
        squares = total * total
        for member in self.members[1:]:
            probability = member._run(batch)[0]
            total += probability
            squares += probability * probability
        total /= len(self.members)
        variance = np.maximum(squares / len(self.members) - total * total, 0.0)
        return total, np.sqrt(variance).astype(np.float32)

    def with_tta(self, tta: TTAConfig | None) -> Predictor:
        """The same members, each with another test-time augmentation."""
        return Ensemble([member.with_tta(tta) for member in self.members], self.names)

    def describe(self) -> str:
        return f"ensemble of {len(self.members)} (mean probability): {', '.join(self.names)}"


def load_predictor(text: str | Path, device="cpu", **kwargs) -> Predictor:
    """One model (`Predictor.load`, unchanged) or a comma list of them (an Ensemble, every
    member loaded with the same device and options: tta, batch_size).

    Raises:
        DermasegError: a member is missing or not a model; UsageError: the members disagree.
    """
    names = split_models(text)
    if len(names) == 1:
        return Predictor.load(names[0], device=device, **kwargs)
    members = [Predictor.load(name, device=device, **kwargs) for name in names]
    return Ensemble(members, names)


def describe_model(predictor: Predictor, text: str | Path) -> str:
    """"model: PATH" for one model, the member list for an ensemble (reports, summaries)."""
    if isinstance(predictor, Ensemble):
        return f"models: {predictor.describe()}"
    return f"model: {text}"
