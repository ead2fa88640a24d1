"""The package as users get it: `python -m build` makes a wheel and an sdist with the licence,
py.typed and the metadata; the wheel, installed into a fresh virtual environment, answers
`dermaseg --version` and predicts the masks that the source tree predicts.

The environment reuses this one's libraries (a .pth file naming its site-packages; .pth files
there are not run, so this checkout's editable install stays out) and gets dermaseg from the
wheel alone, with --no-deps: seconds instead of a 6 GB PyTorch install.
"""

from __future__ import annotations

import ast
import email
import email.policy
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import dermaseg
from dermaseg.checkpoint import load_model
from dermaseg.export.onnx import export_onnx
from helpers.badinputs import run_cli
from helpers.fitted import synth_images

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["src", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "CITATION.cff",
           "MANIFEST.in"]


def run(*command, cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build` on a copy of the sources (a build writes build/ and *.egg-info beside
    the sources: not into this checkout, which other runs may be building too)."""
    tree = tmp_path_factory.mktemp("sources")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tree / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, tree / name)
    run(sys.executable, "-m", "build", "--outdir", tree / "dist", tree, cwd=tree)
    return tree / "dist"


def test_build_makes_a_wheel_and_an_sdist(dist):
    (wheel,) = dist.glob("dermaseg-*.whl")
    (sdist,) = dist.glob("dermaseg-*.tar.gz")
    info = f"dermaseg-{dermaseg.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"),
                                            policy=email.policy.default)
    assert {"dermaseg/py.typed", "dermaseg/recipes/cpu_small.yaml",
            "dermaseg/serve/static/index.html", f"{info}/licenses/LICENSE"} <= names
    assert metadata["Version"] == dermaseg.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert any(url.startswith("Repository, https://") for url in metadata.get_all("Project-URL"))
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "CITATION.cff", "pyproject.toml",
            "src/dermaseg/py.typed"} <= members


def fresh_environment(folder: Path, wheel: Path) -> Path:
    """A new virtual environment with `wheel` installed (no dependencies) and this one's
    libraries on its path; returns its bin/ folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
               cwd=folder).strip()
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (Path(site) / "reuse-test-libraries.pth").write_text("\n".join(sorted(ours)) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-index", wheel, cwd=folder)
    return folder / "bin"


def test_the_installed_wheel_runs_a_prediction(dist, tiny_ckpt, tmp_path):
    (wheel,) = dist.glob("dermaseg-*.whl")
    bin_folder = fresh_environment(tmp_path / "venv", wheel)
    assert run(bin_folder / "dermaseg", "--version", cwd=tmp_path).strip() == \
        f"dermaseg {dermaseg.__version__}"
    where = run(bin_folder / "python", "-c", "import dermaseg; print(dermaseg.__file__)",
                cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where  # the wheel's copy

    model, meta = load_model(tiny_ckpt)  # its threshold gives masks with lesion and skin
    onnx_path = export_onnx(model, meta, tmp_path / "model.onnx", exporter="legacy")
    images = tmp_path / "images"
    images.mkdir()
    for seed, (width, height) in enumerate([(120, 90), (77, 101)]):
        image = synth_images(1, seed=seed, width=width, height=height)[0][0]
        Image.fromarray(image).save(images / f"case{seed}.png")
    run(bin_folder / "dermaseg", "predict", onnx_path, images, "-o", tmp_path / "installed",
        "-q", cwd=tmp_path)
    code, output = run_cli("predict", onnx_path, images, "-o", tmp_path / "source", "-q")
    assert code == 0, output
    for source in sorted(images.glob("*.png")):
        name = f"{source.stem}_segmentation.png"
        mask = np.asarray(Image.open(tmp_path / "installed" / name))
        assert mask.shape == np.asarray(Image.open(source)).shape[:2]
        assert set(np.unique(mask)) <= {0, 255} and 0 < (mask == 255).mean() < 1
        np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / "source" / name)))


def imported_libraries() -> dict[str, set[str]]:
    """Top-level names of what src/ imports outside the standard library -> the files."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "dermaseg":
                    found.setdefault(top, set()).add(path.name)
    return found


def test_every_imported_library_is_declared():
    """pyproject names (as a dependency or in an extra) the distribution of every library
    src/ imports; one not installed here is taken by its module name (litert_torch)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"],
                    *(r for extra in project["optional-dependencies"].values() for r in extra)]
    declared = {canonical(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}
    distributions = importlib.metadata.packages_distributions()
    missing = {module: sorted(files) for module, files in imported_libraries().items()
               if not declared & {canonical(d) for d in distributions.get(module, [module])}}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_one_version_everywhere():
    """pyproject takes the version from dermaseg.__version__; CITATION.cff and the changelog
    name the same one."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(citation["version"]) == dermaseg.__version__
    assert f"## [{dermaseg.__version__}]" in (ROOT / "CHANGELOG.md").read_text()
