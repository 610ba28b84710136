"""A real node beside the kwok nodes: the kubelet with containerd v2 and Debian's runc.

``localcluster.py up --real-node`` starts it after the control plane; ``down`` stops it first. The node
(``real-node-0``) registers as ``system:node:real-node-0`` with a certificate from the cluster's CA,
carries the label and the ``NoSchedule`` taint ``aperag.io/real-node=true`` (so only pods meant for it
land there; kwok ignores it, it lacks kwok's annotation) and runs real containers: images, probes,
termination messages, ``kubectl logs`` and ``exec`` are all real. There is no pod network: pods that
run here use the host's network and bind 127.0.0.1 (tests/harness/realnode.py places them).

What the machine needed (the recipe with every error met, ../shared/recipes/real-node.md):

* ``failCgroupV1: false``: the kubelet refuses cgroup v1 hosts otherwise;
* containerd's ``restrict_oom_score_adj``: without CAP_SYS_RESOURCE runc cannot lower a sandbox's
  oom_score_adj (``can't get final child's PID from pipe: EOF``);
* the node's address: the kubelet rejects ``--node-ip=127.0.0.1`` (loopback) and leaves
  ``status.addresses`` empty, so it is set here (and the kubelet does not overwrite it); the API server
  then reaches the kubelet on 127.0.0.1 for logs, exec and port-forward;
* a pause image built here (``pause/``), since registry.k8s.io cannot be reached;
* a CNI configuration, even though no pod uses a pod network: containerd reports the network not ready
  (and the kubelet the node NotReady) without one.

The kubelet and containerd hard-code a few host paths (``/var/lib/kubelet/device-plugins``,
``/var/log/containers``, ``/run/containerd/s``) and the kubelet puts its cgroups at ``/kubepods`` of
every hierarchy, so one real node runs per machine: a machine-wide record under ``/run/aperag-operator``
names the cluster that owns it, and a second ``--real-node`` fails saying which one. ``stop`` removes
every process (by pid), mount, cgroup and host path the node made.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2e.controlplane.localcluster import Api, ClusterInfo

NODE_NAME = "real-node-0"
#: Label and NoSchedule taint of the real node: pods meant for it select and tolerate it.
NODE_LABEL = "aperag.io/real-node"
TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
RUNC = "/usr/sbin/runc"
#: The record of the machine's one real node (and the lock around starting and stopping it).
OWNER_DIR = Path(os.environ.get("APERAG_REAL_NODE_RECORD_DIR", "/run/aperag-operator"))
#: Paths the kubelet and containerd use whatever their configuration says; those that did not exist
#: before the node started are removed when it stops.
HARD_CODED_PATHS = ("/run/containerd", "/var/lib/kubelet", "/var/log/containers", "/var/log/pods",
                    "/usr/libexec/kubernetes")  # fmt: skip
#: The kubelet's cgroups (cgroupfs driver, cgroup root /) in every hierarchy.
KUBEPODS = "kubepods"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: containerd's root (image content and unpacked layers) is kept between runs, beside the binaries'
#: cache, so an image imported once is not imported again (one real node per machine uses it at a time).
CACHE_DIR = Path(
    os.environ.get("APERAG_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aperag-operator"
)


class RealNodeUnavailable(RuntimeError):
    """The real node cannot start on this machine (the message says why)."""


@dataclass
class RealNodeInfo:
    """The running real node; saved in ``cluster.json`` (``real_node``)."""

    name: str
    dir: str
    containerd_dir: str
    containerd_socket: str
    #: containerd's root: images and snapshots, kept between runs (CACHE_DIR/realnode/...).
    image_store: str
    kubelet_port: int
    pause_image: str
    created_host_paths: list[str] = field(default_factory=list)

    @property
    def ctr(self) -> list[str]:
        """``ctr`` against this node's containerd, in the namespace the kubelet uses."""
        return [str(Path(self.containerd_dir) / "ctr"), "-a", self.containerd_socket, "-n", "k8s.io"]


def log(message: str) -> None:
    from e2e.controlplane.localcluster import log as cluster_log

    cluster_log(message)


# --- binaries ---------------------------------------------------------------------------------


