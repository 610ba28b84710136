"""Fixtures shared across the suites: the local Kubernetes control plane, and the real PostgreSQL (embedded,
pgvector) and redis-server on free loopback ports (one of each for the session, whichever suites use them)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from lightkube import AsyncClient, KubeConfig

from aperag.config import load_settings
from aperag.embedded_pg import EmbeddedPostgres, remove_server, temporary_server
from bench.common import redis_server
from e2e.controlplane.localcluster import ClusterInfo, down, up
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The local cluster: the one ``make cluster-up`` started (named by KUBECONFIG), or a new one."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig and (Path(kubeconfig).parent / "cluster.json").exists():
        yield Cluster(ClusterInfo.load(Path(kubeconfig).parent))
        return
    state = tmp_path_factory.mktemp("cluster")
    info = up(state)
    try:
        yield Cluster(info)
    finally:
        down(state)


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(config=KubeConfig.from_file(cluster.kubeconfig), field_manager="aperag-tests")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def namespace(request: pytest.FixtureRequest, cluster: Cluster, kube: AsyncClient) -> AsyncIterator[str]:
    """A fresh namespace for one test, with its default ServiceAccount in place; deleted afterwards."""
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace, ServiceAccount

    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    await kube.create(Namespace(metadata=ObjectMeta(name=name, labels={"aperag.io/test": "true"})))

    async def default_service_account() -> bool:
        accounts = [sa async for sa in kube.list(ServiceAccount, namespace=name)]
        return any(sa.metadata is not None and sa.metadata.name == "default" for sa in accounts)

    await wait_until(default_service_account, timeout=30, what=f"ServiceAccount default in {name}")
    yield name
    await kube.delete(Namespace, name)


def shared_dir() -> Path:
    """``shared/`` beside the repository (CI clones main with it there); APERAG_SHARED_DIR overrides."""
    override = os.environ.get("APERAG_SHARED_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared"


UPSTREAM_CRD_DIRS = ("kubeblocks-v1.0.2", "keda-v2.20.2")


@pytest.fixture(scope="session")
def upstream_crds(cluster: Cluster) -> list[str]:
    """The real KubeBlocks and KEDA CRDs, installed with server-side apply and Established.

    Returns the CRD names. Server-side apply because the Cluster CRD (2.2 MB) is far over the
    256 KiB last-applied annotation that client-side apply would need.
    """
    crd_root = shared_dir() / "fixtures" / "crds"
    if not crd_root.is_dir():
        raise FileNotFoundError(f"upstream CRDs not found at {crd_root}; set APERAG_SHARED_DIR")
    args = ["apply", "--server-side", "--force-conflicts", "--field-manager=aperag-tests", "-o", "name"]
    for sub in UPSTREAM_CRD_DIRS:
        args += ["-f", str(crd_root / sub)]
    names = [line.split("/", 1)[1] for line in cluster.kubectl(*args).stdout.split()]
    # Not a bare `kubectl wait`: right after creation a CRD may have no conditions yet, which it treats
    # as an error. Retry until every CRD is Established.
    cluster.wait_established(*names, timeout=90)
    return names


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
        pytest.fail("redis-server is not installed: `make system-packages` installs it (tests/app/SETUP.md)")
    with redis_server() as port:
        yield port


@pytest.fixture(autouse=True)
def _release_database_connections() -> Iterator[None]:
    """The app keeps one engine, with its pool, per database URL (aperag.db.session), and most tests make
    a database of their own on the one shared server: the idle connections of finished tests add up past
    its max_connections (a whole run hit "too many clients"). Close them after each test; an engine
    still held by a longer-lived fixture opens new ones when it is used again."""
    yield
    session = sys.modules.get("aperag.db.session")
    if session is not None:
        session.dispose_all()


@pytest.fixture(scope="session")
def app_env_factory(
    postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., dict[str, str]]:
    """A fresh database per caller, migrated to head, and the environment pointing at it."""

    def make(migrate: bool = True, **extra: str) -> dict[str, str]:
        from aperag import migrate as migrations

        name = "t_" + uuid.uuid4().hex[:10]
        postgres.create_database(name)
        env = {
            **postgres.env(name),
            "OBJECT_STORE_TYPE": "local",
            "OBJECT_STORE_LOCAL_ROOT_DIR": str(tmp_path_factory.mktemp("objects")),
            "CHUNK_SIZE": "120",
            "CHUNK_OVERLAP_SIZE": "16",
            **extra,
        }
        if migrate:
            settings = load_settings(env)
            migrations.upgrade(settings.database_url)
            from aperag.context import AppContext

            AppContext(settings=settings).ensure_store_schemas()
        return env

    return make
