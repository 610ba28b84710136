"""`aperag ingest` and `aperag search` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.app.corpus import DOCS


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aperag.cli", *args],
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ingest_directory_then_search(app_env_factory: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    env = app_env_factory()
    for name, body in DOCS.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")
    ingest = _cli(env, "ingest", str(tmp_path), "--collection", "cli-kb")
    report = json.loads(ingest.stdout)
    statuses = {Path(d["file"]).name: d["status"] for d in report["documents"]}
    assert statuses == {
        "volcanoes.md": "ready",
        "sourdough.txt": "ready",
        "chess.html": "ready",
        "notes.bin": "rejected",
    }
    # One rejected file makes the exit status non-zero so scripts notice.
    assert ingest.returncode == 1
    found = _cli(
        env, "search", "Sicilian Defence", "--collection", "cli-kb", "--mode", "hybrid", "--top-k", "2"
    )
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert results[0]["filename"] == "chess.html"
    unknown = _cli(env, "search", "x", "--collection", "missing")
    assert unknown.returncode != 0 and "not found" in unknown.stderr


def test_configuration_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    empty_home = {"EMBEDDED_PG_DATA_DIR": str(tmp_path / "nothing-here")}
    cases = [
        ({**empty_home}, ["worker"], "POSTGRES_HOST is not set"),
        ({**empty_home}, ["search", "bees", "--collection", "c"], "no embedded `aperag serve` is running on"),
        ({**empty_home}, ["ingest", str(tmp_path), "--collection", "c"], "no embedded `aperag serve` is running"),
        ({"POSTGRES_HOST": "127.0.0.1"}, ["worker"], "REDIS_HOST is not set"),
        ({"CHUNK_SIZE": "lots"}, ["search", "x", "--collection", "c"], "CHUNK_SIZE must be an integer"),
    ]
    for env, args, message in cases:
        result = _cli(env, *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("configuration error: ") and message in lines[-1], (args, lines)
        assert "Traceback" not in result.stderr, args


def test_blank_search_query_is_refused(app_env_factory: Callable[..., dict[str, str]]) -> None:
    env = app_env_factory()
    result = _cli(env, "search", "   ", "--collection", "c")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: query: ")
