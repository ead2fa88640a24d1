"""MkDocs hook: the benchmark results, taken from bench/results/ when the site is built.

The benchmarks write their tables (`*.md`) and figures (`*.png`) to bench/results/. Each table
becomes a page `bench/NAME.md` and each figure `bench/NAME.png`, with no copy under docs/ that
a rerun would leave behind; the marker `<!-- bench-results -->` in a page becomes the list of
those tables.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
MARKER = "<!-- bench-results -->"


def _first_line(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip().lstrip("#").strip()
        if text:
            return text
    return ""


def on_files(files, config):
    """Add every bench/results/*.png and *.md to the site under bench/."""
    for path in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench/{path.name}", abs_src_path=str(path)))
    for path in sorted(RESULTS.glob("*.md")):
        content = f"# `bench/results/{path.name}`\n\n" + path.read_text(encoding="utf-8")
        files.append(File.generated(config, f"bench/{path.name}", content=content,
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace the marker with a table linking every result page."""
    if MARKER not in markdown:
        return markdown
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth
    rows = ["| results | first line |", "|---|---|"]
    for path in sorted(RESULTS.glob("*.md")):
        first = _first_line(path).replace("|", "&#124;")
        rows.append(f"| [`{path.name}`]({prefix}bench/{path.name}) | {first} |")
    return markdown.replace(MARKER, "\n".join(rows))
