"""Fixtures for the operator's end-to-end tests: the ApeRAG CRD and the operator as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "aperag.io_aperags.yaml"


@pytest.fixture(scope="session")
def aperag_crd(cluster: Cluster) -> str:
    """The ApeRAG CRD, server-side applied and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=aperag-tests", "-f", str(CRD_FILE))

    cluster.wait_established("aperags.aperag.io")
    return "aperags.aperag.io"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class OperatorProcess:
    """The operator running as ``python -m aperag_operator run`` with the operator's credentials."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    liveness_url: str

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any] | None:
        """The liveness report when it says alive (200), else None."""
        code, body = self.probe()
        return body if code == 200 else None

    def probe(self, path: str | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of the liveness endpoint or another path of its server; (0, {}) when
        nothing answers."""
        url = self.liveness_url if path is None else self.liveness_url.rsplit("/", 1)[0] + path
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")
        except OSError:
            return 0, {}

    def synced(self) -> bool:
        """Whether the operator has listed every watched kind (its /readyz)."""
        return self.probe("/readyz")[0] == 200

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as when a node dies."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def reconciles(self, namespace: str, name: str) -> int:
        """How many reconciles of namespace/name have finished (from the operator's debug log)."""
        return len(re.findall(rf"reconciled {re.escape(namespace)}/{re.escape(name)}:", self.logs()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_operator(
    cluster: Cluster,
    log_path: Path,
    *scope: str,
    resync: float = 2.0,
    extra: tuple[str, ...] = (),
    kubeconfig: Path | None = None,
) -> OperatorProcess:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    credentials = kubeconfig or cluster.operator_kubeconfig
    env = {**cluster.env, "KUBECONFIG": str(credentials), "PYTHONUNBUFFERED": "1"}
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aperag_operator",
            "run",
            *scope,
            "--liveness",
            url,
            "--resync-interval",
            str(resync),
            "--log-level",
            "debug",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    return OperatorProcess(proc, log_path, url)


@pytest.fixture
async def operator(
    cluster: Cluster, namespace: str, aperag_crd: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[OperatorProcess]:
    """The operator watching only the test's namespace; its log is printed when the test fails."""
    op = start_operator(cluster, tmp_path / "operator.log", "--namespace", namespace)

    def healthy() -> bool:
        if op.proc.poll() is not None:
            raise AssertionError(f"operator exited with {op.proc.returncode}:\n{op.logs()[-5000:]}")
        return op.health() is not None

    try:
        await wait_until(healthy, timeout=60, what="operator liveness endpoint")
        yield op
    finally:
        op.stop()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            sys.stderr.write(f"\n--- operator log ({op.log_path}) ---\n{op.logs()[-20000:]}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def apply_yaml(cluster: Cluster, manifest: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --server-side`` of a manifest as the admin (strict field validation)."""
    return cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=aperag-tests",
        "--force-conflicts",
        "-f",
        "-",
        input=manifest,
        check=check,
    )


def kget(cluster: Cluster, namespace: str, *what: str) -> dict[str, Any] | None:
    """``kubectl get -o json``: None when the object does not exist; any other failure fails the test
    (a failing call must never pass for "nothing there")."""
    result = cluster.kubectl("get", "-n", namespace, *what, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr or "not found" in result.stderr:
            return None
        raise AssertionError(f"kubectl get {' '.join(what)} failed: {result.stderr}")
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


@contextlib.contextmanager
def kubeblocks_simulator(cluster: Cluster, *namespaces: str) -> Iterator[list[BaseException]]:
    """The simulated KubeBlocks controller for ``namespaces``, on its own event loop in a thread, so it
    keeps working while a test blocks its own loop (``kubectl wait``). Yields the simulators' errors."""
    from lightkube import AsyncClient, KubeConfig

    from e2e.simulators.kubeblocks import KubeBlocksSimulator

    errors: list[BaseException] = []
    stop = threading.Event()
    started = threading.Event()

    async def run() -> None:
        client = AsyncClient(config=KubeConfig.from_file(cluster.kubeconfig), field_manager="kubeblocks-simulator")
        try:
            async with contextlib.AsyncExitStack() as stack:
                sims = [await stack.enter_async_context(KubeBlocksSimulator(client, ns)) for ns in namespaces]
                started.set()
                await asyncio.to_thread(stop.wait)
                for sim in sims:
                    errors.extend(sim.errors)
        finally:
            started.set()
            await client.close()

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="kubeblocks-simulator", daemon=True)
    thread.start()
    started.wait(30)
    try:
        yield errors
    finally:
        stop.set()
        thread.join(30)


@contextlib.contextmanager
def bare_cluster(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Cluster]:
    """A fresh local cluster of its own with only the ApeRAG CRD: none of the upstream CRDs (KubeBlocks,
    KEDA, prometheus-operator), for the tests of what the operator does while they are missing."""
    from e2e.controlplane.localcluster import down, up

    state = tmp_path_factory.mktemp(name)
    info = up(state)
    try:
        bare = Cluster(info)
        bare.kubectl("apply", "--server-side", "--field-manager=aperag-tests", "-f", str(CRD_FILE))
        bare.wait_established("aperags.aperag.io")
        yield bare
    finally:
        down(state)
