"""A local Kubernetes control plane on 127.0.0.1 for the tests and the demo.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (playing the kubelet for fake
nodes), all built from source by ``build.sh``. Everything a cluster needs (PKI, kubeconfigs, data,
logs, the pid of each process) lives in one state directory; ``down`` stops exactly the processes
recorded there.

Usage: ``python e2e/controlplane/localcluster.py up|down|status|build [--state-dir DIR] [--real-node]``;
``--real-node`` adds one real kubelet node (containerd v2 + runc, realnode.py) beside kwok's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

if __package__ in (None, ""):  # run as a script: python e2e/controlplane/localcluster.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from e2e.controlplane import realnode

HERE = Path(__file__).resolve().parent
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_CLUSTER_FIRST_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"

# Pod markers understood by the kwok stages below (documented in e2e/controlplane/README.md).
NEVER_READY_LABEL = "kwok.aperag.io/never-ready"
FAIL_LABEL = "kwok.aperag.io/fail"
#: The termination message a Job's pod ends with (kwok runs no container, so nothing writes one): the
#: migration Job's JSON report in the upgrade tests. With FAIL_LABEL the pod fails with this message.
TERMINATION_MESSAGE_ANNOTATION = "kwok.aperag.io/termination-message"
#: The operator labels a migration Job's pods with its action (upgrade or downgrade). Tests steer each
#: action on its own: labels kwok.aperag.io/fail-<action> (the pod fails) and kwok.aperag.io/hang-<action>
#: (it runs and never ends: the Job's deadline fails it), and the annotation
#: kwok.aperag.io/termination-message-<action> (its report), all on the same pod template.
ACTION_LABEL = "aperag.io/migration-action"
#: An app image whose Deployment pods never become ready (their Job pods run as usual): the way tests
#: break one release and not the other, since a rollback rebuilds the Deployments from the current spec
#: with the previous release's image. Tests set ``spec.image.repository: kwok.invalid/aperag`` and
#: ``spec.image.tag: never-ready``.
NEVER_READY_IMAGE = "kwok.invalid/aperag:never-ready"
ACTIONS = ("upgrade", "downgrade")


#: How long a migration pod marked kwok.aperag.io/slow-<action> takes to complete.
SLOW_MILLISECONDS = 12000


def action_marker(outcome: str, action: str) -> str:
    """``kwok.aperag.io/fail-upgrade``, ``kwok.aperag.io/hang-downgrade``, ..."""
    return f"kwok.aperag.io/{outcome}-{action}"


# The controllers the tests rely on; nodelifecycle and cloud controllers stay off (kwok nodes).
CONTROLLERS = [
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "job-controller",
    "cronjob-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "disruption-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "resourcequota-controller",
    "horizontal-pod-autoscaler-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    # kube-root-ca.crt in every namespace: the projected service-account token volume of a pod on the
    # real node mounts it (kwok mounts nothing, so nothing needed it before).
    "root-ca-certificate-publisher-controller",
]

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


@dataclass
class ManagedProcess:
    name: str
    pid: int
    executable: str
    #: The command line, so that a test can stop one component and start it again (an API server
    #: outage).
    argv: list[str] = field(default_factory=list)
    #: The environment it was started with, when not the caller's (the real node's processes).
    env: dict[str, str] | None = None


@dataclass
class ClusterInfo:
    """What a running local cluster looks like; saved as ``cluster.json`` in the state directory."""

    state_dir: str
    bin_dir: str
    kubernetes_version: str
    apiserver_url: str
    kubeconfig: str
    operator_kubeconfig: str
    audit_log: str
    processes: list[ManagedProcess] = field(default_factory=list)
    #: The real node (realnode.RealNodeInfo as a dict) when started with ``--real-node``.
    real_node: dict[str, Any] | None = None

    @classmethod
    def load(cls, state_dir: Path) -> ClusterInfo:
        raw = json.loads((state_dir / "cluster.json").read_text())
        raw["processes"] = [ManagedProcess(**p) for p in raw["processes"]]
        return cls(**raw)

    def save(self) -> None:
        path = Path(self.state_dir) / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=2))


def log(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)


def build_binaries(*, real_node: bool = False) -> Path:
    """Runs build.sh (a no-op on a warm cache) and returns the directory with the binaries; with
    ``real_node`` also the kubelet, containerd and the pause binary."""
    argv = ["bash", str(HERE / "build.sh"), *(["node"] if real_node else [])]
    result = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def kubernetes_version() -> str:
    for line in (HERE / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError("KUBERNETES_VERSION missing from versions.env")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- PKI --------------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def ec_key(name: str, pki: Path) -> None:
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=pki)


def signed_cert(name: str, subject: str, pki: Path, *, server_names: list[str] | None = None) -> None:
    ec_key(name, pki)
    openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    ext = pki / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
    if server_names:
        lines.append("extendedKeyUsage=serverAuth,clientAuth")
        lines.append("subjectAltName=" + ",".join(server_names))
    else:
        lines.append("extendedKeyUsage=clientAuth")
    ext.write_text("\n".join(lines) + "\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        ext.name,
        "-out",
        f"{name}.crt",
        cwd=pki,
    )


def make_pki(pki: Path) -> None:
    """A private CA, the apiserver's serving cert, client certs and the service-account key pair."""
    if (pki / "done").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    ec_key("ca", pki)
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=aperag-local-ca",
        "-days",
        "3650",
        "-sha256",
        "-out",
        "ca.crt",
        cwd=pki,
    )
    signed_cert(
        "apiserver",
        "/CN=kube-apiserver",
        pki,
        server_names=[
            "IP:127.0.0.1",
            f"IP:{SERVICE_CLUSTER_FIRST_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ],
    )
    # Every component of this throwaway cluster is an admin; the operator gets a name of its own so
    # the audit log can tell its writes apart.
    for name, subject in [
        ("admin", "/O=system:masters/CN=kubernetes-admin"),
        ("operator", "/O=system:masters/CN=aperag-operator"),
        ("controller-manager", "/O=system:masters/CN=system:kube-controller-manager"),
        ("scheduler", "/O=system:masters/CN=system:kube-scheduler"),
        ("kwok", "/O=system:masters/CN=kwok"),
    ]:
        signed_cert(name, subject, pki)
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    (pki / "done").write_text("ok\n")


#: The client certificate the API server presents to aggregated API servers (KEDA's metrics API server),
#: which trust the user it forwards in the X-Remote-* headers only from this name.
FRONT_PROXY_CLIENT = "front-proxy-client"


def ensure_front_proxy_cert(pki: Path) -> None:
    """The aggregation layer's client certificate (made apart from ``make_pki``, so a state directory
    made before it existed gets it too)."""
    if not (pki / f"{FRONT_PROXY_CLIENT}.crt").exists():
        signed_cert(FRONT_PROXY_CLIENT, f"/CN={FRONT_PROXY_CLIENT}", pki)


def write_kubeconfig(path: Path, server: str, pki: Path, client: str) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "aperag-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": client,
                "user": {
                    "client-certificate-data": b64(f"{client}.crt"),
                    "client-key-data": b64(f"{client}.key"),
                },
            }
        ],
        "contexts": [{"name": "aperag-local", "context": {"cluster": "aperag-local", "user": client}}],
        "current-context": "aperag-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# --- kwok stages ------------------------------------------------------------------------------


