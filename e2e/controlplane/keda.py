"""The real KEDA on the local control plane: its operator and its metrics API server, built from the Go
module proxy (``build.sh keda``) and run as processes on 127.0.0.1 against a running local cluster.

What it takes (e2e/controlplane/README.md, "KEDA"):

* KEDA's six CRDs, from the KEDA module in the Go module cache (the same files as the fixtures the tests
  install for ScaledObject and TriggerAuthentication; none is copied into the repository);
* a certificate of the cluster's CA for both processes: the gRPC link between them (mutual TLS), the
  metrics API server's serving certificate, and a client certificate (user ``keda``, system:masters);
* the external metrics API registered as an APIService. The API server reaches an aggregated API
  server through a Service: here an ExternalName Service ``keda/keda-metrics-apiserver`` naming
  ``localhost`` (no kube-proxy runs, so a ClusterIP would lead nowhere), and the API server forwards the
  caller in the X-Remote-* headers with its front-proxy certificate (localcluster.py).

KEDA scales a workload between 0 and 1 itself and between 1 and N through an HPA, which the
kube-controller-manager's HPA controller drives from the external metrics API: so both processes run.

Usage: ``python e2e/controlplane/keda.py up|down [--state-dir DIR]`` (the cluster must be up); ``down``
of the cluster stops KEDA too (its processes are recorded with the cluster's).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from e2e.controlplane.localcluster import (
    HERE,
    Api,
    ClusterInfo,
    ManagedProcess,
    _is_alive,
    free_port,
    log,
    module_dir,
    signed_cert,
    wait_until,
    write_kubeconfig,
)

NAMESPACE = "keda"
METRICS_SERVICE = "keda-metrics-apiserver"
OPERATOR_SERVICE = "keda-operator"
APISERVICE = "v1beta1.external.metrics.k8s.io"
PROCESSES = ("keda-operator", "keda-adapter")
KEDA_MODULE = "github.com/kedacore/keda/v2"


def build() -> Path:
    """Builds (once; a warm cache builds nothing) and returns the directory of keda-operator and
    keda-adapter."""
    result = subprocess.run(["bash", str(HERE / "build.sh"), "keda"], check=True, stdout=subprocess.PIPE, text=True)
    return Path(result.stdout.strip().splitlines()[-1])


def crd_files() -> list[Path]:
    """KEDA's CRDs as its release ships them (config/crd/bases of the module)."""
    return sorted((module_dir("keda", KEDA_MODULE) / "config" / "crd" / "bases").glob("*.yaml"))


def _certificates(state: Path) -> Path:
    """One certificate for both processes, signed by the cluster's CA, in the layout KEDA reads from its
    cert dir (ca.crt, tls.crt, tls.key)."""
    pki = state / "pki"
    if not (pki / "keda.crt").exists():
        names = ["IP:127.0.0.1", "DNS:localhost"]
        for service in (OPERATOR_SERVICE, METRICS_SERVICE):
            names += [f"DNS:{service}.{NAMESPACE}.svc", f"DNS:{service}.{NAMESPACE}.svc.cluster.local"]
        signed_cert("keda", "/O=system:masters/CN=keda", pki, server_names=names)
    certs = state / "keda-certs"
    certs.mkdir(exist_ok=True)
    for source, target in (("ca.crt", "ca.crt"), ("keda.crt", "tls.crt"), ("keda.key", "tls.key")):
        shutil.copyfile(pki / source, certs / target)
    return certs


