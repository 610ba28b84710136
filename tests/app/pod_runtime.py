"""Runs the container of a Job the operator generated as a local process, the way the kubelet would start
it: the image's own environment, then ``envFrom``, then ``env`` (``secretKeyRef`` / ``configMapKeyRef``
resolved from the given Secrets and ConfigMaps, ``$(VAR)`` references expanded), the exact ``command`` and
``args``, and a termination-message file at ``terminationMessagePath`` (``FallbackToLogsOnError``: the
end of the log when the container failed without writing one).

An "image" here is a name mapped to the environment it bakes in (``ENV`` in a Dockerfile), for example
``APERAG_MIGRATIONS_EXTRA_DIR`` for a test release that carries an extra migration; every image runs the
``aperag`` of this checkout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The kubelet keeps the last 80 lines (and at most 2048 bytes) of the log as a fallback message.
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class CreateContainerConfigError(Exception):
    """What the kubelet reports when a referenced Secret, ConfigMap or key is missing."""


@dataclass
class Finished:
    returncode: int
    message: str
    stdout: str
    stderr: str

    def pod(self) -> dict[str, Any]:
        """The pod as the API would show it after the container terminated."""
        terminated = {"exitCode": self.returncode, "message": self.message}
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {
            "metadata": {"creationTimestamp": created},
            "status": {"containerStatuses": [{"name": "migrate", "state": {"terminated": terminated}}]},
        }

    def job(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """The Job with the terminal condition the Job controller would set."""
        condition = {"type": "Complete", "status": "True"} if self.returncode == 0 else {
            "type": "Failed", "status": "True", "reason": "PodFailurePolicy"
        }  # fmt: skip
        return {**job, "status": {"conditions": [condition]}}


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes, others stay."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(sub, value)


@dataclass
class PodRuntime:
    secrets: dict[str, dict[str, str]]
    config_maps: dict[str, dict[str, str]]
    images: dict[str, dict[str, str]]
    workdir: Path
    #: Environment every image has (PATH to this checkout's ``aperag``).
    base_env: dict[str, str] = field(
        default_factory=lambda: {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    )

    def _source(self, kind: str, ref: Mapping[str, Any]) -> dict[str, str] | None:
        store = self.secrets if kind == "secret" else self.config_maps
        data = store.get(ref["name"])
        if data is None and not ref.get("optional"):
            raise CreateContainerConfigError(f"{kind} {ref['name']} not found")
        return data

    def env(self, container: Mapping[str, Any]) -> dict[str, str]:
        image_env = self.images.get(container["image"])
        if image_env is None:
            raise CreateContainerConfigError(f"image {container['image']} not found")
        env = {**self.base_env, **image_env}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                kind, ref = "secret", source["secretRef"]
            else:
                kind, ref = "configmap", source["configMapRef"]
            data = self._source(kind, ref) or {}
            env.update({f"{source.get('prefix', '')}{k}": v for k, v in data.items()})
        for var in container.get("env") or []:
            if "value" in var or "valueFrom" not in var:
                env[var["name"]] = expand(var.get("value", ""), env)
                continue
            source = var["valueFrom"]
            kind, ref = ("secret", source["secretKeyRef"]) if "secretKeyRef" in source else (
                "configmap", source["configMapKeyRef"]
            )  # fmt: skip
            found = self._source(kind, ref)
            if found is None:
                continue  # optional and missing: the variable is not set
            data = found
            if ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise CreateContainerConfigError(f"{kind} {ref['name']} has no key {ref['key']}")
            env[var["name"]] = data[ref["key"]]
        return env

    def run(self, job: Mapping[str, Any], timeout: float = 300) -> Finished:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = self.env(container)
        # The kubelet mounts a file of its own at terminationMessagePath.
        message_path = container.get("terminationMessagePath", "/dev/termination-log")
        host_file = self.workdir / f"{job['metadata']['name']}.termination-log"
        host_file.write_text("")
        env = {k: str(host_file) if v == message_path else v for k, v in env.items()}
        argv = [*container.get("command", []), *container.get("args", [])]
        argv = [expand(a, env) for a in argv]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=self.workdir)
        message = host_file.read_text()
        fallback = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        if not message and result.returncode != 0 and fallback:
            log = (result.stdout + result.stderr).splitlines()[-FALLBACK_LINES:]
            message = "\n".join(log).encode()[-FALLBACK_BYTES:].decode(errors="replace")
        return Finished(result.returncode, message, result.stdout, result.stderr)