def module_dir(build_module: str, module: str) -> Path:
    """Where the Go module cache holds ``module`` as the build module ``modules/<build_module>`` pins it
    (downloaded from the module proxy if need be): kwok's stages, KEDA's CRDs."""
    result = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", module],
        cwd=HERE / "modules" / build_module,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOSUMDB": "off"},
    )
    return Path(result.stdout.strip())


def kwok_module_dir() -> Path:
    return module_dir("kwok", "sigs.k8s.io/kwok")


def _without_markers(stage: dict[str, Any]) -> dict[str, Any]:
    """The stock stage, limited to pods that carry none of our outcome markers."""
    expressions = stage["spec"]["selector"].setdefault("matchExpressions", [])
    for label in (NEVER_READY_LABEL, FAIL_LABEL):
        expressions.append({"key": f'.metadata.labels["{label}"]', "operator": "DoesNotExist"})
    if stage["metadata"]["name"] == "pod-complete":
        # A Job pod with a termination message completes through our stage instead.
        expressions.append(
            {"key": f'.metadata.annotations["{TERMINATION_MESSAGE_ANNOTATION}"]', "operator": "DoesNotExist"}
        )
    return stage


def _marker_stage(name: str, label: str, status_template: str, extra: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchLabels": {label: "true"},
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                    *extra,
                ],
            },
            "next": {"statusTemplate": status_template},
        },
    }