def _ignore(codes: tuple[int, ...], call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except urllib.error.HTTPError as err:
        if err.code not in codes:
            raise
        return None


def _install_crds(api: Api) -> list[str]:
    names = []
    for path in crd_files():
        crd = yaml.safe_load(path.read_text())
        names.append(crd["metadata"]["name"])
        api.ensure("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)

    def established() -> bool:
        for name in names:
            crd = api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = (crd.get("status") or {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    wait_until(established, timeout=60, what="KEDA's CRDs Established")
    return names


def _register_metrics_api(api: Api, port: int, ca: Path) -> None:
    import base64

    api.ensure("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    _ignore((404,), api.request, "DELETE", f"/api/v1/namespaces/{NAMESPACE}/services/{METRICS_SERVICE}")
    api.ensure(
        f"/api/v1/namespaces/{NAMESPACE}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
            # No kube-proxy: the API server resolves an ExternalName Service to the name itself.
            "spec": {"type": "ExternalName", "externalName": "localhost"},
        },
    )
    _ignore((404,), api.request, "DELETE", f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}")
    api.ensure(
        "/apis/apiregistration.k8s.io/v1/apiservices",
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "service": {"namespace": NAMESPACE, "name": METRICS_SERVICE, "port": port},
                "caBundle": base64.b64encode(ca.read_bytes()).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def up(state: Path, *, timeout: float = 180) -> ClusterInfo:
    """Starts KEDA against the cluster of ``state`` (already up); a KEDA already running is kept."""
    state = state.resolve()
    info = ClusterInfo.load(state)
    running = [p for p in info.processes if p.name in PROCESSES and _is_alive(p)]
    if len(running) == len(PROCESSES):
        log("KEDA already running")
        return info
    if running:
        down(state)
        info = ClusterInfo.load(state)
    started = time.monotonic()
    bin_dir = build()
    log(f"KEDA binaries ready in {time.monotonic() - started:.1f}s ({bin_dir})")
    started = time.monotonic()
    pki = state / "pki"
    certs = _certificates(state)
    kubeconfig = state / "keda.kubeconfig"
    write_kubeconfig(kubeconfig, info.apiserver_url, pki, "keda")
    api = Api(info.apiserver_url, pki)
    _install_crds(api)
    grpc_port, probe_port, metrics_port, adapter_port, adapter_metrics = (free_port() for _ in range(5))
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "WATCH_NAMESPACE": "",  # every namespace
        "POD_NAMESPACE": NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
    }
    operator = _start_with_env(
        "keda-operator",
        [
            str(bin_dir / "keda-operator"),
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
            f"--cert-dir={certs}",
            f"--ca-dir={certs}",
            "--enable-cert-rotation=false",
            "--leader-elect=false",
            "--zap-log-level=info",
        ],
        state,
        env,
    )
    info.processes.append(operator)
    info.save()
    adapter = _start_with_env(
        "keda-adapter",
        [
            str(bin_dir / "keda-adapter"),
            f"--secure-port={adapter_port}",
            "--bind-address=127.0.0.1",
            f"--cert-dir={certs}",
            f"--tls-cert-file={certs / 'tls.crt'}",
            f"--tls-private-key-file={certs / 'tls.key'}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--metrics-service-address=127.0.0.1:{grpc_port}",
            f"--port={adapter_metrics}",
        ],
        state,
        env,
    )
    info.processes.append(adapter)
    info.save()
    try:
        for process in (operator, adapter):
            wait_until(lambda p=process: _is_alive(p), timeout=5, what=f"{process.name} running")
        wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{probe_port}/readyz") or not _is_alive(operator),
            timeout=timeout,
            what="keda-operator /readyz",
        )
        if not _is_alive(operator):
            raise RuntimeError(f"keda-operator exited; see {state / 'logs' / 'keda-operator.log'}")
        _register_metrics_api(api, adapter_port, certs / "ca.crt")

        def available() -> bool:
            if not _is_alive(adapter):
                raise RuntimeError(f"keda-adapter exited; see {state / 'logs' / 'keda-adapter.log'}")
            body = api.request("GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}")
            conditions = (body.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

        wait_until(available, timeout=timeout, what=f"APIService {APISERVICE} Available")
    except BaseException:
        log(f"KEDA start failed; logs in {state / 'logs'}")
        down(state)
        raise
    log(f"KEDA up in {time.monotonic() - started:.1f}s")
    return ClusterInfo.load(state)


def _start_with_env(name: str, argv: list[str], state: Path, env: dict[str, str]) -> ManagedProcess:
    logfile = (state / "logs" / f"{name}.log").open("ab")
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    return ManagedProcess(name=name, pid=process.pid, executable=argv[0], argv=list(argv))


def down(state: Path) -> None:
    """Stops KEDA's processes and unregisters the metrics API (an APIService nobody serves makes API
    discovery fail, which holds up namespace deletion)."""
    state = state.resolve()
    if not (state / "cluster.json").exists():
        return
    info = ClusterInfo.load(state)
    with contextlib.suppress(Exception):
        api = Api(info.apiserver_url, state / "pki")
        _ignore((404,), api.request, "DELETE", f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}")
    ours = [p for p in info.processes if p.name in PROCESSES]
    for process in ours:
        if _is_alive(process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_is_alive(p) for p in ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in ours:
        if _is_alive(process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
    info.processes = [p for p in info.processes if p.name not in PROCESSES]
    info.save()
    if ours:
        log(f"stopped {', '.join(f'{p.name}({p.pid})' for p in ours)}")


@contextlib.contextmanager
def running(state: Path) -> Iterator[ClusterInfo]:
    info = up(state)
    try:
        yield info
    finally:
        down(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down", "build"])
    parser.add_argument("--state-dir", type=Path, default=Path(".cluster"))
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build())
    elif args.command == "up":
        up(args.state_dir)
    else:
        down(args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
