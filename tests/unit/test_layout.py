"""The test tree itself: pytest imports test modules by basename (rootdir mode, no packages), so two
test files with one name in different tiers break collection of the whole run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_across_tiers() -> None:
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name not in ("conftest.py", "__init__.py")
                    and "data" not in p.relative_to(TESTS).parts)
    assert [name for name, count in names.items() if count > 1] == []
