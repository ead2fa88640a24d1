"""MkDocs hook: the benchmark pictures, taken from bench/results/ when the site is built.

The benchmarks write their figures to bench/results/; the pages show them as `bench/NAME.png`
without a copy under docs/ that a rerun would leave behind.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def on_files(files, config):
    """Add every bench/results/*.png to the site as bench/*.png."""
    for path in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench/{path.name}", abs_src_path=str(path)))
    return files
