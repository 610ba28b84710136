"""Marking every test below a directory (what each suite's conftest does with its markers)."""

from __future__ import annotations

from pathlib import Path

import pytest


def mark_tests_under(directory: Path, items: list[pytest.Item], *marks: pytest.MarkDecorator) -> None:
    """Add `marks` to the collected tests whose file is below `directory` (a conftest's
    pytest_collection_modifyitems sees every test of the session, not only its own)."""
    for item in items:
        if directory in Path(str(item.fspath)).parents:
            for mark in marks:
                item.add_marker(mark)
