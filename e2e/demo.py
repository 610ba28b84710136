"""`make demo`: the operator on the local cluster, with the example ApeRAG and its databases.

Expects `make cluster-up` to have run (state in .cluster/). Installs the upstream KubeBlocks CRDs and
the ApeRAG CRD, starts the operator and the KubeBlocks test simulator as background processes
(pid files in .cluster/, stopped by `make cluster-down`), applies the example and follows its status
until it is Ready. Then an upgrade (0.5.0 -> 0.6.0: migration Job, rollout, health gate) and an
automatic rollback (0.7.0, whose migration fails: the downgrade runs, 0.6.0 keeps serving), told by the
resource's status and Events. kwok runs no container: the migration reports are played through the
test-only pod annotations of `spec.upgrade.migrationJob` (docs/design.md).
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
    for name, module in (("operator", "aperag_operator"), ("kubeblocks-simulator", "run_kubeblocks")):
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


def main() -> int:
    if sys.argv[1:] == ["stop"]:
        stop_background()
        return 0
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
    print(kubectl("get", "aperag,clusters.apps.kubeblocks.io,deploy,svc,jobs", "-n", NAMESPACE).stdout)

    print("== upgrade: spec.version 0.5.0 -> 0.6.0 (the migration adds revision 0003)")
    upgrade(
        name, "0.6.0", {"kwok.aperag.io/termination-message-upgrade": migration_report("upgrade", ["0002"], ["0003"])}
    )
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
    print(f"export KUBECONFIG={STATE / 'admin.kubeconfig'}   # then: make cluster-down")
    return 0


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
