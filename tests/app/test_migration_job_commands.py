"""The operator's migration Jobs, run for real: the Job objects the builder generates for the decisions of
the upgrade state machine, started the way the kubelet would (exact command, resolved env) against a real
PostgreSQL with pgvector; their termination messages read back with the operator's own parser and fed to
the machine.

Releases are "images" that differ by the test-only migrations location they bake in: 0.5.0 is this
checkout, 0.6.0-broken adds a revision that fails part-way, 0.6.0-fork a second head, 0.6.0 a good
revision (a new table and column).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aperag_operator.builders import configmap, migration_job
from aperag_operator.builders.common import Instance, Release
from aperag_operator.builders.database_env import build_database_env
from aperag_operator.spec.model import parse_spec
from aperag_operator.status import ComponentState
from aperag_operator.upgrade import (
    DeploymentObservation,
    UpgradeDecision,
    UpgradeInputs,
    UpgradeObserved,
    decide,
    observe_job,
    parse_report,
)
from sqlalchemy import create_engine, inspect, text

from aperag import migrate
from tests.app.conftest import settings_from
from tests.app.migration_fixtures import failing_release, next_release, release_head, second_head
from tests.app.pod_runtime import PodRuntime

REPO = "registry.test/aperag"
V5 = Release("0.5.0", f"{REPO}:0.5.0")
BROKEN = Release("0.6.0-broken", f"{REPO}:0.6.0-broken")
FORK = Release("0.6.0-fork", f"{REPO}:0.6.0-fork")
V6 = Release("0.6.0", f"{REPO}:0.6.0")
START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _sql(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


class Cluster:
    """The operator's side of the story: the spec, the status, the machine, and the "kubelet"."""

    def __init__(self, env: dict[str, str], runtime: PodRuntime) -> None:
        self.env = env
        self.runtime = runtime
        self.status: dict[str, Any] | None = None
        self.now = START
        self.jobs: dict[str, dict[str, Any]] = {}
        self.ran: list[tuple[str, list[str], dict[str, Any]]] = []
        # The ConfigMap the operator applies beside the Job (envFrom).
        inst = self.instance(V5)
        runtime.config_maps = {configmap.name(inst): configmap.settings(inst)}

    def spec(self, release: Release) -> dict[str, Any]:
        return {
            "version": release.version,
            "image": {"repository": REPO},
            "databases": {
                "postgresql": {
                    "external": {
                        "host": self.env["POSTGRES_HOST"],
                        "port": int(self.env["POSTGRES_PORT"]),
                        "database": self.env["POSTGRES_DB"],
                        "credentialsSecretRef": {"name": "pg-creds"},
                    }
                },
                "redis": {"external": {"host": "127.0.0.1", "port": 1}},
            },
        }

    def inputs(self, release: Release) -> UpgradeInputs:
        return UpgradeInputs("rag", "team-a", parse_spec(self.spec(release)), postgres_cluster=None)

    def instance(self, release: Release) -> Instance:
        return Instance("rag", "team-a", "00000000-0000-0000-0000-0000000000aa", self.inputs(release).spec)

    def database_env(self, release: Release) -> list[dict[str, Any]]:
        return build_database_env("rag", self.inputs(release).spec.databases)

    def decide(self, release: Release, deployments: Release | None, ready: bool = True) -> UpgradeDecision:
        """One reconcile: what exists (the Jobs run so far, Deployments at ``deployments``) -> decision."""
        observed = UpgradeObserved(
            jobs={name: observe_job(job, [job["pod"]]) for name, job in self.jobs.items()},
            deployments=_deployments(deployments, ready) if deployments else {},
        )
        decision = decide(self.inputs(release), self.status, observed, self.now)
        self.status = {**(self.status or {}), **decision.status_fields()}
        return decision

    def run_jobs(self, release: Release, decision: UpgradeDecision) -> dict[str, Any]:
        """Creates the Job the decision asks for and runs its pod to the end; returns the app's report."""
        (request,) = decision.jobs
        job = migration_job.build(self.instance(release), request, self.database_env(release))
        finished = self.runtime.run(job)
        container = job["spec"]["template"]["spec"]["containers"][0]
        self.ran.append((request.name, [*container["command"], *container.get("args", [])], finished.__dict__))
        self.jobs[request.name] = {**finished.job(job), "pod": finished.pod()}
        assert parse_report(finished.message) is not None, finished.message  # the operator can read it
        report: dict[str, Any] = json.loads(finished.message)
        return report

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _deployments(release: Release, ready: bool) -> dict[str, DeploymentObservation]:
    state = ComponentState(1, int(ready), 1, int(ready), ready)
    out = {}
    for component in ("api", "worker", "beat"):
        out[component] = DeploymentObservation(release.version, release.image, state)
    return out


def _phase(cluster: Cluster) -> str:
    assert cluster.status is not None
    return str(cluster.status["upgrade"]["phase"])


