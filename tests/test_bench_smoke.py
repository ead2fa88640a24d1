"""The benchmark scripts run: Otsu and the result merging (fast), and the quality and GPU
benchmarks end to end with tiny budgets on synthetic data, on CPU (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermaseg.data.prepare import prepare_dataset
from dermaseg.data.synth import SynthOptions, synth_dataset

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_quality  # noqa: E402
import common  # noqa: E402
from quality_peers import otsu_mask, otsu_threshold  # noqa: E402


def test_otsu_threshold_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(60, 8, 5000), rng.normal(180, 8, 3000)])
    pixels = np.clip(values, 0, 255).astype(np.uint8)
    threshold = otsu_threshold(pixels)
    assert 80 < threshold < 160  # anywhere in the empty gap gives the same split
    assert abs((pixels <= threshold).mean() - 5000 / 8000) < 0.005


def test_otsu_mask_finds_a_dark_disc_and_ignores_the_padding():
    image = np.zeros((64, 64, 3), np.uint8)
    image[8:56] = 200  # content rows 8..55, rows outside are letterbox padding (black)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 12**2
    image[disc] = 70
    mask = otsu_mask(image, (slice(8, 56), slice(0, 64)), "blue")
    assert mask[:8].sum() == 0
    overlap = (mask & disc).sum() / disc.sum()
    assert overlap > 0.9 and (mask & ~disc).sum() < 0.1 * disc.sum()


def test_colour_calls_table_by_source_and_ph2_diagnosis(tmp_path, monkeypatch):
    """bench/colour_calls.py on a folder in the real set's layout: a light brown lesion is
    light brown under dermaseg's rule and red under the rule it replaced; PH2 labels, in the
    release's PH2_dataset.txt layout, add a row per diagnosis."""
    import colour_calls

    monkeypatch.setattr(colour_calls, "RESULTS", tmp_path / "results")
    rows = ["name\tdataset\tsource_repo\twidth\theight"]
    for name, dataset in (("PH2_IMD003", "PH2"), ("ISIC_0000001", "ISIC2016")):
        image = np.full((40, 50, 3), 225, np.uint8)
        image[10:30, 15:35] = [173, 108, 77]  # a brown nevus's typical colour
        Image.fromarray(image).save(tmp_path / f"{name}.jpg", quality=98)
        mask = np.zeros((40, 50), np.uint8)
        mask[12:28, 17:33] = 255
        Image.fromarray(mask).save(tmp_path / f"{name}_segmentation.png")
        rows.append(f"{name}\t{dataset}\trepo\t50\t40")
    (tmp_path / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    labels = tmp_path / "PH2_dataset.txt"
    labels.write_text("|| Name || Histological Diagnosis || Clinical Diagnosis ||\n"
                      "|| IMD003 ||                        ||                  0 ||\n")
    shares, presence = colour_calls.table_rows(
        colour_calls.lesion_calls(tmp_path, colour_calls.read_ph2_labels(labels)))
    assert [(r["rule"].split(":")[0], r["lesions"]) for r in shares] == [
        (rule, group) for rule in ("before", "now")
        for group in ("PH2", "PH2 common nevus", "ISIC2016")]
    now = {r["lesions"]: r for r in presence if r["rule"].startswith("now")}
    before = {r["lesions"]: r for r in presence if r["rule"].startswith("before")}
    assert now["PH2"]["light brown"] == 100 and now["PH2"]["red"] == 0
    assert before["PH2"]["red"] == 100  # the call this bench was written to catch
    text = colour_calls.write(shares, presence, "python bench/colour_calls.py")
    assert (tmp_path / "results" / "colour_calls.md").read_text() == text


def test_quality_rows_merge_by_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    (tmp_path / "quality.json").write_text(json.dumps({"rows": [
        {"variant": "smp", "best_val_dice": 0.5}, {"variant": "base", "best_val_dice": 0.6}]}))
    rows = bench_quality.merged_rows([{"variant": "smp", "best_val_dice": 0.8},
                                      {"variant": "otsu_blue", "best_val_dice": 0.7}])
    assert [(r["variant"], r["best_val_dice"]) for r in rows] == [
        ("base", 0.6), ("smp", 0.8), ("otsu_blue", 0.7)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    synth_dataset(20, root / "raw", seed=3, options=SynthOptions(size=(80, 64)), progress=False)
    prepare_dataset(root / "raw", root / "prep", size=64, val=0.25, test=0.1, seed=0, workers=1,
                    progress=False)
    return root / "prep"


def _run(args: list[str], timeout: float) -> None:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCH.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_quality_bench_runs_every_variant(prepared, tmp_path):
    _run([str(BENCH / "bench_quality.py"), "--data", str(prepared), "--variants",
          "base,smp,otsu", "--minutes", "0.05", "--threads", "1", "--smp-size", "64",
          "--set", "data.image_size=64", "--set", "data.batch_size=4",
          "--set", "train.max_epochs=1", "--results", str(tmp_path), "-o", str(tmp_path / "runs")],
         timeout=240)
    rows = {row["variant"]: row for row in
            json.loads((tmp_path / "quality.json").read_text())["rows"]}
    assert set(rows) == {"base", "smp", "otsu_blue", "otsu_grey"}
    for row in rows.values():
        assert 0.0 <= row["best_val_dice"] <= 1.0
    assert rows["otsu_blue"]["best_val_dice"] > 0.3  # synthetic lesions are darker than skin
    assert (tmp_path / "quality_smp.png").stat().st_size > 1000
    assert "| smp |" in (tmp_path / "quality.md").read_text()


@pytest.mark.slow
def test_gpu_bench_smoke_on_cpu(tmp_path):
    _run([str(BENCH / "gpu_bench.py"), "--smoke", "--results", str(tmp_path)], timeout=400)
    payload = json.loads((tmp_path / "gpu_smoke.json").read_text())
    modes = {row["mode"]: row for row in payload["throughput"]}
    assert set(modes) == {"fp32", "fp32_strict", "bf16_cl"}
    assert modes["fp32"]["speedup_vs_fp32"] == 1.0
    assert all(row["images_per_s"] > 0 for row in modes.values())
    assert 0 < payload["loader"]["gpu_busy_fraction"] <= 1
    assert payload["loader"]["loader_alone_images_per_s"] > 0
    # on a CPU the recipe's auto places both gathering and augmentation in the loader
    assert (payload["loader"]["augment_on"], payload["loader"]["gather_on"]) == ("loader",
                                                                                "loader")
    variants = {row["mode"].split(", ", 1)[1]: row for row in payload["loader"]["by_workers"]}
    assert set(variants) == {"augment_on device, gather_on device",
                             "augment_on device, gather_on loader", "gather_on loader, 1 workers"}
    on_device = variants["augment_on device, gather_on device"]
    assert on_device["gather_on"] == "device" and on_device["workers"] == 0
    assert on_device["loader_alone_images_per_s"] > 0
    assert variants["gather_on loader, 1 workers"]["workers"] == 1
    assert 0 <= payload["train"]["val_dice"] <= 1
    assert payload["train"]["epochs"] == 2 and payload["train"]["lightning_step_ms"] > 0
    assert payload["train"]["time_split"].startswith("steps ")  # summary.json's "time"
    assert "bf16_cl_compile" not in payload["stages"]  # compiled steps: not default stages
