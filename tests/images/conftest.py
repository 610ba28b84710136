"""Fixtures for the image tests: both images built (cached: a no-op when nothing changed), a real
embedded PostgreSQL with pgvector and a real redis-server on the host's loopback, and the ApeRAG CRD on
the local control plane for the operator image."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from aperag.embedded_pg import EmbeddedPostgres, remove_server, temporary_server
from bench.common import redis_server
from images.build import BuiltImage, build_all
from tests.e2e.conftest import aperag_crd  # noqa: F401  (fixture used by the operator image test)
from tests.images.pod_runner import remove_session_containers

TOOLS = ("buildah", "podman", "runc", "mmdebstrap")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.images)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def built_images() -> Iterator[dict[str, BuiltImage]]:
    """Both images, built as `make images` builds them (each step cached)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make image-packages` installs them")
    built = build_all()
    yield built
    remove_session_containers()


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    server, base = temporary_server()
    try:
        yield server
    finally:
        remove_server(server, base)


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make system-packages)")
    with redis_server() as port:
        yield port
