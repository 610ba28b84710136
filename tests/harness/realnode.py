"""Putting the operator's pods on the real node, for tests only: a mutating admission webhook.

The real node (e2e/controlplane/realnode.py) has no pod network: its pods use the host's network and
bind 127.0.0.1. The operator generates pods for a real cluster (a pod network, fixed container ports,
a ReadWriteMany volume) and must keep doing so, so nothing in the ApeRAG spec or in the operator
changes for these tests. Instead this webhook, served by the test process on 127.0.0.1 with a
certificate from the cluster's CA, rewrites at creation the pods that carry the test label
:data:`PLACE_LABEL` (set through the spec's ``podLabels``, which users have anyway) and only those:

* placement: the real node's label as node selector, a toleration of its taint;
* host networking: ``hostNetwork: true``, ``dnsPolicy: Default``; every container port becomes a port
  of its own on 127.0.0.1 (two API pods of a rolling update run side by side on one host), given to the
  app through the variable that sets it (:data:`PORT_ENV`: ``APERAG_PORT`` for the API's 8000,
  ``HEALTH_PORT`` for the worker's and beat's 8001), with ``APERAG_HOST=127.0.0.1``; probes follow
  (they name the port ``http``) and ask 127.0.0.1;
* storage: a ``persistentVolumeClaim`` volume (the documents volume, which kwok "binds" to a hostPath
  no kubelet should create) becomes an ``emptyDir``.

A pod it cannot place (a port it does not know how to move) is refused, so nothing silently runs
elsewhere. What each pod got is recorded in its annotation :data:`PORTS_ANNOTATION`.

Why a webhook rather than a pod-template override in the spec (docs/design.md, "Tests on a real
node"): the objects under test stay exactly what users get (the Deployments and Jobs the operator
writes are unchanged, so its no-op checks, spec hashes and upgrade machine are tested as they run),
and host networking with per-pod ports is an artefact of this machine, not a feature users need.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from e2e.controlplane.localcluster import signed_cert
from e2e.controlplane.realnode import NODE_LABEL, TAINT
from tests.harness.cluster import Cluster

#: Pods carrying this label (value "true") are placed on the real node.
PLACE_LABEL = "test.aperag.io/real-node"
PORTS_ANNOTATION = "test.aperag.io/ports"
WEBHOOK_NAME = "real-node.test.aperag.io"
#: The app's container ports and the variable that moves each (docs/app.md).
PORT_ENV = {8000: "APERAG_PORT", 8001: "HEALTH_PORT"}
#: Ports handed out: below the kernel's ephemeral range (32768-60999), so no outgoing connection takes one.
PORT_RANGE = (20000, 32000)

Obj = dict[str, Any]


class PlacementRefused(ValueError):
    """A labelled pod this webhook does not know how to run on the real node."""


@dataclass
class PortAllocator:
    """Hands out loopback ports that are free now and were not handed out before in this session."""

    used: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> int:
        with self.lock:
            for _ in range(1000):
                port = random.randrange(*PORT_RANGE)
                if port in self.used:
                    continue
                with socket.socket() as sock:
                    try:
                        sock.bind(("127.0.0.1", port))
                    except OSError:
                        continue
                self.used.add(port)
                return port
        raise RuntimeError("no free loopback port left")


def _set_env(container: Obj, name: str, value: str) -> None:
    env = [e for e in container.get("env", []) if e["name"] != name]
    env.append({"name": name, "value": value})
    container["env"] = env


def place(pod: Obj, ports: PortAllocator) -> tuple[Obj, dict[str, int]]:
    """The pod as it runs on the real node, and the port each ``container/port`` got."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    spec["hostNetwork"] = True
    spec["dnsPolicy"] = "Default"
    spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), NODE_LABEL: "true"}
    spec["tolerations"] = [*(spec.get("tolerations") or []), {**TAINT, "operator": "Equal"}]
    for volume in spec.get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            del volume["persistentVolumeClaim"]
            volume["emptyDir"] = {}
    given: dict[str, int] = {}
    for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
        _set_env(container, "APERAG_HOST", "127.0.0.1")
        for port in container.get("ports") or []:
            original = port["containerPort"]
            if original not in PORT_ENV:
                raise PlacementRefused(
                    f"container {container['name']}: port {original} cannot be moved (known: {sorted(PORT_ENV)})"
                )
            new = ports.take()
            port["containerPort"] = port["hostPort"] = new
            _set_env(container, PORT_ENV[original], str(new))
            given[f"{container['name']}/{port.get('name', original)}"] = new
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(probe_name) or {}
            if "httpGet" in probe:
                probe["httpGet"]["host"] = "127.0.0.1"
            if "tcpSocket" in probe:
                probe["tcpSocket"]["host"] = "127.0.0.1"
    return pod, given


