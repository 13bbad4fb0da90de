"""The documentation: docs/reference.md is what scripts/make_reference.py writes from the option declarations now
(so that it cannot drift from them), and every relative link of README.md and docs/*.md names a file that exists
(anchors are not checked)."""

from __future__ import annotations

import importlib.util
import re

from conftest import REPO_ROOT

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target "title")


def _reference_script():
    spec = importlib.util.spec_from_file_location("make_reference", REPO_ROOT / "scripts" / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _relative_links(text: str) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", text))  # a link's text may hold code; code never holds a link
    targets = [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]
    return [target.split("#")[0] for target in targets if target.split("#")[0]]  # anchor-only: this page


def test_the_configuration_reference_is_what_the_declarations_give_now():
    page = REPO_ROOT / "docs" / "reference.md"
    assert page.read_text(encoding="utf-8") == _reference_script().render(), \
        "docs/reference.md is out of date: run python scripts/make_reference.py"


def test_every_relative_link_of_the_readme_and_the_docs_names_a_file_that_exists():
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    broken = [f"{page.relative_to(REPO_ROOT)}: {target}" for page in pages
              for target in _relative_links(page.read_text(encoding="utf-8"))
              if not (page.parent / target).exists()]
    assert broken == []
    assert any(_relative_links((REPO_ROOT / "README.md").read_text(encoding="utf-8")))  # the parser sees links
