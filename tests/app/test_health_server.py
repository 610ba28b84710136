"""The worker's and beat's health endpoints: ready only while every check passes, and saying why not."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from aperag.health_server import start_health_server

pytestmark = pytest.mark.app


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_ready_is_503_naming_the_failing_check_while_live_stays_200() -> None:
    broker_up = {"value": False}

    def broker() -> None:
        if not broker_up["value"]:
            raise ConnectionError("redis at 127.0.0.1:1 refused the connection")

    server = start_health_server("127.0.0.1", 0, {"redis": broker, "database": lambda: None})
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert get(f"{base}/health/live") == (200, {"status": "ok"})
        code, body = get(f"{base}/health/ready")
        assert code == 503
        assert body == {
            "ready": False,
            "checks": {"redis": "error: redis at 127.0.0.1:1 refused the connection", "database": "ok"},
        }
        broker_up["value"] = True
        assert get(f"{base}/health/ready") == (200, {"ready": True, "checks": {"redis": "ok", "database": "ok"}})
        assert get(f"{base}/nothing")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
