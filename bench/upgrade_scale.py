"""Upgrade benchmark (issue 9): N = 1 and 20 ApeRAGs upgraded at once, and rolled back at once.

For each N, in a fresh namespace with a fresh operator (namespace-scoped, its own credentials):

* install N resources at 0.5.0 (external databases: the bench measures the operator, not KubeBlocks)
  and wait until all are Ready;
* **upgrade**: change spec.version to 0.6.0 on all of them; per resource, the time from the change (the
  admin's write in the audit log) to its status saying 0.6.0 runs and the upgrade is Complete; and the
  operator's writes per upgrade (Job creations, Deployment applies, status writes, Events);
* **rollback**: change spec.version to 0.7.0, whose migration fails (and changed the schema, so a
  downgrade Job runs); per resource, the time from the failed migration Job (its Failed condition) to
  0.6.0 serving again with the upgrade Failed (rolled back), the time from the change to that, and the
  writes per rollback.

kwok plays the migration pods (tests/e2e/test_upgrades.py explains the markers), so the figures are the
operator's and the control plane's share of an upgrade: a real migration's run time adds to them.

Usage: ``python bench/upgrade_scale.py [--sizes 1,20] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.operator_scale import OPERATOR_USER, Bench, cluster_info, percentile, stamp, wait_for  # noqa: E402

SECRET = "bench-db"


def report(action: str, before: list[str], current: list[str], ok: bool = True) -> str:
    body: dict[str, Any] = {"ok": ok, "action": action, "before": before, "current": current,
                            "changed": before != current, "message": "played by kwok"}  # fmt: skip
    if not ok:
        body["reason"] = "MigrationFailed"
    return json.dumps(body)


def spec(version: str, annotations: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "version": version,
        "components": {"api": {"replicas": 1}, "worker": {"replicas": 1}},
        "databases": {
            "postgresql": {"external": {"host": "pg.bench.internal", "credentialsSecretRef": {"name": SECRET}}},
            "redis": {"external": {"host": "redis.bench.internal"}},
        },
        "upgrade": {"migrationJob": {"podAnnotations": annotations, "podLabels": labels or {}}},
    }


INSTALL = spec("0.5.0", {"kwok.aperag.io/termination-message": report("upgrade", [], ["0002"])})
UPGRADE = spec("0.6.0", {"kwok.aperag.io/termination-message": report("upgrade", ["0002"], ["0003"])})
FAILING = spec(
    "0.7.0",
    {
        "kwok.aperag.io/termination-message": report("upgrade", ["0003"], ["0004"], ok=False),
        "kwok.aperag.io/termination-message-downgrade": report("downgrade", ["0004"], ["0003"]),
    },
    {"kwok.aperag.io/fail-upgrade": "true"},
)


def apply_all(bench: Bench, ns: str, names: list[str], body: dict[str, Any]) -> None:
    docs = [{"apiVersion": "aperag.io/v1alpha1", "kind": "ApeRAG", "metadata": {"name": n, "namespace": ns},
             "spec": body} for n in names]  # fmt: skip
    bench.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=bench", "-f", "-",
                  input=yaml.safe_dump_all(docs))  # fmt: skip


def statuses(bench: Bench, ns: str) -> dict[str, dict[str, Any]]:
    items = json.loads(bench.kubectl("get", "aperags", "-n", ns, "-o", "json"))["items"]
    return {a["metadata"]["name"]: a.get("status") or {} for a in items}


def reached(bench: Bench, ns: str, names: list[str], version: str, phase: str) -> dict[str, float]:
    """When each resource was seen with ``version`` running and its upgrade at ``phase`` (polled 0.25 s)."""
    seen: dict[str, float] = {}

    def all_there() -> bool:
        now = time.time()
        for name, st in statuses(bench, ns).items():
            if name not in seen and st.get("version") == version and (st.get("upgrade") or {}).get("phase") == phase:
                seen[name] = now
        return len(seen) == len(names)

    wait_for(all_there, timeout=900, what=f"{len(names)} resources {phase} at {version}")
    return seen


def changes(bench: Bench, ns: str, since: float) -> dict[str, float]:
    """The admin's spec writes per resource since ``since`` (audit stageTimestamp)."""
    return {
        e["objectRef"]["name"]: stamp(e)
        for e in bench.audit(ns)
        if e["user"]["username"] != OPERATOR_USER and e["objectRef"].get("resource") == "aperags"
        and not e["objectRef"].get("subresource") and stamp(e) >= since
    }  # fmt: skip


