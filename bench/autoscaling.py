"""Autoscaling benchmark (issue 13): how fast the real KEDA moves the workers, against its settings.

On the local control plane with the real KEDA (e2e/controlplane/keda.py), a real redis-server with a
password (the app's broker; KEDA reads the queue with the Secret the app uses) and the operator, one
ApeRAG whose workers autoscale on the Celery queue. For each configuration, several rounds of:

* **burst**: 20 Celery tasks sent with the app's own dispatcher (listLength 5: a target of 4 workers);
  measured from the send to the first scale-up write (the audit log: KEDA's 0 -> 1, or its HPA's
  1 -> N), to the first extra worker Ready, and to the 4 workers Ready;
* **empty**: the queue deleted; measured from the delete to the last scale-down write (the workers at
  minReplicas) and to the Deployment reporting it.

kwok plays the worker pods (they start at once and consume nothing), so the figures are KEDA's, the HPA
controller's and the control plane's share: a real pod's start adds to the scale-up, and its warm
shutdown (a running task finishing) to the scale-down. The HPA controller syncs every 15 s (the
kube-controller-manager's default).

Usage: ``python -m bench.autoscaling [--rounds 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.operator_scale import Bench, cluster_info, stamp, wait_for  # noqa: E402
from e2e.controlplane import keda as keda_runner  # noqa: E402

PASSWORD = "bench-queue"
TASKS = 20
LIST_LENGTH = 5
TARGET = TASKS // LIST_LENGTH

#: (label, minReplicas, pollingInterval, cooldownPeriod, scaleDown.stabilizationWindowSeconds)
CONFIGS: list[tuple[str, int, int, int, int]] = [
    ("from zero, poll 2 s, cooldown 10 s", 0, 2, 10, 0),
    ("from zero, poll 10 s, cooldown 30 s", 0, 10, 30, 0),
    ("from one, poll 2 s, stabilization 0 s", 1, 2, 300, 0),
    ("from one, poll 2 s, stabilization 60 s", 1, 2, 300, 60),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def manifest(ns: str, port: int, min_replicas: int, polling: int, cooldown: int, stabilization: int) -> str:
    return json.dumps({
        "apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG", "metadata": {"name": "rag", "namespace": ns},
        "spec": {
            "version": "0.5.0",
            "components": {"beat": {"enabled": False}, "api": {"replicas": 1}},
            "databases": {
                "postgresql": {"external": {"host": "pg.bench.internal", "credentialsSecretRef": {"name": "pg"}}},
                "redis": {"external": {"host": "127.0.0.1", "port": port,
                                       "credentialsSecretRef": {"name": "redis", "usernameKey": ""}}},
            },
            "objectStorage": {"type": "s3", "s3": {"bucket": "docs", "credentialsSecret": {"name": "s3"}}},
            "autoscaling": {"worker": {
                "enabled": True, "minReplicas": min_replicas, "maxReplicas": 10, "listLength": LIST_LENGTH,
                "pollingInterval": polling, "cooldownPeriod": cooldown,
                "scaleDown": {"stabilizationWindowSeconds": stabilization}}},
        },
    })  # fmt: skip


def worker(bench: Bench, ns: str) -> dict[str, int]:
    dep = json.loads(bench.kubectl("get", "-n", ns, "deployment", "rag-worker", "-o", "json"))
    return {"replicas": int(dep["spec"].get("replicas", 1)), "ready": int(dep["status"].get("readyReplicas") or 0)}


def scale_writes(bench: Bench, ns: str, since: float) -> list[tuple[float, str]]:
    """(time, user) of each write to the worker Deployment's scale subresource after ``since``."""
    out = []
    for event in bench.audit(ns):
        ref = event.get("objectRef", {})
        if ref.get("name") == "rag-worker" and ref.get("subresource") == "scale" and stamp(event) >= since:
            out.append((stamp(event), event["user"]["username"]))
    return sorted(out)


