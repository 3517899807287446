"""The repository's layout rules that keep the suite honest."""

from __future__ import annotations

from tests.harness import REPO


def test_every_test_file_is_in_a_collected_folder():
    """pytest collects tests/unit and tests/system only: a test file elsewhere would never run."""
    stray = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if p.parent.name not in ("unit", "system") and "node_modules" not in p.parts)
    assert stray == []