def node_binaries(bin_dir: Path) -> tuple[Path, Path]:
    """The containerd directory and the pause binary ``build.sh node`` made for the current sources:
    ``containerd-<CONTAINERD_VERSION>/`` and ``pause-<hash of pause/go.mod and main.go>/pause``."""
    from e2e.controlplane.localcluster import HERE

    lines = (HERE / "versions.env").read_text().splitlines()
    versions = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    containerd_dir = bin_dir / f"containerd-{versions['CONTAINERD_VERSION'].strip()}"
    source = b"".join((HERE / "pause" / name).read_bytes() for name in ("go.mod", "main.go"))
    pause = bin_dir / f"pause-{hashlib.sha256(source).hexdigest()[:12]}" / "pause"
    missing = [str(p) for p in (containerd_dir / "containerd", pause) if not p.exists()]
    if missing:
        raise RealNodeUnavailable(f"not built: {', '.join(missing)} (`localcluster.py build --real-node`)")
    return containerd_dir, pause


# --- can it start here? -----------------------------------------------------------------------


def preflight() -> list[str]:
    """Why the real node cannot start on this machine (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root: the kubelet and containerd mount filesystems and create cgroups")
    if not Path(RUNC).is_file():
        problems.append(f"{RUNC} missing: install Debian's runc (make image-packages)")
    if not any(entry["fstype"] in ("cgroup", "cgroup2") for entry in _mounts()):
        problems.append("no cgroup filesystem mounted")
    for tool in ("mount", "umount", "openssl"):
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            problems.append(f"{tool} not found")
    return problems


# --- the pause image --------------------------------------------------------------------------


def _tar_info(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid = size, mode, 0, 0, 0
    return info


def pause_image_archive(pause_binary: Path) -> tuple[Path, str]:
    """An OCI image archive holding only ``/pause`` (written next to the binary once) and its name.

    Written by hand rather than with buildah so the node needs no image tooling: one gzipped layer, the
    image config (entrypoint ``/pause``), the manifest and the index, as ``ctr images import`` reads them.
    """
    directory = pause_binary.parent
    name = f"localhost/aperag-pause:{directory.name.removeprefix('pause-')}"
    archive = directory / "pause.oci.tar"
    if archive.exists():
        return archive, name
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = pause_binary.read_bytes()
        tar.addfile(_tar_info("pause", len(data), 0o755), io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
    layer = gzip.compress(layer_tar.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()  # fmt: skip

    def descriptor(media_type: str, blob: bytes, **extra: Any) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob),
                **extra}  # fmt: skip

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }).encode()  # fmt: skip
    annotations = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", manifest, annotations=annotations,
                                 platform={"architecture": "amd64", "os": "linux"})],
    }).encode()  # fmt: skip
    partial = archive.with_suffix(f".partial.{os.getpid()}")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        blobs = [(f"blobs/sha256/{hashlib.sha256(b).hexdigest()}", b) for b in (layer, config, manifest)]
        for path, blob in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index), *blobs]:
            tar.addfile(_tar_info(path, len(blob), 0o644), io.BytesIO(blob))
    partial.replace(archive)
    return archive, name


# --- the machine-wide record ------------------------------------------------------------------


@contextlib.contextmanager
def _owner_lock() -> Any:
    OWNER_DIR.mkdir(parents=True, exist_ok=True)
    with open(OWNER_DIR / "real-node.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _owner_record() -> dict[str, Any] | None:
    path = OWNER_DIR / "real-node.json"
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record


def _alive(pid: int, executable: str) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except OSError:
        return False
    return exe == executable and state != "Z"


def _record_alive(record: dict[str, Any]) -> bool:
    return any(_alive(p["pid"], p["executable"]) for p in record.get("processes", []))


# --- start ------------------------------------------------------------------------------------


def start(info: ClusterInfo, state: Path, bin_dir: Path, wait_seconds: float = 0) -> RealNodeInfo:
    """Starts containerd and the kubelet against the running cluster and waits until the node is Ready.

    Raises :class:`RealNodeUnavailable` when this machine cannot run it, or when another cluster's real
    node still runs after ``wait_seconds``; on any other failure everything started is removed again
    before the error propagates."""
    from e2e.controlplane.localcluster import Api, ManagedProcess, _start, free_port, wait_until

    problems = preflight()
    if problems:
        raise RealNodeUnavailable("the real node cannot start on this machine: " + "; ".join(problems))
    started = time.monotonic()
    node_dir = state / "node"
    containerd_dir, pause_binary = node_binaries(bin_dir)
    _wait_for_the_machine(state, wait_seconds)
    with _owner_lock():
        record = _owner_record()
        if record is not None and _record_alive(record):
            if record["state_dir"] != str(state):
                raise RealNodeUnavailable(
                    f"a real node of another local cluster runs on this machine (state {record['state_dir']}); only "
                    "one can (the kubelet's host paths and cgroups are fixed): stop it with "
                    f"`localcluster.py down --state-dir {record['state_dir']}`"
                )
            raise RealNodeUnavailable(f"this cluster's real node already runs ({state})")
        if record is not None:
            log(f"removing what a real node that died left behind (state {record['state_dir']})")
            _clean_up(Path(record["state_dir"]) / "node", record.get("image_store", ""),
                      record.get("created_host_paths", []), record.get("shim", ""))  # fmt: skip
        shutil.rmtree(node_dir, ignore_errors=True)
        created = [p for p in HARD_CODED_PATHS if not os.path.lexists(p)]
        node = RealNodeInfo(
            name=NODE_NAME, dir=str(node_dir), containerd_dir=str(containerd_dir),
            containerd_socket=str(node_dir / "containerd" / "containerd.sock"),
            image_store=str(CACHE_DIR / "realnode" / f"containerd-{containerd_dir.name.removeprefix('containerd-')}"),
            kubelet_port=free_port(),
            pause_image="", created_host_paths=created,
        )  # fmt: skip
        owner: dict[str, Any] = {"state_dir": str(state), "created_host_paths": created, "processes": [],
                 "image_store": node.image_store, "shim": str(containerd_dir / "containerd-shim-runc-v2")}  # fmt: skip
        _write_owner(owner)
        info.real_node = asdict(node)
        info.save()
        pki = state / "pki"
        try:
            Path(node.image_store).mkdir(parents=True, exist_ok=True)
            for sub in ("containerd/state", "containerd/runc", "cni/net.d", "cni/bin", "kubelet",
                        "kubelet-pki", "volume-plugins", "pod-logs"):  # fmt: skip
                (node_dir / sub).mkdir(parents=True, exist_ok=True)
            _node_pki(pki)
            from e2e.controlplane.localcluster import write_kubeconfig

            write_kubeconfig(node_dir / "kubelet.kubeconfig", info.apiserver_url, pki, "kubelet")
            archive, node.pause_image = pause_image_archive(pause_binary)
            info.real_node = asdict(node)
            (node_dir / "containerd" / "config.toml").write_text(containerd_config(node, node_dir))
            # Only the loopback network is configured, and no pod uses it (every pod here is hostNetwork):
            # containerd wants a CNI configuration to report its network ready.
            (node_dir / "cni/net.d/10-loopback.conflist").write_text(json.dumps(
                {"cniVersion": "1.0.0", "name": "aperag-real-node", "plugins": [{"type": "loopback"}]}))  # fmt: skip
            env = {"PATH": f"{containerd_dir}:{SYSTEM_PATH}", "HOME": str(node_dir), "LANG": "C.UTF-8"}

            def keep(process: ManagedProcess) -> None:
                info.processes.append(process)
                info.save()
                owner["processes"].append({"pid": process.pid, "executable": process.executable})
                _write_owner(owner)

            keep(_start("containerd", [str(containerd_dir / "containerd"), "--config",
                                         str(node_dir / "containerd" / "config.toml"), "--log-level", "warn"],
                          state, env=env))  # fmt: skip
            wait_until(lambda: _ctr(node, "version").returncode == 0, timeout=30, what="containerd's socket")
            # Containers a node that died left in the kept image store's metadata: gone before the kubelet
            # starts (it would only find sandboxes of pods that no longer exist).
            _remove_containers(node)
            log(f"containerd up in {time.monotonic() - started:.1f}s")
            import_images(node, archive, [node.pause_image])
            (node_dir / "kubelet-config.yaml").write_text(json.dumps(kubelet_config(node, node_dir, pki), indent=2))
            keep(_start("kubelet", [
                str(bin_dir / "kubelet"), f"--config={node_dir / 'kubelet-config.yaml'}",
                f"--kubeconfig={node_dir / 'kubelet.kubeconfig'}", f"--root-dir={node_dir / 'kubelet'}",
                f"--cert-dir={node_dir / 'kubelet-pki'}", f"--hostname-override={NODE_NAME}", "--node-ip=127.0.0.1",
                f"--node-labels={NODE_LABEL}=true", "--v=1",
            ], state, env=env))  # fmt: skip
            api = Api(info.apiserver_url, pki)
            wait_until(lambda: _node_ready(api), timeout=90, what=f"node {NODE_NAME} Ready")
            # The kubelet rejects a loopback node IP and then leaves the addresses alone: without one the
            # API server cannot reach it for logs, exec and port-forward. No Hostname address: the API
            # server would try it first, and real-node-0 does not resolve.
            api.request("PATCH", f"/api/v1/nodes/{NODE_NAME}/status",
                        {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}},
                        content_type="application/merge-patch+json")  # fmt: skip
            info.save()
        except BaseException:
            log(f"real node start failed; logs in {state / 'logs'} (containerd.log, kubelet.log):\n"
                + _log_tail(state / "logs" / "kubelet.log") + _log_tail(state / "logs" / "containerd.log"))
            _stop_locked(info, state)
            raise
    log(f"real node {NODE_NAME} Ready in {time.monotonic() - started:.1f}s (kubelet on 127.0.0.1:{node.kubelet_port})")
    return node


def _wait_for_the_machine(state: Path, wait_seconds: float) -> None:
    """Waits (up to ``wait_seconds``) while another cluster's real node runs on this machine."""
    deadline = time.monotonic() + wait_seconds
    announced = False
    while time.monotonic() < deadline:
        with _owner_lock():
            record = _owner_record()
            busy = record is not None and _record_alive(record) and record["state_dir"] != str(state)
        if not busy:
            return
        if not announced:
            log(f"waiting up to {wait_seconds:.0f}s for the real node of {record and record['state_dir']} to stop")
            announced = True
        time.sleep(2)