def round_trip(bench: Bench, ns: str, redis_url: str, floor: int) -> dict[str, Any]:
    import redis

    from aperag.ingest.dispatch import CeleryDispatcher

    wait_for(lambda: worker(bench, ns) == {"replicas": floor, "ready": floor}, 600, f"workers at {floor}")
    dispatcher = CeleryDispatcher(redis_url)
    sent = time.time()
    for index in range(TASKS):
        dispatcher.enqueue(f"bench-{index}")
    first_ready = wait_for(lambda: worker(bench, ns)["ready"] > floor and time.time(), 300, "a first extra worker")
    all_ready = wait_for(lambda: worker(bench, ns)["ready"] >= TARGET and time.time(), 300, f"{TARGET} workers")
    ups = scale_writes(bench, ns, sent)
    redis.Redis.from_url(redis_url).delete("celery")
    emptied = time.time()
    down_seen = wait_for(lambda: worker(bench, ns)["replicas"] == floor and time.time(), 900, "scaled down")
    downs = scale_writes(bench, ns, emptied)
    return {
        "burst_to_first_scale_write_s": round(ups[0][0] - sent, 2),
        "first_scaler": ups[0][1],
        "burst_to_first_extra_ready_s": round(first_ready - sent, 2),
        "burst_to_all_ready_s": round(all_ready - sent, 2),
        "empty_to_last_scale_write_s": round(downs[-1][0] - emptied, 2) if downs else None,
        "empty_to_scaled_down_s": round(down_seen - emptied, 2),
        "scale_writes_down": [f"{u}@{t - emptied:.1f}s" for t, u in downs],
    }


def run(bench: Bench, workdir: Path, rounds: int) -> list[dict[str, Any]]:
    redis_dir = workdir / "redis"
    redis_dir.mkdir()
    port = free_port()
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(redis_dir), "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    redis_url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    results = []
    try:
        for label, floor, polling, cooldown, stabilization in CONFIGS:
            ns = f"bench-as-{int(time.time())}"
            bench.kubectl("create", "namespace", ns)
            for name, data in (("pg", "--from-literal=username=u --from-literal=password=p"),
                               ("redis", f"--from-literal=password={PASSWORD}"),
                               ("s3", "--from-literal=accessKeyId=a --from-literal=secretAccessKey=b")):  # fmt: skip
                bench.kubectl("create", "secret", "generic", name, "-n", ns, *data.split())
            proc, _url = bench.start_operator(ns, workdir / f"operator-{ns}.log")
            try:
                bench.kubectl("apply", "--server-side", "-f", "-",
                              input=manifest(ns, port, floor, polling, cooldown, stabilization))  # fmt: skip
                wait_for(lambda ns=ns: "True" in bench.kubectl(
                    "get", "aperag", "rag", "-n", ns, "-o",
                    "jsonpath={.status.conditions[?(@.type=='AutoscalingReady')].status}"), 300,
                    "AutoscalingReady")  # fmt: skip
                samples = [round_trip(bench, ns, redis_url, floor) for _ in range(rounds)]
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                bench.kubectl("delete", "namespace", ns, "--wait=false")
            result = {"config": label, "minReplicas": floor, "pollingInterval": polling, "cooldownPeriod": cooldown,
                      "stabilizationWindowSeconds": stabilization, "rounds": samples}  # fmt: skip
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
    return results


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with cluster_info() as info, tempfile.TemporaryDirectory(prefix="aperag-autoscaling-bench-") as tmp:
        bench = Bench(info)
        crd = ROOT / "crds" / "aperag.io_aperags.yaml"
        bench.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=bench", "-f", str(crd))
        state = Path(info.state_dir)
        keda_runner.up(state)
        try:
            results = run(bench, Path(tmp), args.rounds)
        finally:
            keda_runner.down(state)
    print("| configuration | burst -> first scale write s | burst -> first extra worker Ready s | burst -> "
          f"{TARGET} Ready s | empty -> scaled down s |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in results:
        rounds = r["rounds"]
        print(f"| {r['config']} | {summary([s['burst_to_first_scale_write_s'] for s in rounds])} | "
              f"{summary([s['burst_to_first_extra_ready_s'] for s in rounds])} | "
              f"{summary([s['burst_to_all_ready_s'] for s in rounds])} | "
              f"{summary([s['empty_to_scaled_down_s'] for s in rounds])} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
