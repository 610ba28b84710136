"""Operator scale benchmark (issue 3): N = 1, 10, 100 ApeRAG resources on the local control plane.

For each N, in a fresh namespace with a fresh operator process (namespace-scoped, the operator's own
credentials so the audit log tells its writes apart):

* p50 / p95 time from an ApeRAG's create (audit stageTimestamp of the admin's create) to the last of
  its children being written by the operator (audit stageTimestamp of the operator's apply);
* write requests per resource during creation (every operator write in the namespace / N: child
  applies, status writes, Events);
* write requests on a no-op resync: once every resource is Ready (and its status written), wait until
  every resource has been reconciled at least twice more (periodic resync) and count the operator's
  writes in that window;
* write requests after a restart: SIGKILL the operator with every resource Ready, start a new one, wait
  until it has listed everything and reconciled every resource twice, and count its writes (target 0);
  and the time from its start to its first full listing;
* the operator's peak RSS (VmHWM of the process);
* the lower bound: ``kubectl apply --server-side`` of exactly the same rendered children (same
  builders, owner references stripped) into another namespace, timed in the same run; and the ratio
  of the operator's total time (first create to last child) to it.

Usage: ``python bench/operator_scale.py [--sizes 1,10,100] [--json out.json]``. Uses the cluster named
by KUBECONFIG when it was started by ``make cluster-up``, otherwise starts (and stops) its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aperag_operator.builders import migration_job, pvc  # noqa: E402
from aperag_operator.builders.children import desired_children  # noqa: E402
from aperag_operator.builders.common import Instance, target_release  # noqa: E402
from aperag_operator.builders.database_env import build_database_env  # noqa: E402
from aperag_operator.spec.model import parse_spec  # noqa: E402

from e2e.controlplane.localcluster import ClusterInfo, down, up  # noqa: E402

KUBECTL = str(Path(sys.executable).parent / "kubectl")
WRITE_VERBS = {"create", "update", "patch", "delete"}
OPERATOR_USER = "aperag-operator"
DB_SECRET = "bench-db"
# External databases: the bench measures the operator, not KubeBlocks (which the bench cluster lacks).
SPEC: dict[str, Any] = {
    "version": "0.5.0",
    # Small CPU requests so that 100 resources' pods fit on the bench's 4 kwok nodes (16 CPUs each) and
    # every resource can become Ready (the no-op and restart windows start only then).
    "components": {
        "api": {"replicas": 1, "resources": {"requests": {"cpu": "100m"}}},
        "worker": {"replicas": 1, "resources": {"requests": {"cpu": "100m"}}},
    },
    "databases": {
        "postgresql": {"external": {"host": "pg.bench.internal", "credentialsSecretRef": {"name": DB_SECRET}}},
        "redis": {"external": {"host": "redis.bench.internal"}},
    },
}


def rendered_children(name: str, namespace: str) -> list[dict[str, Any]]:
    """What the operator writes for one resource: the core children, the documents volume and the
    first migration Job (whose success lets the Deployments be created)."""
    inst = Instance(name, namespace, "00000000-0000-0000-0000-000000000000", parse_spec(SPEC))
    request = migration_job.request(name, "upgrade", target_release(inst.spec), "head", 1)
    env = build_database_env(name, inst.spec.databases)
    return [*desired_children(inst, env), pvc.build(inst), migration_job.build(inst, request, env)]


CHILDREN_PER_RESOURCE = len(rendered_children("x", "ns"))


@contextmanager
def cluster_info() -> Any:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig and (Path(kubeconfig).parent / "cluster.json").exists():
        yield ClusterInfo.load(Path(kubeconfig).parent)
        return
    state = Path(tempfile.mkdtemp(prefix="aperag-bench-"))
    info = up(state, nodes=4)
    try:
        yield info
    finally:
        down(state)


class Bench:
    def __init__(self, info: ClusterInfo) -> None:
        self.info = info
        self.env = {**os.environ, "KUBECONFIG": info.kubeconfig}

    def kubectl(self, *args: str, input: str | None = None) -> str:
        out = subprocess.run(
            [KUBECTL, *args], input=input, capture_output=True, text=True, env=self.env, check=False, timeout=600
        )
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])}: {out.stderr[-2000:]}")
        return out.stdout

    def audit(self, namespace: str) -> list[dict[str, Any]]:
        events = []
        with open(self.info.audit_log) as log:
            for line in log:
                if namespace not in line:
                    continue
                event = json.loads(line)
                if event.get("stage") != "ResponseComplete" or event["verb"] not in WRITE_VERBS:
                    continue
                if event.get("objectRef", {}).get("namespace") != namespace:
                    continue
                events.append(event)
        return events

    def start_operator(self, namespace: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/healthz"
        env = {**self.env, "KUBECONFIG": self.info.operator_kubeconfig, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aperag_operator",
                "run",
                "-n",
                namespace,
                "--liveness",
                url,
                "--resync-interval",
                "5",
                "--log-level",
                "debug",
            ],
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                return proc, url
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("operator did not come up:\n" + log_path.read_text()[-3000:])


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.25)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def readyz(liveness_url: str) -> bool:
    try:
        urllib.request.urlopen(liveness_url.rsplit("/", 1)[0] + "/readyz", timeout=1).read()
        return True
    except OSError:
        return False


def quiet_window(bench: Bench, ns: str, names: list[str], log_path: Path, since: float) -> int:
    """The operator's writes since ``since``, counted once every resource has been reconciled twice more."""
    start_counts = {name: log_path.read_text().count(f"reconciled {ns}/{name}:") for name in names}

    def resynced() -> bool:
        text = log_path.read_text()
        return all(text.count(f"reconciled {ns}/{name}:") >= start_counts[name] + 2 for name in names)

    wait_for(resynced, timeout=180, what="two reconciles of every resource")
    return sum(1 for e in bench.audit(ns) if e["user"]["username"] == OPERATOR_USER and stamp(e) >= since)