def _write_owner(owner: dict[str, Any]) -> None:
    path = OWNER_DIR / "real-node.json"
    tmp = path.with_suffix(f".tmp.{os.getpid()}")
    tmp.write_text(json.dumps(owner, indent=2))
    tmp.replace(path)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"--- {path.name}\n" + "\n".join(text) + "\n"


def _node_ready(api: Api) -> bool:
    node = api.request("GET", f"/api/v1/nodes/{NODE_NAME}")
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


def _node_pki(pki: Path) -> None:
    """The kubelet's client certificate (``system:node:<name>`` in ``system:nodes``, what the Node
    authorizer expects) and its serving certificate for 127.0.0.1."""
    from e2e.controlplane.localcluster import signed_cert

    if not (pki / "kubelet.crt").exists():
        signed_cert("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}", pki)
    if not (pki / "kubelet-serving.crt").exists():
        signed_cert("kubelet-serving", f"/CN={NODE_NAME}", pki, server_names=["IP:127.0.0.1", f"DNS:{NODE_NAME}"])


def containerd_config(node: RealNodeInfo, node_dir: Path) -> str:
    runtime = 'plugins."io.containerd.cri.v1.runtime"'
    disabled = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs",
                "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]  # fmt: skip
    return f"""\
version = 3
root = "{node.image_store}"
state = "{node_dir / 'containerd/state'}"
disabled_plugins = {json.dumps(disabled)}
[grpc]
  address = "{node.containerd_socket}"
[ttrpc]
  address = "{node.containerd_socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{runtime}]
  enable_selinux = false
  # Without CAP_SYS_RESOURCE (this kind of VM) runc cannot give a sandbox oom_score_adj -998.
  restrict_oom_score_adj = true
  [{runtime}.containerd]
    default_runtime_name = "runc"
    [{runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{runtime}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
        Root = "{node_dir / 'containerd/runc'}"
  [{runtime}.cni]
    bin_dirs = ["{node_dir / 'cni/bin'}"]
    conf_dir = "{node_dir / 'cni/net.d'}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{node.pause_image}"
"""


