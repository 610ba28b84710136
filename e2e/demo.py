"""`make demo`: the operator on the local cluster, with the example ApeRAG and its databases.

Expects `make cluster-up` to have run (state in .cluster/). Installs the upstream KubeBlocks CRDs and
the ApeRAG CRD, starts the operator and the KubeBlocks test simulator as background processes
(pid files in .cluster/, stopped by `make cluster-down`), applies the example and follows its status
until it is Ready. Then an upgrade (0.5.0 -> 0.6.0: migration Job, rollout, health gate) and an
automatic rollback (0.7.0, whose migration fails: the downgrade runs, 0.6.0 keeps serving), told by the
resource's status and Events. kwok runs no container: the migration reports are played through the
test-only pod annotations of `spec.upgrade.migrationJob` (docs/design.md).

Then autoscaling with the real KEDA (built from the Go module proxy, e2e/controlplane/keda.py) and a
real redis-server on 127.0.0.1 (another background process): an ApeRAG whose Redis is that server, its
workers at zero, a burst of Celery tasks (sent with the app's own dispatcher), the workers following the
queue up and back down to zero.

`make demo REAL_NODE=1` (``--real-node``; the cluster then has a real kubelet node) goes on with
real containers: the app image in the versions of the real-node tests (tests/realnode/images.py) is
imported into the node, a PostgreSQL (pgvector) and a redis-server start on 127.0.0.1, the test webhook
places the pods on the real node (tests/harness/realnode.py), and an ApeRAG is installed (1.0.0),
upgraded (1.1.0: a real migration Job, real pods roll), then upgraded to a version whose migration
fails part-way (1.2.0): the Job fails for real and the operator downgrades the schema with that image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STATE = ROOT / ".cluster"
KUBECTL = str(Path(sys.executable).parent / "kubectl")
SHARED_CRDS = Path(os.environ.get("APERAG_SHARED_DIR", ROOT.parent / "shared")) / "fixtures" / "crds"
EXAMPLE = ROOT / "examples" / "aperag-minimal.yaml"
NAMESPACE = "default"


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, f"--kubeconfig={STATE / 'admin.kubeconfig'}", *args], check=check, capture_output=True, text=True
    )


def wait_for(check: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.5)


def established(crd: str) -> bool:
    result = kubectl("get", "crd", crd, "-o", "json", check=False)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def start_background(name: str, argv: list[str], env: dict[str, str]) -> None:
    pid_file = STATE / f"{name}.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if Path(f"/proc/{pid}").exists():
            print(f"== {name} already running (pid {pid})")
            return
    log = (STATE / f"{name}.log").open("ab")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    print(f"== started {name} (pid {proc.pid}, log {STATE / (name + '.log')})")


def stop_background() -> None:
    """Stops the processes the demo started: the pids in its pid files, if they still run our module."""
    for name, module in (("operator", "aperag_operator"), ("kubeblocks-simulator", "run_kubeblocks"),
                         ("placement-webhook", "tests.harness.realnode"), ("redis", "redis-server"),
                         ("queue-redis", "redis-server")):  # fmt: skip
        pid_file = STATE / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            cmdline = ""
        if module in cmdline:
            os.kill(pid, signal.SIGTERM)
            print(f"[demo] stopped {name} ({pid})")
        pid_file.unlink()
    postmaster = STATE / "demo-postgres" / "data" / "postmaster.pid"
    if postmaster.exists():  # the real-node demo's PostgreSQL: a fast shutdown by its pid
        pid = int(postmaster.read_text().split()[0])
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        if exe.endswith("/postgres"):
            os.kill(pid, signal.SIGINT)
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what="PostgreSQL to stop")
            print(f"[demo] stopped PostgreSQL ({pid})")
    # KEDA (started by the autoscaling part): recorded with the cluster's processes, so the cluster's
    # `down` would stop it too; stopped here with its APIService, so `demo.py stop` alone leaves nothing.
    from e2e.controlplane import keda

    keda.down(STATE)


# --- the real node (--real-node) --------------------------------------------------------------


def real_node_demo(env: dict[str, str]) -> None:
    """Install, upgrade and an automatic rollback with real containers on the real node."""
    sys.path.insert(0, str(ROOT))
    import socket

    from aperag.embedded_pg import EmbeddedPostgres
    from e2e.controlplane import realnode
    from e2e.controlplane.localcluster import ClusterInfo
    from images.build import build_all
    from tests.harness.realnode import PLACE_LABEL
    from tests.realnode import images

    info = ClusterInfo.load(STATE)
    if info.real_node is None:
        raise SystemExit("demo: the cluster has no real node; `make cluster-down` then `make demo REAL_NODE=1`")
    print("\n== the real node: app images (1.0.0 and the test versions 1.1.0, 1.2.0) into its containerd")
    test_images = images.build(build_all()["app"])
    realnode.import_images(info.real_node, test_images.archive, list(test_images.refs.values()))

    pg_data = STATE / "demo-postgres" / "data"
    postgres = EmbeddedPostgres(pg_data, port=int((STATE / "demo-postgres.port").read_text())
                                if (STATE / "demo-postgres.port").exists() else None)  # fmt: skip
    if not (pg_data / "postmaster.pid").exists():
        pg_data.parent.mkdir(parents=True, exist_ok=True)
        postgres.start()
        (STATE / "demo-postgres.port").write_text(str(postgres.port))
    database = f"demo_{int(time.time())}"
    postgres.create_database(database)
    print(f"== PostgreSQL (pgvector) on 127.0.0.1:{postgres.port}, database {database}")
    redis_port_file = STATE / "redis.port"
    if not (STATE / "redis.pid").exists():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            redis_port_file.write_text(str(sock.getsockname()[1]))
    redis_port = int(redis_port_file.read_text())
    start_background("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(STATE)], env)  # fmt: skip
    start_background("placement-webhook", [sys.executable, "-m", "tests.harness.realnode", "--state-dir", str(STATE)],
                     env)  # fmt: skip
    wait_for(lambda: kubectl("get", "mutatingwebhookconfiguration", "real-node.test.aperag.io", check=False)
             .returncode == 0, timeout=60, what="the placement webhook")  # fmt: skip

    name, namespace = "real", "real-node-demo"
    kubectl("create", "namespace", namespace, check=False)
    for secret in ({"name": "pg-credentials", "data": {"username": postgres.user, "password": ""}},
                   {"name": "api-keys", "data": {"apiKeys": "demo-key"}}):  # fmt: skip
        manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret["name"], "namespace": namespace},
                    "stringData": secret["data"]}  # fmt: skip
        subprocess.run([KUBECTL, f"--kubeconfig={STATE / 'admin.kubeconfig'}", "apply", "-f", "-"],
                       input=json.dumps(manifest), text=True, check=True, capture_output=True)  # fmt: skip
    place = {PLACE_LABEL: "true"}

    def apply(version: str) -> None:
        body = {
            "apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG", "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "version": version,
                "image": {"repository": images.REPOSITORY, "pullPolicy": "Never"},
                "components": {"api": {"replicas": 1, "podLabels": place}, "worker": {"replicas": 0},
                               "beat": {"enabled": False}},
                "app": {"apiKeysSecret": {"name": "api-keys", "key": "apiKeys"}},
                "databases": {
                    "postgresql": {"external": {"host": "127.0.0.1", "port": postgres.port, "database": database,
                                                "credentialsSecretRef": {"name": "pg-credentials"}}},
                    "redis": {"external": {"host": "127.0.0.1", "port": redis_port}},
                },
                "upgrade": {"progressDeadlineSeconds": 120, "migrationJob": {"podLabels": place}},
            },
        }  # fmt: skip
        subprocess.run([KUBECTL, f"--kubeconfig={STATE / 'admin.kubeconfig'}", "apply", "--server-side",
                        "--force-conflicts", "-f", "-"], input=json.dumps(body), text=True, check=True,
                       capture_output=True)  # fmt: skip

    def upgrade_status() -> dict[str, Any]:
        result = kubectl("get", "aperag", name, "-n", namespace, "-o", "json", check=False)
        status: dict[str, Any] = json.loads(result.stdout).get("status", {}) if result.returncode == 0 else {}
        return status

    def follow(version: str, phase: str) -> None:
        seen: set[str] = set()

        def done() -> bool:
            upgrade = upgrade_status().get("upgrade") or {}
            step = f"{upgrade.get('phase')}: {upgrade.get('message', '')}".strip(": ")
            if upgrade and step not in seen:
                seen.add(step)
                print(f"   {step}")
            return bool(upgrade.get("phase") == phase and (upgrade.get("target") or {}).get("version") == version)

        wait_for(done, timeout=600, what=f"{name} {phase} on {version}")

    def show(title: str) -> None:
        print(f"\n-- {title}")
        print(kubectl("get", "aperag,jobs,pods", "-n", namespace, "-o", "wide").stdout)
        for h in upgrade_status().get("history", []):
            print(f"   history: {h['version']} revision={h.get('revision')} {h['operation']} {h['outcome']}"
                  f"{' (' + h['reason'] + ')' if h.get('reason') else ''}")  # fmt: skip

    def job_logs(action: str, version: str) -> None:
        jobs = json.loads(kubectl("get", "jobs", "-n", namespace, "-l", f"aperag.io/migration-action={action}",
                                  "-o", "json").stdout)["items"]  # fmt: skip
        for job in jobs:
            if job["spec"]["template"]["spec"]["containers"][0]["image"] == images.ref(version):
                print(f"\n-- kubectl logs job/{job['metadata']['name']} ({action}, {version})")
                print(kubectl("logs", "-n", namespace, f"job/{job['metadata']['name']}").stdout.rstrip())

    print(f"\n== install {images.V1} on the real node: a real migration Job, then the API")
    apply(images.V1)
    follow(images.V1, "Complete")
    job_logs("upgrade", images.V1)
    show(f"{images.V1} installed")
    print(f"\n== upgrade to {images.V2}: its migration adds a revision; the pods roll")
    apply(images.V2)
    follow(images.V2, "Complete")
    show(f"{images.V2} running")
    print(f"\n== upgrade to {images.V3}: its migration commits part of its work, then fails")
    apply(images.V3)
    follow(images.V3, "Failed")
    job_logs("upgrade", images.V3)
    job_logs("downgrade", images.V3)
    show(f"rolled back to {images.V2}")
    print(f"\n   {(upgrade_status().get('upgrade') or {}).get('message', '')}")


def main() -> int:
    if sys.argv[1:] == ["stop"]:
        stop_background()
        return 0
    real_node = "--real-node" in sys.argv[1:]
    if not (STATE / "cluster.json").exists():
        print("demo: no local cluster; run `make cluster-up` first", file=sys.stderr)
        return 1
    print("== installing CRDs: upstream KubeBlocks (schemas only) and ApeRAG")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SHARED_CRDS / "kubeblocks-v1.0.2"))
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "aperag.io_aperags.yaml"))
    for crd in ("clusters.apps.kubeblocks.io", "aperags.aperag.io"):
        wait_for(lambda crd=crd: established(crd), timeout=60, what=f"CRD {crd} Established")

    env = {**os.environ, "KUBECONFIG": str(STATE / "operator.kubeconfig"), "PYTHONPATH": str(ROOT)}
    start_background(
        "operator",
        [
            sys.executable,
            "-m",
            "aperag_operator",
            "run",
            "--all-namespaces",
            "--liveness",
            "http://127.0.0.1:18080/healthz",
        ],
        env,
    )
    start_background(
        "kubeblocks-simulator",
        [
            sys.executable,
            "-m",
            "e2e.simulators.run_kubeblocks",
            "--namespace",
            NAMESPACE,
            "--kubeconfig",
            str(STATE / "admin.kubeconfig"),
        ],
        env,
    )

    print(f"== applying {EXAMPLE.relative_to(ROOT)}")
    print(kubectl("apply", "--server-side", "-n", NAMESPACE, "-f", str(EXAMPLE)).stdout.strip())
    name = kubectl("get", "-f", str(EXAMPLE), "-n", NAMESPACE, "-o", "jsonpath={.metadata.name}").stdout

    seen: set[tuple[str, str, str]] = set()

    def report_and_check_ready() -> bool:
        result = kubectl("get", "aperag", name, "-n", NAMESPACE, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        status = json.loads(result.stdout).get("status", {})
        for condition in status.get("conditions", []):
            key = (condition["type"], condition["status"], condition.get("reason", ""))
            if key not in seen:
                seen.add(key)
                print(
                    f"   {condition['type']}={condition['status']} ({condition.get('reason', '')}): "
                    f"{condition.get('message', '')}"
                )
        return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))

    print(f"== waiting for aperag/{name} to become Ready")
    wait_for(report_and_check_ready, timeout=180, what=f"aperag/{name} Ready")
    print()
    if real_node:
        print(kubectl("get", "aperag,clusters.apps.kubeblocks.io,deploy,svc", "-n", NAMESPACE).stdout)
        real_node_demo(env)
        return 0
    print(kubectl("get", "aperag,clusters.apps.kubeblocks.io,deploy,svc,jobs", "-n", NAMESPACE).stdout)

    print("== upgrade: spec.version 0.5.0 -> 0.6.0 (the migration adds revision 0003)")
    upgrade(name, "0.6.0", {"kwok.aperag.io/termination-message": migration_report("upgrade", ["0002"], ["0003"])})
    told: set[str] = set()
    follow(name, "0.6.0", "Complete", told)
    print("== automatic rollback: 0.7.0, whose migration fails part-way")
    upgrade(
        name,
        "0.7.0",
        {
            "kwok.aperag.io/termination-message": migration_report("upgrade", ["0003"], ["0004"], ok=False),
            "kwok.aperag.io/termination-message-downgrade": migration_report("downgrade", ["0004"], ["0003"]),
        },
        labels={"kwok.aperag.io/fail-upgrade": "true"},
    )
    follow(name, "0.6.0", "Failed", told)
    autoscaling(env)
    print(f"export KUBECONFIG={STATE / 'admin.kubeconfig'}   # then: make cluster-down")
    return 0


QUEUE_PASSWORD = "demo-queue"
QUEUE_DEMO = "queue"


def autoscaling(env: dict[str, str]) -> None:
    """The real KEDA scales the workers of an ApeRAG on its Celery queue, from zero and back."""
    import socket

    from aperag.ingest.dispatch import CeleryDispatcher
    from e2e.controlplane import keda

    print("== autoscaling: the real KEDA (operator and metrics API server) scales the workers on the queue")
    keda.up(STATE)
    # Its own redis-server (with a password, which KEDA reads from the Secret): not the real-node demo's.
    port_file = STATE / "queue-redis.port"
    if not (STATE / "queue-redis.pid").exists() or not port_file.exists():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port_file.write_text(str(sock.getsockname()[1]))
    port = int(port_file.read_text())
    (STATE / "queue-redis").mkdir(exist_ok=True)
    start_background("queue-redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", str(STATE / "queue-redis"),
                                     "--requirepass", QUEUE_PASSWORD], env)  # fmt: skip
    secrets = {
        "queue-pg": ["--from-literal=username=u", "--from-literal=password=p"],
        "queue-redis": [f"--from-literal=password={QUEUE_PASSWORD}"],
        "queue-s3": ["--from-literal=accessKeyId=a", "--from-literal=secretAccessKey=b"],
    }
    for secret, data in secrets.items():
        kubectl("create", "secret", "generic", secret, "-n", NAMESPACE, *data, check=False)
    body = {
        "apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG", "metadata": {"name": QUEUE_DEMO},
        "spec": {
            "version": "0.5.0",
            "components": {"api": {"replicas": 1}},
            "databases": {
                "postgresql": {"external": {"host": "pg.demo.internal", "credentialsSecretRef": {"name": "queue-pg"}}},
                "redis": {"external": {"host": "127.0.0.1", "port": port,
                                       "credentialsSecretRef": {"name": "queue-redis", "usernameKey": ""}}},
            },
            "objectStorage": {"type": "s3", "s3": {"bucket": "docs", "credentialsSecret": {"name": "queue-s3"}}},
            "autoscaling": {"worker": {"enabled": True, "minReplicas": 0, "maxReplicas": 5, "listLength": 2,
                                       "pollingInterval": 2, "cooldownPeriod": 10,
                                       "scaleDown": {"stabilizationWindowSeconds": 0}}},
        },
    }  # fmt: skip
    print(f"== applying aperag/{QUEUE_DEMO}: workers on the queue of redis-server 127.0.0.1:{port}, 0 to 5")
    subprocess.run([KUBECTL, f"--kubeconfig={STATE / 'admin.kubeconfig'}", "apply", "--server-side", "-n", NAMESPACE,
                    "-f", "-"], input=json.dumps(body), check=True, capture_output=True, text=True)  # fmt: skip

    def status() -> dict[str, Any]:
        result: dict[str, Any] = json.loads(kubectl("get", "aperag", QUEUE_DEMO, "-n", NAMESPACE, "-o", "json").stdout)
        return result.get("status") or {}

    def condition(ctype: str) -> dict[str, Any]:
        return next((c for c in status().get("conditions", []) if c["type"] == ctype), {})

    wait_for(lambda: condition("AutoscalingReady").get("status") == "True", timeout=180, what="AutoscalingReady")
    ready = condition("AutoscalingReady")
    print(f"   AutoscalingReady=True ({ready['reason']}): {ready['message']}")

    def workers() -> tuple[int, int]:
        dep = json.loads(kubectl("get", "deployment", f"{QUEUE_DEMO}-worker", "-n", NAMESPACE, "-o", "json").stdout)
        return int(dep["spec"].get("replicas", 1)), int(dep["status"].get("readyReplicas") or 0)

    def follow_workers(target: int, what: str, timeout: float = 180) -> None:
        start, last = time.monotonic(), None
        while True:
            now = workers()
            if now != last:
                print(f"   {time.monotonic() - start:5.1f}s  workers {now[1]}/{now[0]} ready")
                last = now
            if now == (target, target):
                return
            if time.monotonic() - start > timeout:
                raise SystemExit(f"demo: timed out waiting for {what}")
            time.sleep(0.5)

    follow_workers(0, "the workers at zero (an empty queue)")
    print("== a burst: 10 tasks on the Celery queue (listLength 2: 5 workers)")
    dispatcher = CeleryDispatcher(f"redis://:{QUEUE_PASSWORD}@127.0.0.1:{port}/0")
    for index in range(10):
        dispatcher.enqueue(f"demo-document-{index}")
    follow_workers(5, "5 workers")
    print("== the queue emptied (kwok's workers consume nothing: the demo deletes it)")
    import redis

    redis.Redis(host="127.0.0.1", port=port, password=QUEUE_PASSWORD).delete("celery")
    follow_workers(0, "the workers back at zero")
    worker = status().get("autoscaling", {}).get("worker", {})
    print(f"   status.autoscaling.worker: {worker.get('kind')} {worker.get('name')}, {worker.get('metric')}")
    print(kubectl("get", "scaledobject,hpa", "-n", NAMESPACE).stdout)


def migration_report(action: str, before: list[str], current: list[str], ok: bool = True) -> str:
    """What `aperag migrate` writes to its termination-message file (docs/app.md)."""
    report: dict[str, Any] = {"ok": ok, "action": action, "before": before, "current": current,
                              "changed": before != current, "message": "played by kwok in the demo"}  # fmt: skip
    if not ok:
        report["reason"] = "MigrationFailed"
    return json.dumps(report)


def upgrade(name: str, version: str, annotations: dict[str, str], labels: dict[str, str] | None = None) -> None:
    patch = {"spec": {"version": version, "upgrade": {"migrationJob": {
        "podAnnotations": annotations, "podLabels": labels or {}}}}}  # fmt: skip
    kubectl("patch", "aperag", name, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch))


def follow(name: str, running: str, phase: str, told: set[str]) -> None:
    """Prints the Events not ``told`` yet until ``phase`` with ``running`` serving."""

    def done() -> bool:
        status = json.loads(kubectl("get", "aperag", name, "-n", NAMESPACE, "-o", "json").stdout).get("status", {})
        events = json.loads(kubectl("get", "events", "-n", NAMESPACE, "--field-selector",
                                    f"involvedObject.name={name}", "-o", "json").stdout)["items"]  # fmt: skip
        for event in sorted(events, key=lambda e: e.get("eventTime") or e["firstTimestamp"]):
            if event["metadata"]["name"] not in told:
                told.add(event["metadata"]["name"])
                print(f"   {event['type']:7} {event['reason']}: {event['message']}")
        upgrade = status.get("upgrade") or {}
        return bool(upgrade.get("phase") == phase and status.get("version") == running)

    wait_for(done, timeout=180, what=f"{phase} with {running} running")
    print(kubectl("get", "aperag", name, "-n", NAMESPACE).stdout)


if __name__ == "__main__":
    sys.exit(main())
