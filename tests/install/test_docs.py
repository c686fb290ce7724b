"""The README stays a page, says the two commands CI relies on, and every page it leads to
exists: links (and their #anchors) between README.md, docs/ and bench/RESULTS.md resolve,
and every bench script a page names is where it says."""
import re
import unicodedata

import pytest

from support import REPO

README = REPO / "README.md"
PAGES = [README, REPO / "bench" / "RESULTS.md", REPO / "tests" / "README.md",
         *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped (letters,
    digits, '-' and '_' kept), spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(page) -> set:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_the_readme_fits_a_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_ci_runs_the_readmes_test_command():
    commands = re.findall(r"^make (\w+)\s+#", README.read_text(encoding="utf-8"), re.MULTILINE)
    assert commands == ["demo", "test"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r'^step "[^"]*" make test$', ci, re.MULTILINE), \
        ".ci/run no longer runs `make test`, the README's test command"


def test_every_docs_page_is_linked_from_the_readme():
    linked = set(LINK.findall(README.read_text(encoding="utf-8")))
    pages = {f"docs/{page.name}" for page in (REPO / "docs").glob("*.md")}
    assert pages and pages <= linked, pages - linked


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_links_and_anchors_resolve(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue   # a web address
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(target)
    assert not broken, broken


@pytest.mark.parametrize("page", [*PAGES, REPO / "Makefile"],
                         ids=lambda page: page.relative_to(REPO).as_posix())
def test_named_bench_scripts_exist(page):
    text = page.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/.])bench/[\w/]+\.(?:py|sh)\b", text))
    assert not [name for name in named if not (REPO / name).is_file()]