def review_response(review: Obj, ports: PortAllocator) -> Obj:
    """The AdmissionReview answer: a JSON patch placing the pod, or a refusal."""
    request = review["request"]
    response: Obj = {"uid": request["uid"], "allowed": True}
    pod = request["object"]
    try:
        placed, given = place(pod, ports)
    except PlacementRefused as err:
        response = {"uid": request["uid"], "allowed": False, "status": {"code": 422, "message": str(err)}}
    else:
        annotations = {**(pod["metadata"].get("annotations") or {}), PORTS_ANNOTATION: json.dumps(given)}
        patch = [
            {"op": "replace", "path": "/spec", "value": placed["spec"]},
            {"op": "add", "path": "/metadata/annotations", "value": annotations},
        ]
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class PlacementWebhook:
    """The webhook server (a thread of the test process) and its MutatingWebhookConfiguration."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.ports = PortAllocator()
        self.requests = 0
        self.errors: list[str] = []
        pki = Path(cluster.info.state_dir) / "pki"
        if not (pki / "test-webhook.crt").exists():
            signed_cert("test-webhook", "/CN=aperag-test-webhook", pki, server_names=["IP:127.0.0.1"])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(pki / "test-webhook.crt"), str(pki / "test-webhook.key"))
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    body = json.dumps(review_response(review, webhook.ports)).encode()
                    webhook.requests += 1
                except Exception as err:  # a bug here must show in the test, not only in a log
                    webhook.errors.append(repr(err))
                    self.send_error(500, repr(err))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="real-node-webhook", daemon=True)
        self.ca_bundle = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        self.manifest = workdir / "real-node-webhook.json"

    def configuration(self) -> Obj:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_NAME},
            "webhooks": [
                {
                    "name": WEBHOOK_NAME,
                    "clientConfig": {"url": f"https://127.0.0.1:{self.port}/mutate", "caBundle": self.ca_bundle},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                            "scope": "Namespaced",
                        }
                    ],
                    "objectSelector": {"matchLabels": {PLACE_LABEL: "true"}},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    # A labelled pod is never created unplaced (it would land on kwok and pass for real).
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                }
            ],
        }

    def start(self) -> PlacementWebhook:
        self.thread.start()
        self.manifest.write_text(json.dumps(self.configuration()))
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=aperag-tests", "-f",
                             str(self.manifest))  # fmt: skip
        return self

    def stop(self) -> None:
        self.cluster.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK_NAME, "--ignore-not-found", check=False)
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def pod_port(pod: Obj, container: str = "api") -> int:
    """The loopback port the webhook gave the pod's (first) container port."""
    given: dict[str, int] = json.loads(pod["metadata"]["annotations"][PORTS_ANNOTATION])
    (port,) = [p for key, p in given.items() if key.startswith(f"{container}/")]
    return port


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.harness.realnode --state-dir .cluster``: the webhook as a process of its own, for
    ``make demo REAL_NODE=1`` (the tests run it in a thread). It removes its configuration on SIGTERM."""
    import argparse
    import signal

    from e2e.controlplane.localcluster import ClusterInfo

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    state = args.state_dir.resolve()
    webhook = PlacementWebhook(Cluster(ClusterInfo.load(state)), state).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"placement webhook on https://127.0.0.1:{webhook.port}/mutate", flush=True)
    stop.wait()
    webhook.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