def kubelet_config(node: RealNodeInfo, node_dir: Path, pki: Path) -> dict[str, Any]:
    from e2e.controlplane.localcluster import free_port

    socket = f"unix://{node.containerd_socket}"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        # This machine mounts the v1 controllers (cgroup2 only at /sys/fs/cgroup/unified).
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": socket,
        "imageServiceEndpoint": socket,
        "podLogsDir": str(node_dir / "pod-logs"),
        "volumePluginDir": str(node_dir / "volume-plugins"),
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        # The API server presents no client certificate to kubelets here (no --kubelet-client-certificate):
        # the kubelet, on 127.0.0.1 only, lets it in as anonymous.
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "registerWithTaints": [TAINT],
        # A shared developer machine: never evict for the host's disk or memory use, never collect images.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 20,
    }


def _ctr(node: RealNodeInfo, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*node.ctr, *args], capture_output=True, text=True, timeout=timeout)


def import_images(node: RealNodeInfo | dict[str, Any], archive: Path, names: list[str]) -> bool:
    """Imports an image archive (OCI or ``podman save``'s docker-archive) holding the images ``names``
    into the node's containerd, where the kubelet finds them (``imagePullPolicy: Never``). The image
    store is kept between runs: an archive imported before whose images are all still there is not read
    again (an archive's name must change with its content). Returns whether it was imported now."""
    if isinstance(node, dict):
        node = RealNodeInfo(**node)
    marker = Path(node.image_store) / "imported" / archive.name
    if marker.exists() and set(names) <= image_names(node):
        return False
    result = _ctr(node, "images", "import", str(archive), timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"ctr images import {archive} failed: {result.stderr.strip()}")
    missing = set(names) - image_names(node)
    if missing:
        raise RuntimeError(f"ctr images import {archive}: {sorted(missing)} not in containerd afterwards")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return True


