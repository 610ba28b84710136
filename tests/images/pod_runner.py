"""Runs a container of a pod the operator builds with podman, the way a kubelet would run it.

Everything is taken from the pod spec, nothing is written by hand: the command and args, the user and
groups of the security contexts, the read-only root filesystem with emptyDirs as tmpfs, the dropped
capabilities, no privilege escalation, the memory limit, and the environment (``env`` over ``envFrom``,
with ``secretKeyRef`` / ``configMapKeyRef`` resolved from the Secrets and ConfigMaps given). A field this
runner does not know makes it fail rather than silently run something else.

The one difference: there is no pod network here, so containers share the host's network (servers on
127.0.0.1 only); the tests give each process its own port through the ApeRAG's ``spec.app.config``, as a
user could.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aperag_operator.builders import migration_job, pvc
from aperag_operator.builders.children import desired_children
from aperag_operator.builders.common import Instance, target_release
from aperag_operator.builders.database_env import build_database_env
from aperag_operator.spec.model import parse_spec

from images.build import project_version
from images.containers import podman

Obj = dict[str, Any]

#: Every container the image tests start carries this label, so the session removes whatever a failed
#: or interrupted test left behind, and only its own (other sessions may share the container store).
SESSION_LABEL = f"aperag-test-session={uuid.uuid4().hex}"

KNOWN_CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources",
    "securityContext", "volumeMounts", "startupProbe", "livenessProbe", "readinessProbe",
    "terminationMessagePath", "terminationMessagePolicy",
}  # fmt: skip
KNOWN_SECURITY_FIELDS = {
    "runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "readOnlyRootFilesystem",
    "allowPrivilegeEscalation", "capabilities", "seccompProfile",
}  # fmt: skip


@dataclass
class Objects:
    """The Secrets and ConfigMaps of the namespace: name -> data."""

    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def lookup(self, source: str, name: str, key: str | None = None) -> Any:
        store = self.secrets if source == "secret" else self.config_maps
        if name not in store:
            raise KeyError(f"{source} {name} does not exist")
        if key is None:
            return store[name]
        if key not in store[name]:
            raise KeyError(f"{source} {name} has no key {key}")
        return store[name][key]


def resolve_env(container: Obj, objects: Objects) -> dict[str, str]:
    """The process environment: ``envFrom`` sources in order, then ``env`` (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = objects.lookup("configMap", source["configMapRef"]["name"])
        elif "secretRef" in source:
            data = objects.lookup("secret", source["secretRef"]["name"])
        else:
            raise ValueError(f"unsupported envFrom source {source}")
        env.update({prefix + key: value for key, value in data.items()})
    for var in container.get("env", []):
        if "value" in var:
            if "$(" in var["value"]:
                raise ValueError(f"$(VAR) expansion is not supported: {var}")
            env[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = objects.lookup("secret", ref["name"], ref["key"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = objects.lookup("configMap", ref["name"], ref["key"])
        else:
            raise ValueError(f"unsupported valueFrom {source}")
    return env


def _memory(quantity: str) -> str:
    """A Kubernetes memory quantity as podman's --memory value (bytes)."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    if match is None:
        raise ValueError(f"unsupported memory quantity {quantity}")
    factor = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
              "T": 10**12}[match.group(2)]  # fmt: skip
    return str(int(match.group(1)) * factor)


def _security(pod_spec: Obj, container: Obj) -> list[str]:
    pod_ctx: Obj = pod_spec.get("securityContext", {})
    ctx: Obj = container.get("securityContext", {})
    for unknown in (set(pod_ctx) | set(ctx)) - KNOWN_SECURITY_FIELDS:
        raise ValueError(f"unsupported securityContext field {unknown}")
    merged = {**pod_ctx, **ctx}
    user, group = merged.get("runAsUser"), merged.get("runAsGroup")
    if merged.get("runAsNonRoot") and not user:
        raise ValueError("runAsNonRoot without a non-zero runAsUser: the kubelet would refuse to start it")
    args: list[str] = []
    if user is not None:
        args += ["--user", f"{user}:{group if group is not None else 0}"]
    if "fsGroup" in pod_ctx:
        args += ["--group-add", str(pod_ctx["fsGroup"])]
    if ctx.get("readOnlyRootFilesystem"):
        # Only the volumes are writable: no tmpfs on /run, /tmp, /var/tmp unless a volume puts one there.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if ctx.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    capabilities = ctx.get("capabilities", {})
    args += [arg for cap in capabilities.get("drop", []) for arg in ("--cap-drop", cap)]
    args += [arg for cap in capabilities.get("add", []) for arg in ("--cap-add", cap)]
    seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":  # podman's default profile is the runtime default
        raise ValueError(f"unsupported seccompProfile {seccomp}")
    return args


def _volumes(pod_spec: Obj, container: Obj, claims: Mapping[str, Path]) -> list[str]:
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    args: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        path = mount["mountPath"]
        if "emptyDir" in volume:
            options = "rw,mode=1777"
            if "sizeLimit" in volume["emptyDir"]:
                options += f",size={_memory(volume['emptyDir']['sizeLimit'])}"
            args += ["--tmpfs", f"{path}:{options}"]
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            args += ["--volume", f"{claims[claim]}:{path}{':ro' if mount.get('readOnly') else ''}"]
        else:
            raise ValueError(f"unsupported volume {volume}")
    return args


@dataclass
class ContainerRun:
    """How podman runs one container of a pod."""

    image: str  # the reference the pod spec names
    options: list[str]  # podman run options
    args: list[str]  # the container's args (after the image)
    env: dict[str, str]

    def podman_args(self, *, name: str, detach: bool, image: str | None = None) -> list[str]:
        """``image`` runs another reference of the same image (an image id, immune to re-tagging)."""
        mode = ["--detach"] if detach else ["--rm"]
        return ["run", *mode, "--name", name, "--label", SESSION_LABEL, "--pull", "never", "--network", "host",
                *self.options,
                image or self.image, *self.args]  # fmt: skip


def container_run(
    pod_spec: Obj,
    container: Obj,
    objects: Objects,
    claims: Mapping[str, Path] | None = None,
    command: list[str] | None = None,
    termination_log: Path | None = None,
) -> ContainerRun:
    """The container as podman runs it. ``command`` replaces the container's command and args (for a
    command the operator runs in no Deployment, with the same pod settings). A container with a
    ``terminationMessagePath`` gets ``termination_log`` (a host file, created writable) mounted there, as
    the kubelet mounts one, so the test can read the message."""
    for unknown in set(container) - KNOWN_CONTAINER_FIELDS:
        raise ValueError(f"unsupported container field {unknown}")
    env = resolve_env(container, objects)
    options = [*_security(pod_spec, container), *_volumes(pod_spec, container, claims or {})]
    if "terminationMessagePath" in container:
        if termination_log is None:
            raise ValueError("the container writes a termination message: give termination_log")
        termination_log.touch()
        termination_log.chmod(0o666)
        options += ["--volume", f"{termination_log}:{container['terminationMessagePath']}:rw"]
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        options += ["--memory", _memory(limit)]
    options += [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    entrypoint = command if command is not None else container.get("command")
    if entrypoint:
        options += ["--entrypoint", json.dumps(entrypoint)]
    args = [] if command is not None else list(container.get("args", []))
    return ContainerRun(container["image"], options, args, env)


class Containers:
    """Containers started by one test; all removed at the end."""

    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []

    def run(self, run: ContainerRun, *, suffix: str, image: str | None = None, timeout: float = 300) -> Any:
        """Runs to completion (``podman run --rm``) and returns the CompletedProcess."""
        name = f"{self.prefix}-{suffix}"
        return podman(*run.podman_args(name=name, detach=False, image=image), check=False, timeout=timeout)

    def start(self, run: ContainerRun, *, suffix: str, image: str | None = None) -> str:
        name = f"{self.prefix}-{suffix}"
        self.names.append(name)
        podman(*run.podman_args(name=name, detach=True, image=image), timeout=120)
        return name

    def running(self, name: str) -> bool:
        result = podman("container", "inspect", "--format", "{{.State.Running}}", name, check=False)
        return result.stdout.strip() == "true"

    def logs(self, name: str) -> str:
        result = podman("logs", name, check=False)
        return str(result.stdout) + str(result.stderr)

    def all_logs(self) -> Iterator[tuple[str, str]]:
        for name in self.names:
            yield name, self.logs(name)

    def remove(self, name: str) -> None:
        podman("rm", "--force", "--time", "10", name, check=False, timeout=60)

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "10", name, check=False, timeout=60)


def remove_session_containers() -> None:
    """Removes every container this test session started that is still there."""
    left = podman("ps", "--all", "--filter", f"label={SESSION_LABEL}", "--format", "{{.Names}}", check=False)
    for name in left.stdout.split():
        podman("rm", "--force", "--time", "5", name, check=False, timeout=60)


def instance_with_databases(
    pg_port: int, database: str, redis_port: int, config: Mapping[str, str] | None = None, **spec: Any
) -> Instance:
    """An ApeRAG of the version this repository builds, on external PostgreSQL (Secret
    ``pg-credentials``) and Redis on 127.0.0.1, with its API keys in Secret ``api-keys``."""
    body = {
        "version": project_version(),
        "app": {"apiKeysSecret": {"name": "api-keys", "key": "apiKeys"}, "config": dict(config or {})},
        "databases": {
            "postgresql": {
                "external": {
                    "host": "127.0.0.1",
                    "port": pg_port,
                    "database": database,
                    "credentialsSecretRef": {"name": "pg-credentials"},
                }
            },
            "redis": {"external": {"host": "127.0.0.1", "port": redis_port}},
            "vectorStore": {"type": "pgvector"},
            "fullTextStore": {"type": "postgresql"},
        },
        **spec,
    }
    return Instance(name="rag", namespace="images", uid=str(uuid.uuid4()), spec=parse_spec(body))


class Pods:
    """The pods the operator would create for one ApeRAG, runnable with podman."""

    def __init__(self, inst: Instance, objects: Objects, objects_dir: Path) -> None:
        self.inst = inst
        self.children = desired_children(inst, build_database_env(inst.name, inst.spec.databases))
        children = self.children
        self.deployments = {
            d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in children if d["kind"] == "Deployment"
        }
        config_maps = {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}
        self.objects = Objects(secrets=objects.secrets, config_maps=config_maps)
        # The documents volume comes from the object-storage contributor, not the core children.
        self.claims = {pvc.name(inst): objects_dir} if pvc.wanted(inst) else {}

    def migration_job(self) -> Obj:
        """The migration Job the operator creates first for this ApeRAG's release (``upgrade head``)."""
        request = migration_job.request(self.inst.name, "upgrade", target_release(self.inst.spec), "head", 1)
        return migration_job.build(self.inst, request, build_database_env(self.inst.name, self.inst.spec.databases))

    def run_job(self, job: Obj, termination_log: Path) -> ContainerRun:
        pod_spec = job["spec"]["template"]["spec"]
        return container_run(pod_spec, pod_spec["containers"][0], self.objects, self.claims,
                             termination_log=termination_log)  # fmt: skip

    def container(self, component: str) -> dict[str, Any]:
        container: dict[str, Any] = self.deployments[component]["spec"]["template"]["spec"]["containers"][0]
        return container

    def run(self, component: str, command: list[str] | None = None) -> ContainerRun:
        pod_spec = self.deployments[component]["spec"]["template"]["spec"]
        return container_run(pod_spec, self.container(component), self.objects, self.claims, command)
