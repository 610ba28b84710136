"""Golden files: the builders' output compared with reviewed YAML under tests/unit/golden/.

A missing golden file is a failure, not a silent first write. Regenerate on purpose with
``make golden`` (``UPDATE_GOLDEN=1``), then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(name: str, objs: list[dict[str, Any]]) -> None:
    text = yaml.safe_dump_all(objs, sort_keys=True)
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"golden file {path} is missing: run `make golden` and review it"
    assert path.read_text() == text, f"golden file {path} differs; `make golden` to refresh after review"