def operator_writes(bench: Bench, ns: str, since: float, until: float) -> int:
    return sum(1 for e in bench.audit(ns) if e["user"]["username"] == OPERATOR_USER and since <= stamp(e) <= until)


def failed_jobs(bench: Bench, ns: str) -> dict[str, float]:
    """Per resource, when its (latest) failed upgrade Job failed."""
    out: dict[str, float] = {}
    for job in json.loads(bench.kubectl("get", "jobs", "-n", ns, "-o", "json"))["items"]:
        labels = job["metadata"].get("labels", {})
        if labels.get("aperag.io/migration-action") != "upgrade":
            continue
        for cond in job.get("status", {}).get("conditions", []):
            if cond["type"] == "Failed" and cond["status"] == "True":
                when = datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00")).timestamp()
                name = labels["app.kubernetes.io/instance"]
                out[name] = max(out.get(name, 0.0), when)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_s": round(statistics.median(values), 2), "p95_s": round(percentile(values, 0.95), 2),
            "max_s": round(max(values), 2)}  # fmt: skip


def run_size(bench: Bench, n: int, workdir: Path) -> dict[str, Any]:
    ns = f"upgrade-{n}-{int(time.time())}"
    bench.kubectl("create", "namespace", ns)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": ns},
              "stringData": {"username": "bench", "password": "bench"}}  # fmt: skip
    bench.kubectl("apply", "--server-side", "--field-manager=bench", "-f", "-", input=yaml.safe_dump(secret))
    proc, _ = bench.start_operator(ns, workdir / f"operator-{n}.log")
    names = [f"rag-{i:03d}" for i in range(n)]
    try:
        apply_all(bench, ns, names, INSTALL)
        reached(bench, ns, names, "0.5.0", "Complete")

        t_upgrade = time.time()
        apply_all(bench, ns, names, UPGRADE)
        done = reached(bench, ns, names, "0.6.0", "Complete")
        changed = changes(bench, ns, t_upgrade)
        upgrade = [done[name] - changed[name] for name in names]
        upgrade_writes = operator_writes(bench, ns, t_upgrade, max(done.values()) + 1)

        t_fail = time.time()
        apply_all(bench, ns, names, FAILING)
        back = reached(bench, ns, names, "0.6.0", "Failed")
        changed = changes(bench, ns, t_fail)
        failed = failed_jobs(bench, ns)
        rollback_total = [back[name] - changed[name] for name in names]
        rollback_after_failure = [back[name] - failed[name] for name in names]
        rollback_writes = operator_writes(bench, ns, t_fail, max(back.values()) + 1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bench.kubectl("delete", "namespace", ns, "--wait=false")
    return {
        "n": n,
        "upgrade_to_ready": summary(upgrade),
        "upgrade_writes_per_resource": round(upgrade_writes / n, 1),
        "rollback_change_to_rolled_back": summary(rollback_total),
        "rollback_failure_to_rolled_back": summary(rollback_after_failure),
        "rollback_writes_per_resource": round(rollback_writes / n, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,20")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    with cluster_info() as info, tempfile.TemporaryDirectory(prefix="aperag-upgrade-bench-") as tmp:
        bench = Bench(info)
        crd = ROOT / "crds" / "aperag.io_aperags.yaml"
        bench.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=bench", "-f", str(crd))
        wait_for(lambda: "Established" in bench.kubectl("get", "crd/aperags.aperag.io", "-o",
                                                       "jsonpath={.status.conditions[*].type}"),
                 timeout=60, what="CRD Established")  # fmt: skip
        for n in (int(s) for s in args.sizes.split(",")):
            result = run_size(bench, n, Path(tmp))
            results.append(result)
            print(json.dumps(result), flush=True)
    print(
        "| N | upgrade: change to Ready p50 / p95 s | writes/upgrade | rollback: failure to rolled back "
        "p50 / p95 s | change to rolled back p50 / p95 s | writes/rollback |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        u, f, t = r["upgrade_to_ready"], r["rollback_failure_to_rolled_back"], r["rollback_change_to_rolled_back"]
        print(
            f"| {r['n']} | {u['p50_s']} / {u['p95_s']} | {r['upgrade_writes_per_resource']} | "
            f"{f['p50_s']} / {f['p95_s']} | {t['p50_s']} / {t['p95_s']} | {r['rollback_writes_per_resource']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
