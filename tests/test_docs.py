"""Every design-document reference in the code and the README resolves to a file of the repository.

Code cites the design as `docs/design.md#<anchor>` (or `docs/design.md section "<Heading>"`); a
citation of a file that is not there, or of a section that was renamed, sends a reader nowhere.
The anchors are the ones mkdocs gives a heading (Python-Markdown's toc slug), so the same
reference works on the built site and in the source tree.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("workbench", "tests", "benchmarks", "studies", "scripts")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".txt", ".toml", ".cfg", ".sh"}
# A docs path, an optional #anchor, an optional quoted section name after it.
CITATION = re.compile(r'(docs/[\w./-]+\.(?:md|png))(?:#([\w-]+))?(?:,? section "([^"]+)")?')
OLD_NAME = "DESIGN" + ".md"  # spelled in two parts so that this file does not cite it


def slug(heading: str) -> str:
    """The anchor mkdocs gives a heading: Python-Markdown's toc `slugify` on its text."""
    text = re.sub(r"<[^>]+>|`", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def headings(md: Path) -> dict[str, str]:
    """slug -> heading text of every markdown heading outside code fences."""
    out, fenced = {}, False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            out[slug(m.group(1))] = m.group(1)
    return out


def sources() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in SCANNED:
        files += [p for p in sorted((ROOT / top).rglob("*"))
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
                  and p != Path(__file__).resolve()]  # this file's examples are broken on purpose
    return files


def citations(files: list[Path]) -> list[tuple[str, int, str, str | None, str | None]]:
    found = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{n}", m.group(0), m.group(1), m.group(2), m.group(3)))
    return found


def broken(found) -> list[str]:
    """One line per citation whose file, anchor or section name does not exist."""
    problems = []
    for where, text, target, anchor, section in found:
        path = ROOT / target
        if not path.is_file():
            problems.append(f"{where}: {text}: no file {target}")
            continue
        if anchor is None and section is None:
            continue
        known = headings(path)
        if anchor is not None and anchor not in known:
            problems.append(f"{where}: {text}: {target} has no heading with anchor #{anchor}")
        if section is not None and slug(section) not in known:
            problems.append(f"{where}: {text}: {target} has no section named {section!r}")
    return problems


def test_every_cited_docs_path_and_section_exists():
    found = citations(sources())
    assert any(t == "docs/design.md" and a for _, _, t, a, _ in found), "expected design citations in the code"
    assert broken(found) == []


def test_no_citation_of_the_old_design_file():
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in sources()
            for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if OLD_NAME in line]
    assert hits == [], f"{OLD_NAME} does not exist; cite docs/design.md#<section> instead: {hits}"


@pytest.mark.parametrize("text, problem", [
    ("see docs/nowhere.md", "no file docs/nowhere.md"),
    ("see docs/design.md#no-such-section", "no heading with anchor #no-such-section"),
    ('see docs/design.md section "No such section"', "no section named 'No such section'"),
])
def test_a_bad_citation_is_named(text, problem):
    found = [("x.py:1", m.group(0), m.group(1), m.group(2), m.group(3)) for m in CITATION.finditer(text)]
    assert len(found) == 1
    [line] = broken(found)
    assert problem in line


def test_slug_matches_mkdocs_anchors():
    assert slug("Two traps of clip ablations") == "two-traps-of-clip-ablations"
    assert slug("Regimes and bounds") == "regimes-and-bounds"
    assert slug("`dispo-wb ui`: the MLflow UI") == "dispo-wb-ui-the-mlflow-ui"
