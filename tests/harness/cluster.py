"""The test suite's view of the local control plane (e2e/controlplane/localcluster.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.controlplane.localcluster import ClusterInfo
from tests.harness.wait import poll_until

KUBECTL = str(Path(sys.executable).parent / "kubectl")
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass
class Cluster:
    info: ClusterInfo

    @property
    def kubeconfig(self) -> Path:
        """Admin credentials (group system:masters)."""
        return Path(self.info.kubeconfig)

    @property
    def operator_kubeconfig(self) -> Path:
        """Credentials with the user name ``aperag-operator``, so its writes can be told apart."""
        return Path(self.info.operator_kubeconfig)

    @property
    def bin_dir(self) -> Path:
        return Path(self.info.bin_dir)

    @property
    def env(self) -> dict[str, str]:
        path = f"{self.bin_dir}{os.pathsep}{Path(KUBECTL).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [KUBECTL, f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, env=self.env, timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Waits until every named CRD is Established.

        Not ``kubectl wait``: right after creation a CRD can have no conditions yet, which it reports
        as an error instead of waiting.
        """

        def established() -> bool:
            for crd in crds:
                result = self.kubectl("get", f"crd/{crd}", "-o", "json", check=False)
                if result.returncode != 0:
                    return False
                conditions = (json.loads(result.stdout).get("status") or {}).get("conditions") or []
                if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    return False
            return True

        poll_until(established, timeout=timeout, what=f"CRDs Established: {', '.join(crds)}")

    def audit_events(
        self,
        username: str | None = None,
        namespace: str | None = None,
        verbs: set[str] | frozenset[str] | None = WRITE_VERBS,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """Audit events (Metadata level; the policy records write verbs only), oldest first.

        ``since`` is a Unix timestamp compared with the event's ``stageTimestamp``.
        """
        from datetime import datetime

        events = []
        with open(self.info.audit_log) as log:
            for line in log:
                event = json.loads(line)
                if event.get("stage") != "ResponseComplete":
                    continue
                if username is not None and event["user"].get("username") != username:
                    continue
                if verbs is not None and event["verb"] not in verbs:
                    continue
                if namespace is not None and event.get("objectRef", {}).get("namespace") != namespace:
                    continue
                if since is not None:
                    stamp = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))
                    if stamp.timestamp() < since:
                        continue
                events.append(event)
        return events
