"""Every relative link in the documentation leads to a file that exists (the guides moved to
the requirements' paths, docs/self-learning-agents/; one copy, links updated)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
DOCS = sorted(
    p
    for p in ROOT.rglob("*.md")
    if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to {target}"


def test_one_copy_at_the_requirements_paths() -> None:
    assert (ROOT / "docs/self-learning-agents/ab-testing-guide.md").is_file()
    template = ROOT / "docs/self-learning-agents/templates/agent-rollout-template.md"
    assert "statistical validation" in template.read_text()  # as the check greps it
    assert not (ROOT / "docs/ab-testing-guide.md").exists()
    assert not (ROOT / "docs/templates").exists()
