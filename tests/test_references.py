"""Everything a learner is pointed to exists (issue 17, item 4).

Chapter 4 and the fast_mode docstring cited COURSE.md, the README cited BASELINES.md: files a learner never had.
Every path the README, the chapters, the package (docstrings, messages, model cards), the benchmarks and the tests
name must be in the repository: a Markdown file, a path that climbs out with ../, or a path into one of the
repository's own folders. Outputs the course writes (build/, runs/, release/, ...) are not checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("chapters", "benchmarks", "sdlearn", "tests", "scripts")  # the repository's own folders
MARKDOWN = re.compile(r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[A-Za-z][\w-]*\.md)\b")
CLIMBS = re.compile(r"(?<![\w.])(\.\./[\w./-]+)")
INTO_FOLDERS = re.compile(r"(?<![\w/.-])((?:%s)/[\w./*-]+)" % "|".join(FOLDERS))


def texts():
    files = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "chapters").glob("*.ipynb"))]
    for folder in ("sdlearn", "benchmarks", "tests", "scripts"):
        files += sorted(p for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md") and p.is_file())
    for path in files:
        if not path.is_file() or path == Path(__file__).resolve():
            continue
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"])
        else:
            text = path.read_text(encoding="utf-8")
        yield path, text


def exists(ref: str, where: Path) -> bool:
    ref = ref.rstrip(".,;:)`'\"")
    if any(re.fullmatch(r"[A-Z_]{3,}", part) for part in ref.split("/")):
        return True  # a placeholder (sdlearn/pretrained/NAME), not a file
    if any(ch in ref for ch in "*{"):  # a pattern: its folder must exist
        ref = ref[: ref.index(next(ch for ch in ref if ch in "*{"))].rsplit("/", 1)[0]
    candidates = [REPO / ref, where.parent / ref]
    if "/" not in ref:  # a bare Markdown name: anywhere in the repository
        return (REPO / ref).exists() or any(REPO.glob(f"*/**/{ref}"))
    return any(c.exists() for c in candidates)


def test_every_referenced_file_exists():
    missing = []
    for path, text in texts():
        refs = set(MARKDOWN.findall(text)) | set(CLIMBS.findall(text)) | set(INTO_FOLDERS.findall(text))
        refs = {r for r in refs if f'/ "{r}"' not in text}  # a test's own output (tmp_path / "table.md")
        missing += [f"{path.relative_to(REPO)}: {ref}" for ref in sorted(refs) if not exists(ref, path)]
    assert not missing, ("references to files that are not in the repository (bring the facts in, or cite the paper "
                         "or the documentation instead):\n" + "\n".join(missing))


def test_the_checker_catches_what_the_issue_found():
    assert MARKDOWN.findall("as COURSE.md defines it") == ["COURSE.md"] and not exists("COURSE.md", REPO / "x.py")
    assert CLIMBS.findall("see ../shared/notes.txt") == ["../shared/notes.txt"]
    assert not exists("../shared/notes.txt", REPO / "chapters" / "x.ipynb")
    assert exists("benchmarks/pixel_vs_latent.py", REPO / "README.md") and exists("README.md", REPO / "x.py")