_CONDITIONS_NOT_READY = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: ContainersReady
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: PodScheduled
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
startTime: {{ $now | Quote }}
"""

NEVER_READY_TEMPLATE = (
    _CONDITIONS_NOT_READY
    + """\
phase: Running
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
"""
)

# The pod's termination-message annotation for its action, else its plain one, else the given default.
_MESSAGE = """\
{{ $message := "%s" }}
{{ $action := "" }}
{{ with .metadata.labels }}{{ with index . "aperag.io/migration-action" }}{{ $action = . }}{{ end }}{{ end }}
{{ with .metadata.annotations }}{{ with index . "%s" }}{{ $message = . }}{{ end }}{{ end }}
{{ with .metadata.annotations }}{{ with index . (printf "kwok.aperag.io/termination-message-%%s" $action) }}{{ $message = . }}{{ end }}{{ end }}
"""

# A container that exits 1: a pod that is not restarted (a Job's) ends Failed ...
FAILED_TEMPLATE = (
    _MESSAGE % ("failed on purpose (kwok.aperag.io/fail)", TERMINATION_MESSAGE_ANNOTATION)
    + _CONDITIONS_NOT_READY
    + """\
phase: Failed
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 1
      reason: Error
      message: {{ $message | Quote }}
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""
)

# A running Job pod carrying a termination message completes with it (exit code 0), as a container that
# wrote its termination-message file and exited would.
COMPLETE_WITH_MESSAGE_TEMPLATE = (
    _MESSAGE % ("", TERMINATION_MESSAGE_ANNOTATION)
    + """\
{{ $now := Now }}
phase: Succeeded
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      reason: Completed
      message: {{ $message | Quote }}
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""
)

# ... and one that is restarted (restartPolicy Always) crash-loops, as a kubelet would show it.
CRASHLOOP_TEMPLATE = (
    _CONDITIONS_NOT_READY
    + """\
phase: Running
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 3
  started: false
  state:
    waiting:
      reason: CrashLoopBackOff
      message: back-off restarting failed container
  lastState:
    terminated:
      exitCode: 1
      reason: Error
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""
)


