"""No perpetual diff (docs/gitops.md): each example applied as Argo CD applies it (server-side apply,
field manager argocd-controller), reconciled to Ready by the real operator, then diffed on the server
(Argo CD's server-side diff: a dry-run apply) and synced again: nothing changes, and the operator writes
nothing because of it (audit log): no fight over the ApeRAG or any child."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess, apply_yaml, kget, kubeblocks_simulator
from tests.e2e.test_examples import CASES, EXAMPLES, secret
from tests.e2e.test_operator_core import wait_idle, wait_ready, writes
from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

ARGOCD = "--field-manager=argocd-controller"


@pytest.fixture
def simulated_kubeblocks(upstream_crds: list[str], cluster: Cluster, namespace: str) -> Iterator[None]:
    with kubeblocks_simulator(cluster, namespace) as errors:
        yield
    assert errors == []


def the_aperag(output: str) -> dict[str, Any]:
    doc = json.loads(output)
    items = doc["items"] if doc.get("kind") == "List" else [doc]
    (found,) = [i for i in items if i["kind"] == "ApeRAG"]
    return dict(found)


@pytest.mark.parametrize("example", sorted(CASES))
async def test_a_second_server_side_apply_changes_nothing_and_the_operator_does_not_fight_it(
    example: str, cluster: Cluster, namespace: str, operator: OperatorProcess, simulated_kubeblocks: None
) -> None:
    name, secrets, _ = CASES[example]
    for secret_name, (kind, data) in secrets.items():
        apply_yaml(cluster, secret(namespace, secret_name, data, kind))
    apply = ["apply", "--server-side", ARGOCD, "-n", namespace, "-f", str(EXAMPLES / example)]
    cluster.kubectl(*apply)
    await wait_ready(cluster, namespace, name, limit=120)
    await wait_idle(operator, namespace, name, cycles=2)
    live = kget(cluster, namespace, "aperag", name) or {}

    # Argo CD's server-side diff: a dry-run apply of what is in Git, compared with the live object.
    dry = the_aperag(cluster.kubectl(*apply, "--dry-run=server", "-o", "json").stdout)
    assert dry["spec"] == live["spec"]  # the API server's defaults are on both sides
    assert dry["metadata"]["generation"] == live["metadata"]["generation"]
    diff = cluster.kubectl("diff", "--server-side", ARGOCD, "-n", namespace, "-f", str(EXAMPLES / example),
                           check=False)  # fmt: skip
    assert diff.returncode == 0, f"kubectl diff --server-side shows a difference:\n{diff.stdout}{diff.stderr}"

    # A sync: the same apply for real. No change to the ApeRAG, and no write by the operator after it.
    since = time.time()
    cluster.kubectl(*apply)
    after = kget(cluster, namespace, "aperag", name, "--show-managed-fields") or {}
    assert after["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]
    await wait_idle(operator, namespace, name, cycles=3)
    assert writes(cluster, namespace, since) == []
    managers = {m["manager"] for m in after["metadata"]["managedFields"]}
    assert "argocd-controller" in managers and "aperag-operator" in managers  # spec and status, apart
    spec_owners = {m["manager"] for m in after["metadata"]["managedFields"] if m.get("subresource") != "status"}
    assert spec_owners == {"argocd-controller"}, after["metadata"]["managedFields"]
