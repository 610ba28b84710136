"""Fixtures for the image tests: both images built (cached: a no-op when nothing changed), and the ApeRAG
CRD on the local control plane for the operator image. The real embedded PostgreSQL with pgvector and the
real redis-server on the host's loopback are the suite's (tests/conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.build import BuiltImage, build_all
from tests.e2e.conftest import aperag_crd  # noqa: F401  (fixture used by the operator image test)
from tests.harness.marks import mark_tests_under
from tests.images.pod_runner import remove_session_containers

TOOLS = ("buildah", "podman", "runc", "mmdebstrap")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tests_under(Path(__file__).parent, items, pytest.mark.images, pytest.mark.slow)


@pytest.fixture(scope="session")
def built_images() -> Iterator[dict[str, BuiltImage]]:
    """Both images, built as `make images` builds them (each step cached)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make image-packages` installs them")
    built = build_all()
    yield built
    remove_session_containers()