def kwok_stages() -> list[dict[str, Any]]:
    """kwok's stock node, pod and volume stages (from its module) plus our outcome stages."""
    stage_root = kwok_module_dir() / "kustomize" / "stage"
    files = [
        "node/fast/node-initialize.yaml",
        "node/heartbeat/node-heartbeat.yaml",
        "pod/fast/pod-ready.yaml",
        "pod/fast/pod-complete.yaml",
        "pod/fast/pod-delete.yaml",
        "volume/fast/pv-bind.yaml",
        "volume/fast/pv-delete.yaml",
        "volume/fast/pvc-provision.yaml",
        "volume/fast/pvc-delete.yaml",
    ]
    stages = []
    for name in files:
        stage = yaml.safe_load((stage_root / name).read_text())
        if name == "pod/fast/pod-ready.yaml":
            stages += _per_action(_with_image(_without_markers(stage), "NotIn", ""))
            stages += _per_action(_with_image(_without_markers(stage), "In", "-job-never-ready-image", jobs=True))
        elif name.startswith("pod/") and "delete" not in name:
            stages += _per_action(_without_markers(stage))
        else:
            stages.append(stage)
    restarted = {"key": ".spec.restartPolicy", "operator": "In", "values": ["Always"]}
    not_restarted = {"key": ".spec.restartPolicy", "operator": "NotIn", "values": ["Always"]}
    stages.append(_marker_stage("aperag-pod-never-ready", NEVER_READY_LABEL, NEVER_READY_TEMPLATE, []))
    stages.append(_never_ready_image_stage())
    stages.append(_marker_stage("aperag-pod-fail", FAIL_LABEL, FAILED_TEMPLATE, [not_restarted]))
    stages.append(_marker_stage("aperag-pod-crashloop", FAIL_LABEL, CRASHLOOP_TEMPLATE, [restarted]))
    stages += _per_action(_complete_with_message_stage(), extra_outcomes=("slow",))
    for action in ACTIONS:  # a migration that takes a while (long enough to stop the operator meanwhile)
        stages.append(_slow_complete_with_message_stage(action))
    generic_absent = [
        {"key": f'.metadata.labels["{label}"]', "operator": "DoesNotExist"} for label in (FAIL_LABEL, NEVER_READY_LABEL)
    ]
    for action in ACTIONS:
        is_action = {"key": f'.metadata.labels["{ACTION_LABEL}"]', "operator": "In", "values": [action]}
        no_fail = {"key": f'.metadata.labels["{action_marker("fail", action)}"]', "operator": "DoesNotExist"}
        stages.append(_marker_stage(f"aperag-pod-fail-{action}", action_marker("fail", action), FAILED_TEMPLATE,
                                    [not_restarted, is_action, *generic_absent]))  # fmt: skip
        stages.append(_marker_stage(f"aperag-pod-hang-{action}", action_marker("hang", action), NEVER_READY_TEMPLATE,
                                    [is_action, no_fail, *generic_absent]))  # fmt: skip
    return stages