def run_size(bench: Bench, n: int, workdir: Path) -> dict[str, Any]:
    ns = f"bench-{n}-{int(time.time())}"
    lb_ns = f"{ns}-lb"
    bench.kubectl("create", "namespace", ns)
    bench.kubectl("create", "namespace", lb_ns)
    log_path = workdir / f"operator-{n}.log"
    proc, _ = bench.start_operator(ns, log_path)
    try:
        names = [f"rag-{i:03d}" for i in range(n)]
        docs = [
            {
                "apiVersion": "aperag.io/v1alpha1",
                "kind": "ApeRAG",
                "metadata": {"name": name, "namespace": ns},
                "spec": SPEC,
            }
            for name in names
        ]
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": DB_SECRET, "namespace": ns},
            "stringData": {"username": "bench", "password": "bench"},
        }
        bench.kubectl("apply", "--server-side", "--field-manager=bench", "-f", "-", input=yaml.safe_dump(secret))
        bench.kubectl("apply", "--server-side", "--field-manager=bench", "-f", "-", input=yaml.safe_dump_all(docs))

        def child_writes() -> dict[str, list[float]]:
            per: dict[str, list[float]] = {name: [] for name in names}
            for e in bench.audit(ns):
                ref = e.get("objectRef", {})
                if e["user"]["username"] != OPERATOR_USER or ref.get("resource") in ("aperags", "events"):
                    continue
                match = re.match(r"(rag-\d{3})", ref.get("name", ""))
                if match and match.group(1) in per:
                    per[match.group(1)].append(stamp(e))
            return per

        wait_for(
            lambda: all(len(v) >= CHILDREN_PER_RESOURCE for v in child_writes().values()),
            timeout=600,
            what=f"all children of {n} resources",
        )
        creates = {
            e["objectRef"]["name"]: stamp(e)
            for e in bench.audit(ns)
            if e["user"]["username"] != OPERATOR_USER
            and e["objectRef"].get("resource") == "aperags"
            and not e["objectRef"].get("subresource")
        }
        per = child_writes()
        latencies = [max(per[name][:CHILDREN_PER_RESOURCE]) - creates[name] for name in names]
        # The migration Job runs between its creation and the Deployments' creation: the control plane's
        # and the Job's time (kwok plays it), not the operator's.
        job_waits = []
        for name in names:
            writes_of = [
                (stamp(e), e["objectRef"].get("resource"))
                for e in bench.audit(ns)
                if e["user"]["username"] == OPERATOR_USER and e["objectRef"].get("name", "").startswith(f"{name}-")
            ]
            job = min(t for t, resource in writes_of if resource == "jobs")
            first_deployment = min(t for t, resource in writes_of if resource == "deployments")
            job_waits.append(first_deployment - job)
        own = [total_latency - wait for total_latency, wait in zip(latencies, job_waits, strict=True)]
        total = max(max(v[:CHILDREN_PER_RESOURCE]) for v in per.values()) - min(creates.values())

        # settle: every resource Ready, then no operator write for 5 s
        def all_ready() -> bool:
            listing = json.loads(bench.kubectl("get", "aperags", "-n", ns, "-o", "json"))["items"]
            return len(listing) == n and all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (a.get("status") or {}).get("conditions", [])
                )
                for a in listing
            )

        wait_for(all_ready, timeout=1200, what=f"{n} resources Ready")

        def settled() -> bool:
            ops = [stamp(e) for e in bench.audit(ns) if e["user"]["username"] == OPERATOR_USER]
            return time.time() - max(ops) > 5

        wait_for(settled, timeout=300, what="operator writes settled")
        creation_writes = sum(1 for e in bench.audit(ns) if e["user"]["username"] == OPERATOR_USER)

        # no-op resync window (every resource Ready): every resource reconciled at least twice more
        noop_writes = quiet_window(bench, ns, names, log_path, time.time())
        rss = peak_rss_mb(proc.pid)
        cpu = cpu_seconds(proc.pid)

        # restart: SIGKILL with everything Ready, a new operator, its writes once it reconciled everything
        proc.kill()
        proc.wait(timeout=30)
        killed = time.time()
        restart_log = workdir / f"operator-{n}-restarted.log"
        t0 = time.monotonic()
        proc, url = bench.start_operator(ns, restart_log)
        wait_for(lambda: readyz(url), timeout=120, what="restarted operator listed everything")
        restart_synced = time.monotonic() - t0
        restart_writes = quiet_window(bench, ns, names, restart_log, killed)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # lower bound: the same rendered children, applied by kubectl --server-side in one run
    rendered = []
    for name in names:
        for obj in rendered_children(name, lb_ns):
            obj["metadata"].pop("ownerReferences", None)
            rendered.append(obj)
    manifest = workdir / f"lower-bound-{n}.json"  # JSON: YAML would turn a hash like 123e4567 into a number
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": rendered}))
    t0 = time.monotonic()
    bench.kubectl("apply", "--server-side", "--field-manager=bench-lower-bound", "-f", str(manifest))
    lower_bound = time.monotonic() - t0

    bench.kubectl("delete", "namespace", ns, lb_ns, "--wait=false")
    return {
        "n": n,
        "children_per_resource": CHILDREN_PER_RESOURCE,
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "p95_without_migration_s": round(percentile(own, 0.95), 3),
        "migration_job_p50_s": round(statistics.median(job_waits), 3),
        "total_s": round(total, 3),
        "writes_per_resource": round(creation_writes / n, 2),
        "noop_resync_writes": noop_writes,
        "restart_writes": restart_writes,
        "restart_synced_s": round(restart_synced, 2),
        "peak_rss_mb": round(rss, 1),
        "operator_cpu_s": round(cpu, 2),
        "kubectl_lower_bound_s": round(lower_bound, 3),
        "ratio_to_lower_bound": round(total / lower_bound, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with cluster_info() as info, tempfile.TemporaryDirectory(prefix="aperag-bench-") as tmp:
        bench = Bench(info)
        crd = ROOT / "crds" / "aperag.io_aperags.yaml"
        bench.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=bench", "-f", str(crd))

        def established() -> bool:
            crd = json.loads(bench.kubectl("get", "crd/aperags.aperag.io", "-o", "json"))
            conditions = (crd.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        wait_for(established, timeout=60, what="CRD Established")
        # Warm-up (not reported): the first server-side apply of each kind on a fresh API server builds
        # its type converters; neither the operator's figures nor the lower bound should carry that.
        run_size(bench, 1, Path(tmp))
        for n in sizes:
            result = run_size(bench, n, Path(tmp))
            results.append(result)
            print(json.dumps(result), flush=True)
    header = (
        "N",
        "p50 s",
        "p95 s",
        "p95 s without the Job",
        "Job s (p50)",
        "total s",
        "writes/res",
        "no-op writes",
        "restart writes",
        "restart listed s",
        "peak RSS MB",
        "CPU s",
        "kubectl s",
        "ratio",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        print(
            f"| {r['n']} | {r['p50_s']} | {r['p95_s']} | {r['p95_without_migration_s']} | {r['migration_job_p50_s']} | "
            f"{r['total_s']} | {r['writes_per_resource']} | "
            f"{r['noop_resync_writes']} | {r['restart_writes']} | {r['restart_synced_s']} | {r['peak_rss_mb']} | "
            f"{r['operator_cpu_s']} | {r['kubectl_lower_bound_s']} | {r['ratio_to_lower_bound']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