def test_install_fail_fork_upgrade_and_rollback_run_for_real(
    app_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    env = app_env_factory(migrate=False)
    url = settings_from(env).database_url
    head = release_head()
    runtime = PodRuntime(
        secrets={"pg-creds": {"username": env["POSTGRES_USER"], "password": env["POSTGRES_PASSWORD"]}},
        config_maps={},
        images={
            V5.image: {},
            BROKEN.image: {migrate.EXTRA_DIR_ENV: str(failing_release(tmp_path / "broken"))},
            FORK.image: {migrate.EXTRA_DIR_ENV: str(second_head(tmp_path / "fork"))},
            V6.image: {migrate.EXTRA_DIR_ENV: str(next_release(tmp_path / "next"))},
        },
        workdir=tmp_path,
    )
    cluster = Cluster(env, runtime)

    # First install: the Job runs before any Deployment exists.
    decision = cluster.decide(V5, None)
    assert decision.deployments is None
    report = cluster.run_jobs(V5, decision)
    assert cluster.ran[-1][1] == ["aperag", "migrate", "upgrade", "head"]
    assert report["ok"] is True and report["before"] == [] and report["current"] == [head]
    decision = cluster.decide(V5, None)
    assert decision.deployments == V5 and _phase(cluster) == "RollingOut"
    cluster.decide(V5, V5)
    assert _phase(cluster) == "Complete"
    assert cluster.status is not None and cluster.status["upgrade"]["running"]["revision"] == head
    installed = set(inspect(create_engine(url)).get_table_names())
    # The store tables too: the previous release's tsvector table beside this release's BM25 tables.
    assert {"vector_chunks", "fulltext_chunks", "fts_chunks", "fts_terms", "fts_postings"} <= installed
    _sql(url, "INSERT INTO collections (id, name) VALUES ('c1', 'written before')")
    _sql(
        url,
        "INSERT INTO documents (id, collection_id, filename, content_type, content_hash, size_bytes, object_key)"
        " VALUES ('d1', 'c1', 'a.txt', 'text/plain', 'h', 3, 'k')",
    )

    # A release whose second revision fails part-way: the whole run rolls back, nothing to downgrade.
    cluster.tick(60)
    decision = cluster.decide(BROKEN, V5)
    report = cluster.run_jobs(BROKEN, decision)
    assert cluster.ran[-1][2]["returncode"] == 1
    assert report["reason"] == "MigrationFailed" and report["changed"] is False and report["current"] == [head]
    decision = cluster.decide(BROKEN, V5)
    assert _phase(cluster) == "Failed" and decision.jobs == () and decision.deployments == V5
    assert [p.reason for p in decision.problems] == ["MigrationFailed"]
    assert migrate.current(url)["current"] == [head]
    assert "half_done" not in inspect(create_engine(url)).get_table_names()

    # A release with two heads: refused before anything changes.
    cluster.tick(60)
    decision = cluster.decide(FORK, V5)
    report = cluster.run_jobs(FORK, decision)
    assert report["reason"] == "MultipleHeads" and "t_fork" in report["message"] and "current" not in report
    decision = cluster.decide(FORK, V5)
    assert [p.reason for p in decision.problems] == ["MultipleHeads"]
    assert migrate.current(url)["current"] == [head]

    # A good release: migrated, then its pods never become ready: Deployments back, then the downgrade Job
    # with the NEW image to the revision recorded for the running version.
    cluster.tick(60)
    decision = cluster.decide(V6, V5)
    report = cluster.run_jobs(V6, decision)
    assert report["ok"] is True and report["current"] == ["t_next"]
    decision = cluster.decide(V6, V5)
    assert decision.deployments == V6
    _sql(url, "UPDATE collections SET tier = 'pro' WHERE id = 'c1'")  # the new code writes its new column
    cluster.tick(601)
    decision = cluster.decide(V6, V6, ready=False)
    assert decision.deployments == V5 and [p.reason for p in decision.problems] == ["RolloutFailed"]
    decision = cluster.decide(V6, V5)
    (downgrade,) = decision.jobs
    assert (downgrade.action, downgrade.release, downgrade.revision) == ("downgrade", V6, head)
    report = cluster.run_jobs(V6, decision)
    assert cluster.ran[-1][1] == ["aperag", "migrate", "downgrade", head]
    assert report["ok"] is True and report["before"] == ["t_next"] and report["current"] == [head]
    decision = cluster.decide(V6, V5)
    assert _phase(cluster) == "Failed" and decision.deployments == V5
    assert "rolled back" in decision.problems[0].message
    assert migrate.current(url)["current"] == [head]
    assert "tier" not in {c["name"] for c in inspect(create_engine(url)).get_columns("collections")}
    # The running release's schema is whole again: every table it had, none of the rolled-back one's.
    assert set(inspect(create_engine(url)).get_table_names()) == installed
    # The data written before every step survived all of them.
    assert _sql(url, "SELECT name FROM collections") == [("written before",)]
    assert _sql(url, "SELECT id, filename FROM documents") == [("d1", "a.txt")]
    # Each Job ran exactly once.
    names = [name for name, _, _ in cluster.ran]
    assert len(names) == len(set(names)) == 5