def image_names(node: RealNodeInfo | dict[str, Any]) -> set[str]:
    if isinstance(node, dict):
        node = RealNodeInfo(**node)
    result = _ctr(node, "images", "ls", "-q")
    return set(result.stdout.split())


# --- stop -------------------------------------------------------------------------------------


def stop(info: ClusterInfo, state: Path) -> None:
    """Stops the real node of ``info``: its pods, the kubelet, containerd and the shims (by pid), then
    removes its mounts, cgroups and the host paths it created, and the Node object."""
    with _owner_lock():
        _stop_locked(info, state)


def _stop_locked(info: ClusterInfo, state: Path) -> None:
    from e2e.controlplane.localcluster import Api, _is_ours

    if info.real_node is None:
        return
    started = time.monotonic()
    node = RealNodeInfo(**info.real_node)
    processes = {p.name: p for p in info.processes if p.name in ("kubelet", "containerd")}
    kubelet, containerd = processes.get("kubelet"), processes.get("containerd")
    api = None
    with contextlib.suppress(Exception):
        api = Api(info.apiserver_url, state / "pki")
        api.request("GET", "/readyz")
    if api is not None and kubelet is not None and _is_ours(kubelet):
        # Cordon (nothing new lands here), then let the kubelet stop the pods it runs, briefly.
        with contextlib.suppress(Exception):
            _drain(api, node.name)
    if kubelet is not None:
        _terminate(kubelet.pid, kubelet.executable, timeout=15)
    if containerd is not None and _is_ours(containerd):
        _remove_containers(node)
        _terminate(containerd.pid, containerd.executable, timeout=15)
    # The machine-wide part (kubepods cgroups, the fixed host paths) only when no other cluster's real
    # node runs now (this one died and another took the machine: those are the other's now).
    record = _owner_record()
    machine = record is None or record.get("state_dir") == str(state) or not _record_alive(record)
    _clean_up(Path(node.dir), node.image_store, node.created_host_paths if machine else [],
              str(Path(node.containerd_dir) / "containerd-shim-runc-v2"), cgroups=machine)  # fmt: skip
    if api is not None:
        with contextlib.suppress(Exception):
            api.request("DELETE", f"/api/v1/nodes/{node.name}")
    info.processes = [p for p in info.processes if p.name not in ("kubelet", "containerd")]
    info.real_node = None
    info.save()
    if record is not None and record.get("state_dir") == str(state):
        (OWNER_DIR / "real-node.json").unlink(missing_ok=True)
    log(f"real node stopped and cleaned up in {time.monotonic() - started:.1f}s")