def _with_image(stage: dict[str, Any], operator: str, suffix: str, *, jobs: bool = False) -> dict[str, Any]:
    """The stage for pods whose image is (In) or is not (NotIn) the never-ready image; ``jobs``: only
    Job pods."""
    expressions = [
        *stage["spec"]["selector"].get("matchExpressions", []),
        {"key": ".spec.containers.[].image", "operator": operator, "values": [NEVER_READY_IMAGE]},
    ]
    if jobs:
        expressions.append({"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]})
    return _with(stage, suffix, expressions)


def _never_ready_image_stage() -> dict[str, Any]:
    stage = _marker_stage("aperag-pod-never-ready-image", NEVER_READY_LABEL, NEVER_READY_TEMPLATE, [])
    selector = stage["spec"]["selector"]
    selector.pop("matchLabels")
    selector["matchExpressions"] += [
        {"key": ".spec.containers.[].image", "operator": "In", "values": [NEVER_READY_IMAGE]},
        {"key": ".metadata.ownerReferences.[].kind", "operator": "NotIn", "values": ["Job"]},
        *(
            {"key": f'.metadata.labels["{label}"]', "operator": "DoesNotExist"}
            for label in (FAIL_LABEL, NEVER_READY_LABEL)
        ),
    ]
    return stage


def _slow_complete_with_message_stage(action: str) -> dict[str, Any]:
    stage = _complete_with_message_stage()
    expressions = [
        *stage["spec"]["selector"]["matchExpressions"],
        {"key": f'.metadata.labels["{ACTION_LABEL}"]', "operator": "In", "values": [action]},
        {"key": f'.metadata.labels["{action_marker("slow", action)}"]', "operator": "Exists"},
        *(
            {"key": f'.metadata.labels["{action_marker(outcome, action)}"]', "operator": "DoesNotExist"}
            for outcome in ("fail", "hang")
        ),
    ]
    slow = _with(stage, f"-{action}-slow", expressions)
    slow["spec"]["delay"] = {"durationMilliseconds": SLOW_MILLISECONDS}
    return slow


def _per_action(stage: dict[str, Any], extra_outcomes: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A pod stage split so that each migration action's own markers take its pods out of it: one copy for
    pods without an action, one per action without that action's fail or hang marker. (kwok selectors
    are conjunctions; the split keeps every pod matched by exactly one stage.)"""
    expressions = stage["spec"]["selector"].get("matchExpressions", [])
    out = [_with(stage, "", [*expressions, {"key": f'.metadata.labels["{ACTION_LABEL}"]', "operator": "DoesNotExist"}])]
    for action in ACTIONS:
        out.append(
            _with(
                stage,
                f"-{action}",
                [
                    *expressions,
                    {"key": f'.metadata.labels["{ACTION_LABEL}"]', "operator": "In", "values": [action]},
                    *(
                        {"key": f'.metadata.labels["{action_marker(outcome, action)}"]', "operator": "DoesNotExist"}
                        for outcome in ("fail", "hang", *extra_outcomes)
                    ),
                ],
            )
        )
    return out


def _with(stage: dict[str, Any], suffix: str, expressions: list[dict[str, Any]]) -> dict[str, Any]:
    copy = json.loads(json.dumps(stage))
    copy["metadata"]["name"] += suffix
    copy["spec"]["selector"]["matchExpressions"] = expressions
    return copy


def _complete_with_message_stage() -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "aperag-pod-complete-with-message"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                    {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
                    {"key": f'.metadata.annotations["{TERMINATION_MESSAGE_ANNOTATION}"]', "operator": "Exists"},
                    {"key": f'.metadata.labels["{FAIL_LABEL}"]', "operator": "DoesNotExist"},
                    {"key": f'.metadata.labels["{NEVER_READY_LABEL}"]', "operator": "DoesNotExist"},
                ],
            },
            "next": {"statusTemplate": COMPLETE_WITH_MESSAGE_TEMPLATE},
        },
    }


# --- talking to the apiserver without a client library ----------------------------------------


class Api:
    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, content_type: str = "application/json"
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self.context, timeout=10) as resp:
            payload = resp.read()
        return json.loads(payload) if payload.startswith(b"{") else payload.decode()

    def ensure(self, path: str, body: dict[str, Any]) -> None:
        try:
            self.request("POST", path, body)
        except urllib.error.HTTPError as err:
            if err.code != 409:
                raise


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as err:
            last_error = err
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def node_manifest(name: str) -> dict[str, Any]:
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "topology.kubernetes.io/zone": f"zone-{name[-1]}",
                "type": "kwok",
            },
        },
        "status": {"allocatable": capacity, "capacity": capacity},
    }


# --- processes --------------------------------------------------------------------------------


def _start(name: str, argv: list[str], state: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    logfile = (state / "logs" / f"{name}.log").open("ab")
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    return ManagedProcess(name=name, pid=process.pid, executable=argv[0], argv=list(argv), env=env)


def _is_ours(process: ManagedProcess) -> bool:
    try:
        exe = os.readlink(f"/proc/{process.pid}/exe")
    except OSError:
        return False
    return exe.removesuffix(" (deleted)") == process.executable


def up(state: Path, *, nodes: int = 2, real_node: bool = False, real_node_wait: float = 0) -> ClusterInfo:
    """Starts the control plane with ``nodes`` kwok nodes; with ``real_node`` also one real kubelet node
    (realnode.py), waiting up to ``real_node_wait`` seconds while another cluster's real node runs on
    this machine. A running cluster is returned as it is (a real node is added when asked for)."""
    state = state.resolve()
    if (state / "cluster.json").exists():
        info = ClusterInfo.load(state)
        if all(_is_ours(p) for p in info.processes):
            log(f"already running (state {state})")
            if real_node and info.real_node is None:
                realnode.start(info, state, build_binaries(real_node=True), real_node_wait)
            return info
        down(state)
    if real_node:
        problems = realnode.preflight()
        if problems:
            raise realnode.RealNodeUnavailable("the real node cannot start on this machine: " + "; ".join(problems))
    started = time.monotonic()
    bin_dir = build_binaries(real_node=real_node)
    log(f"binaries ready in {time.monotonic() - started:.1f}s ({bin_dir})")
    started = time.monotonic()
    # A stopped cluster is not resumed: a fresh store and fresh logs, only the PKI is kept.
    for sub in ("logs", "etcd", "certs"):
        shutil.rmtree(state / sub, ignore_errors=True)
        (state / sub).mkdir(parents=True)
    pki = state / "pki"
    make_pki(pki)
    ensure_front_proxy_cert(pki)
    etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    info = ClusterInfo(
        state_dir=str(state),
        bin_dir=str(bin_dir),
        kubernetes_version=kubernetes_version(),
        apiserver_url=server,
        kubeconfig=str(state / "admin.kubeconfig"),
        operator_kubeconfig=str(state / "operator.kubeconfig"),
        audit_log=str(state / "logs" / "audit.log"),
    )
    for client in ("admin", "operator", "controller-manager", "scheduler", "kwok"):
        write_kubeconfig(state / f"{client}.kubeconfig", server, pki, client)
    (state / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
    (state / "kwok-stages.yaml").write_text(yaml.safe_dump_all(kwok_stages(), sort_keys=False))
    try:
        _start_processes(info, state, pki, bin_dir, etcd_port, etcd_peer_port, api_port)
        api = Api(server, pki)
        wait_until(lambda: api.request("GET", "/readyz") == "ok", timeout=90, what="kube-apiserver /readyz")
        storage_class = yaml.safe_load(
            (kwok_module_dir() / "kustomize/stage/volume/fast/storage-class.yaml").read_text()
        )
        api.ensure("/apis/storage.k8s.io/v1/storageclasses", storage_class)
        for index in range(nodes):
            api.ensure("/api/v1/nodes", node_manifest(f"kwok-node-{index}"))

        def all_nodes_ready() -> bool:
            items = api.request("GET", "/api/v1/nodes")["items"]
            ready = [
                n
                for n in items
                if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            ]
            return len(ready) >= nodes

        wait_until(all_nodes_ready, timeout=60, what=f"{nodes} kwok nodes Ready")
        if real_node:
            realnode.start(info, state, bin_dir, real_node_wait)
    except BaseException:
        log(f"start failed; logs are in {state / 'logs'}")
        down(state)
        raise
    log(f"cluster up in {time.monotonic() - started:.1f}s: {server} ({info.kubernetes_version})")
    return info


def _start_processes(
    info: ClusterInfo, state: Path, pki: Path, bin_dir: Path, etcd_port: int, etcd_peer_port: int, api_port: int
) -> None:
    def record(process: ManagedProcess) -> None:
        info.processes.append(process)
        info.save()

    record(
        _start(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=local",
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-cluster=local=http://127.0.0.1:{etcd_peer_port}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
            state,
        )
    )
    record(
        _start(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--cert-dir={state / 'certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # Without the node lifecycle controller nothing would lift the not-ready taint this plugin
                # puts on new nodes; kwok reports the nodes Ready at once.
                "--disable-admission-plugins=TaintNodesByCondition",
                # The aggregation layer (KEDA's external metrics API): who the API server says it
                # forwards for, and the certificate it proves that with.
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / f'{FRONT_PROXY_CLIENT}.crt'}",
                f"--proxy-client-key-file={pki / f'{FRONT_PROXY_CLIENT}.key'}",
                f"--audit-policy-file={state / 'audit-policy.yaml'}",
                f"--audit-log-path={info.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--audit-log-maxsize=0",
                "--profiling=false",
                "--v=1",
            ],
            state,
        )
    )
    record(
        _start(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={state / 'controller-manager.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--use-service-account-credentials=false",
                "--concurrent-gc-syncs=10",
                "--profiling=false",
                "--v=1",
            ],
            state,
        )
    )
    record(
        _start(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={state / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={state / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={state / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--profiling=false",
                "--v=1",
            ],
            state,
        )
    )
    record(
        _start(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={state / 'kwok.kubeconfig'}",
                f"--config={state / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.0.0.1",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
            state,
        )
    )


def down(state: Path) -> None:
    """Stops the processes recorded in the state directory: exactly those, and only if still ours."""
    state = state.resolve()
    if not (state / "cluster.json").exists():
        log(f"nothing to stop in {state}")
        return
    info = ClusterInfo.load(state)
    if info.real_node is not None:
        # First, while the API server still runs: the kubelet stops its pods.
        realnode.stop(info, state)
    running = [p for p in reversed(info.processes) if _is_ours(p)]
    # etcd last: a kube-apiserver whose etcd is gone does not finish its graceful shutdown and waits for
    # the SIGKILL below (15 s); with etcd still there it exits in about a second.
    for wave in ([p for p in running if p.name != "etcd"], [p for p in running if p.name == "etcd"]):
        for process in wave:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(_is_alive(p) for p in wave) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in wave:
            if _is_alive(process):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
    (state / "cluster.json").unlink()
    log(f"stopped {', '.join(f'{p.name}({p.pid})' for p in running) or 'nothing (already gone)'}")


def stop_process(state: Path, name: str) -> None:
    """Stops one component of a running cluster (SIGTERM, then SIGKILL), keeping its record."""
    info = ClusterInfo.load(state.resolve())
    process = next(p for p in info.processes if p.name == name)
    if _is_alive(process):
        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _is_alive(process) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_alive(process):
            os.kill(process.pid, signal.SIGKILL)


def start_process(state: Path, name: str) -> None:
    """Starts a component stopped by :func:`stop_process` again, with the same command line."""
    state = state.resolve()
    info = ClusterInfo.load(state)
    index = next(i for i, p in enumerate(info.processes) if p.name == name)
    if _is_alive(info.processes[index]):
        return
    info.processes[index] = _start(name, info.processes[index].argv, state, env=info.processes[index].env)
    info.save()


def _is_alive(process: ManagedProcess) -> bool:
    if not _is_ours(process):
        return False
    try:
        status = Path(f"/proc/{process.pid}/stat").read_text().split(") ", 1)[1][0]
    except OSError:
        return False
    return status != "Z"


@contextlib.contextmanager
def running_cluster(state: Path) -> Iterator[ClusterInfo]:
    info = up(state)
    try:
        yield info
    finally:
        down(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    parser.add_argument("--state-dir", type=Path, default=Path(".cluster"))
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="also start one real kubelet node (containerd + runc; needs root, one per machine) beside kwok's",
    )
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_binaries(real_node=args.real_node))
    elif args.command == "up":
        try:
            info = up(args.state_dir, nodes=args.nodes, real_node=args.real_node)
        except realnode.RealNodeUnavailable as err:
            print(f"localcluster: {err}", file=sys.stderr)
            return 1
        print(f"export KUBECONFIG={info.kubeconfig}")
    elif args.command == "down":
        down(args.state_dir)
    else:
        state = args.state_dir.resolve()
        if not (state / "cluster.json").exists():
            print("not running")
            return 1
        info = ClusterInfo.load(state)
        for process in info.processes:
            print(f"{process.name:24} {process.pid:>8} {'running' if _is_alive(process) else 'gone'}")
        if info.real_node is not None:
            print(f"real node {info.real_node['name']}: kubelet on 127.0.0.1:{info.real_node['kubelet_port']}, "
                  f"containerd at {info.real_node['containerd_socket']}")
        print(f"export KUBECONFIG={info.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
