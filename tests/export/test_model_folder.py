"""The shared model folder end to end through the real CLI: `export --format folder` (weights,
metadata, model card with an evaluation's numbers), predict/evaluate with the folder give what
the checkpoint gives, and `hf://` from a loopback hub stand-in, then from the cache offline."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from dermaseg.model_folder import META, WEIGHTS
from helpers.badinputs import run_cli
from helpers.hub_server import HubServer
from helpers.serving import Server

FINGERPRINT = {"path": "/somewhere/prepared", "folds": None, "fingerprint": "abc123"}


@pytest.fixture(scope="module")
def shared(tiny_ckpt, synth_dir, tmp_path_factory):
    """(run folder with the checkpoint and data.json, its evaluation, the model folder)."""
    run = tmp_path_factory.mktemp("run")
    shutil.copy(tiny_ckpt, run / "best.ckpt")
    (run / "data.json").write_text(json.dumps(FINGERPRINT))
    code, out = run_cli("evaluate", run / "best.ckpt", "--data", synth_dir, "-o",
                        run / "eval", "--quiet")
    assert code == 0, out
    code, out = run_cli("export", run / "best.ckpt", "--format", "folder", "-o",
                        run / "my-model", "--card-eval", run / "eval" / "metrics.json")
    assert code == 0, out
    return run, json.loads((run / "eval" / "metrics.json").read_text()), run / "my-model"


def masks(folder):
    """{file name: PNG bytes} of the masks in `folder`."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_folder_files_and_metadata(shared):
    run, _, folder = shared
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", META, WEIGHTS]
    meta = json.loads((folder / META).read_text())
    with safe_open(str(folder / WEIGHTS), framework="numpy") as handle:
        assert json.loads(handle.metadata()["dermaseg"]) == meta
    assert meta["training_data"] == {"fingerprint": "abc123", "folds": None}  # no local path
    assert meta["image_size"] == 64 and meta["config"]["model"]["backbone"] == "resnet18"
    assert not list(run.glob(".*.tmp")) and not list(folder.glob(".*"))


def test_model_card_front_matter(shared):
    from huggingface_hub import ModelCard

    _, evaluation, folder = shared
    card = ModelCard.load(folder / "README.md")  # the hub's own reader
    assert card.data.license == "apache-2.0" and card.data.library_name == "dermaseg"
    assert "image-segmentation" in card.data.tags
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values["dice"] == round(evaluation["overall"]["dice"], 4)
    assert values["jaccard"] == round(evaluation["overall"]["jaccard"], 4)
    assert "abc123" in card.text


def test_card_without_evaluation_states_no_metrics(shared, tmp_path):
    from huggingface_hub import ModelCard

    run, _, _ = shared
    code, out = run_cli("export", run / "best.ckpt", "--format", "folder", "-o", tmp_path / "m")
    assert code == 0 and "no --card-eval" in out
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert not card.data.eval_results and "states no metrics" in card.text


def test_export_refuses_to_overwrite(shared):
    run, _, folder = shared
    before = (folder / WEIGHTS).read_bytes()
    code, out = run_cli("export", run / "best.ckpt", "--format", "folder", "-o", folder)
    assert code != 0 and "--overwrite" in out and str(folder / WEIGHTS) in out
    assert (folder / WEIGHTS).read_bytes() == before


def test_predict_and_evaluate_with_the_folder(shared, synth_dir, tmp_path):
    run, evaluation, folder = shared
    for model, out in ((run / "best.ckpt", tmp_path / "ckpt"), (folder, tmp_path / "folder")):
        code, text = run_cli("predict", model, synth_dir, "-o", out, "--quiet")
        assert code == 0, text
    expected = masks(tmp_path / "ckpt")
    assert len(expected) == 12 and masks(tmp_path / "folder") == expected
    pixels = [np.asarray(Image.open(p)) for p in (tmp_path / "ckpt").glob("*.png")]
    assert any(m.any() and not m.all() for m in pixels)  # lesion and skin: a real comparison
    code, text = run_cli("evaluate", folder, "--data", synth_dir, "-o", tmp_path / "eval",
                         "--quiet")
    assert code == 0, text
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["overall"] == evaluation["overall"]


def dermaseg(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermaseg", *map(str, args)],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def hub_cache(shared, synth_dir, tmp_path_factory):
    """({HF_HOME}, the checkpoint's masks) after `predict hf://derm/tiny@v1` fetched the model
    folder from the loopback hub; checks the masks and what was fetched."""
    run, _, folder = shared
    tmp = tmp_path_factory.mktemp("hub")
    code, _ = run_cli("predict", run / "best.ckpt", synth_dir, "-o", tmp / "ckpt", "-q")
    assert code == 0
    home = {"HF_HOME": str(tmp / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    with HubServer({"derm/tiny": folder}, tags=("v1",)) as hub:
        done = dermaseg("predict", "hf://derm/tiny@v1", synth_dir, "-o", tmp / "hub", "-q",
                        env={**home, "HF_ENDPOINT": hub.url})
        assert done.returncode == 0, done.stderr
        fetched = {path for method, path in hub.requests if method == "GET"}
        assert {f"/derm/tiny/resolve/{hub.repos['derm/tiny'].sha}/{name}"
                for name in (WEIGHTS, META, "README.md")} <= fetched
    expected = masks(tmp / "ckpt")
    assert masks(tmp / "hub") == expected
    return {**home, "HF_ENDPOINT": hub.url}, expected


def test_hub_download_then_offline(hub_cache, synth_dir, tmp_path):
    env, expected = hub_cache
    done = dermaseg("predict", "hf://derm/tiny@v1", synth_dir, "-o", tmp_path / "out", "-q",
                    env={**env, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert masks(tmp_path / "out") == expected


@pytest.mark.slow
def test_hub_unreachable_then_cache_and_serve(hub_cache, synth_dir, tmp_path):
    env, expected = hub_cache  # its HF_ENDPOINT server has stopped: nothing answers there
    done = dermaseg("predict", "hf://derm/tiny@v1", synth_dir, "-o", tmp_path / "out", "-q",
                    env=env)
    assert done.returncode == 0, done.stderr
    assert masks(tmp_path / "out") == expected
    server = Server("hf://derm/tiny@v1", tmp_path / "serve.log", env=env).wait_ready()
    try:
        image = synth_dir / "synth_0001.jpg"
        reply = httpx.post(f"{server.url}/v1/segment?format=png",
                           files={"file": (image.name, image.read_bytes())}, timeout=60)
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    served = np.asarray(Image.open(io.BytesIO(reply.content)))
    assert np.array_equal(served, np.asarray(Image.open(io.BytesIO(
        expected["synth_0001_segmentation.png"]))))


def test_hub_model_nowhere_is_a_clear_error(shared, synth_dir, tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    done = dermaseg("predict", "hf://derm/absent", synth_dir, "-o", tmp_path / "out", "-q",
                    env=env)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "hf://derm/absent" in done.stderr and "hf download derm/absent" in done.stderr
    assert "HF_HUB_OFFLINE" in done.stderr and not (tmp_path / "out").exists()
    with HubServer({"derm/tiny": shared[2]}) as hub:
        done = dermaseg("predict", "hf://derm/other", synth_dir, "-o", tmp_path / "out", "-q",
                        env={"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url})
    assert done.returncode != 0 and "no model derm/other on the hub" in done.stderr