def _drain(api: Api, name: str) -> None:
    api.request("PATCH", f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True}},
                content_type="application/merge-patch+json")  # fmt: skip
    pods = api.request("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{name}")["items"]
    for pod in pods:
        meta = pod["metadata"]
        with contextlib.suppress(Exception):
            api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        {"gracePeriodSeconds": 1})  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not api.request("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{name}")["items"]:
            return
        time.sleep(0.2)


def _terminate(pid: int, executable: str, timeout: float) -> None:
    if not _alive(pid, executable):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid, executable) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid, executable):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid, executable) and time.monotonic() < deadline:
            time.sleep(0.05)


def _remove_containers(node: RealNodeInfo) -> None:
    """Kills every task left in containerd (the pods the kubelet did not stop) and removes the containers,
    which stops their shims."""
    tasks = _ctr(node, "tasks", "ls", "-q").stdout.split()
    for task in tasks:
        _ctr(node, "tasks", "kill", "-s", "SIGKILL", task)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listing = _ctr(node, "tasks", "ls").stdout.splitlines()[1:]
        if all("STOPPED" in line for line in listing):
            break
        time.sleep(0.1)
    for task in tasks:
        _ctr(node, "tasks", "delete", "-f", task)
    for container in _ctr(node, "containers", "ls", "-q").stdout.split():
        _ctr(node, "containers", "delete", container)


def _mounts() -> list[dict[str, str]]:
    entries = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        mount_point = fields[4].replace("\\040", " ")
        entries.append({"mount_point": mount_point, "fstype": fields[separator + 1]})
    return entries


def _cgroup_roots() -> list[Path]:
    return [Path(m["mount_point"]) for m in _mounts() if m["fstype"] in ("cgroup", "cgroup2")]


def _clean_up(node_dir: Path, image_store: str, created_host_paths: list[str], shim: str, cgroups: bool = True) -> None:
    """What the node's processes leave: container processes and shims, mounts under the node's
    directory and the image store, the kubepods cgroups, the host paths it created, the node's
    directory (the image store stays: it is a cache)."""
    # Processes still in the kubelet's cgroups (containers whose shim died first), then our shims.
    for root in _cgroup_roots() if cgroups else []:
        for procs in (root / KUBEPODS).rglob("cgroup.procs") if (root / KUBEPODS).is_dir() else []:
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    socket = str(node_dir / "containerd" / "containerd.sock")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ours = os.readlink(proc / "exe").removesuffix(" (deleted)") == shim
            if ours and socket in (proc / "cmdline").read_text():
                os.kill(int(proc.name), signal.SIGKILL)
    prefixes = tuple(f"{p}/" for p in (node_dir, image_store) if p)
    prefix = prefixes[0]
    for _ in range(5):
        mounted = sorted({m["mount_point"] for m in _mounts() if m["mount_point"].startswith(prefixes)}, reverse=True)
        if not mounted:
            break
        for mount_point in mounted:
            if subprocess.run(["umount", mount_point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mount_point], capture_output=True)
    deadline = time.monotonic() + 15
    for root in _cgroup_roots() if cgroups else []:
        top = root / KUBEPODS
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            _rmdir_cgroup(directory, deadline)
        _rmdir_cgroup(top, deadline)
    for path in created_host_paths:
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
    # The pods' files, containerd's state, the kubelet's directory: only when nothing is mounted under it
    # any more (never delete through a mount).
    if node_dir.exists() and not any(m["mount_point"].startswith(prefix) for m in _mounts()):
        shutil.rmtree(node_dir, ignore_errors=True)


def _rmdir_cgroup(directory: Path, deadline: float) -> None:
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                log(f"could not remove cgroup {directory}")
                return
            time.sleep(0.05)
