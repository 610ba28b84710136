"""Fixtures of the real-node tests: a local cluster of their own with one real kubelet node, the test
webhook that places labelled pods on it, the app image in four versions imported into its containerd,
a real PostgreSQL (pgvector) and a real redis-server on 127.0.0.1, and the operator as a subprocess.

When the real node cannot start, every test here fails saying why (never a skip): `make test` runs
them. `make test REAL_NODE=0` deselects them on a machine that cannot run a kubelet (not in CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane import realnode
from e2e.controlplane.localcluster import down, up
from images.build import build_all
from tests.e2e.conftest import CRD_FILE, OperatorProcess, start_operator
from tests.harness.cluster import Cluster
from tests.harness.realnode import PlacementWebhook
from tests.harness.wait import poll_until
from tests.realnode import images

HERE = Path(__file__).parent
#: Start-up figures of this session (docs/benchmarks.md), printed at the end.
TIMINGS: dict[str, float] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            for marker in ("realnode", "slow", "cluster", "operator", "images"):
                item.add_marker(getattr(pytest.mark, marker))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A local cluster of its own (one kwok node) with the real node. One real node runs per machine:
    while another session's runs, this waits (APERAG_REAL_NODE_WAIT seconds, 600 by default)."""
    state = tmp_path_factory.mktemp("real-cluster")
    started = time.monotonic()
    try:
        info = up(state, nodes=1, real_node=True, real_node_wait=float(os.environ.get("APERAG_REAL_NODE_WAIT", "600")))
    except realnode.RealNodeUnavailable as err:
        pytest.fail(f"the real node cannot start, so the real-node tests cannot run: {err}", pytrace=False)
    TIMINGS["cluster with real node up (s)"] = round(time.monotonic() - started, 1)
    cluster = Cluster(info)
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=aperag-tests", "-f",
                        str(CRD_FILE))  # fmt: skip
        cluster.wait_established("aperags.aperag.io")
        yield cluster
    finally:
        started = time.monotonic()
        down(state)
        TIMINGS["cluster with real node down (s)"] = round(time.monotonic() - started, 1)
        sys.stderr.write(f"\n[realnode] timings: {json.dumps(TIMINGS)}\n")


@pytest.fixture(scope="session")
def app_images(real_cluster: Cluster) -> images.TestImages:
    """The four app versions, imported into the real node's containerd."""
    missing = [tool for tool in ("buildah", "podman") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make image-packages` installs them", pytrace=False)
    started = time.monotonic()
    built = build_all()
    TIMINGS["app image build (s)"] = round(time.monotonic() - started, 1)
    test_images = images.build(built["app"])
    TIMINGS.update({f"test images {k} (s)": v for k, v in test_images.timings.items()})
    assert real_cluster.info.real_node is not None
    started = time.monotonic()
    imported = realnode.import_images(real_cluster.info.real_node, test_images.archive, list(test_images.refs.values()))
    TIMINGS[f"image import into containerd{'' if imported else ' (already there)'} (s)"] = round(
        time.monotonic() - started, 1
    )
    return test_images


@pytest.fixture(scope="session")
def placement(real_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlacementWebhook]:
    webhook = PlacementWebhook(real_cluster, tmp_path_factory.mktemp("webhook")).start()
    try:
        yield webhook
    finally:
        webhook.stop()
    assert webhook.errors == [], webhook.errors


@pytest.fixture
def real_namespace(request: pytest.FixtureRequest, real_cluster: Cluster) -> Iterator[str]:
    """A fresh namespace on the real cluster; deleted afterwards (the kubelet stops its pods)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", name)
    poll_until(
        lambda: real_cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        what=f"ServiceAccount default in {name}",
    )
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def real_operator(
    real_cluster: Cluster, real_namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    """The operator watching the test's namespace on the real cluster; its log is printed on failure."""
    op = start_operator(real_cluster, tmp_path / "operator.log", "--namespace", real_namespace)

    def healthy() -> bool:
        if op.proc.poll() is not None:
            raise AssertionError(f"operator exited with {op.proc.returncode}:\n{op.logs()[-5000:]}")
        return op.health() is not None

    try:
        poll_until(healthy, timeout=60, what="operator liveness endpoint")
        yield op
    finally:
        op.stop()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            sys.stderr.write(f"\n--- operator log ({op.log_path}) ---\n{op.logs()[-20000:]}\n")
