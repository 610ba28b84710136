"""buildah and podman as this project runs them: a container store of its own under the cache directory,
and the settings this kind of machine needs (runc, cgroupfs, explicit ulimits; see docs/images.md).

The settings live in two generated files, ``storage.conf`` and ``containers.conf``, named by the
``CONTAINERS_STORAGE_CONF`` and ``CONTAINERS_CONF`` variables of :func:`env`, so buildah, podman and
podman-compose (which calls podman) all use them without flags.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CACHE_DIR = Path(
    os.environ.get("APERAG_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aperag-operator"
)
IMAGES_DIR = CACHE_DIR / "images"
#: Images and layers (overlay). Large, kept between runs.
STORAGE_ROOT = IMAGES_DIR / "storage"
#: Locks and mount state: transient, so on the run filesystem, not in the cache.
RUN_ROOT = Path(os.environ.get("APERAG_CONTAINERS_RUNROOT", "/run/aperag-operator/containers"))

#: The defaults (1048576 open files) exceed this machine's hard limits, so every container gets these.
ULIMITS = ("nofile=1024:1024", "nproc=1024:1024")
#: crun fails on this machine's hybrid cgroups (v1 controllers with a v2 mount); runc works.
RUNTIME = "runc"
CGROUP_MANAGER = "cgroupfs"


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def write_config() -> dict[str, Path]:
    """Writes storage.conf and containers.conf (idempotent) and returns their paths."""
    conf_dir = IMAGES_DIR / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    storage = conf_dir / "storage.conf"
    engine = conf_dir / "containers.conf"
    storage_text = (
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{STORAGE_ROOT}"\n'
        f'runroot = "{RUN_ROOT / "storage"}"\n'
    )
    engine_text = (
        "[containers]\n"
        f"default_ulimits = {_toml_list(ULIMITS)}\n"
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        f'runtime = "{RUNTIME}"\n'
        f'cgroup_manager = "{CGROUP_MANAGER}"\n'
        'events_logger = "file"\n'
        f'tmp_dir = "{RUN_ROOT / "libpod"}"\n'
    )
    for path, text in ((storage, storage_text), (engine, engine_text)):
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".tmp.{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(path)
    return {"storage": storage, "engine": engine}


def env() -> dict[str, str]:
    """The environment for buildah, podman and podman-compose."""
    paths = write_config()
    return {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(paths["storage"]),
        "CONTAINERS_CONF": str(paths["engine"]),
        # buildah: RUN steps in a chroot (no OCI runtime, no network namespace), layers cached.
        "BUILDAH_ISOLATION": "chroot",
        "BUILDAH_LAYERS": "true",
    }


def run(tool: str, *args: str, check: bool = True, capture: bool = True, timeout: float | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``buildah``, ``podman`` or ``podman-compose`` with the project's container settings."""
    result = subprocess.run(
        [tool, *args], env=env(), text=True, capture_output=capture, timeout=timeout, input=input
    )
    if check and result.returncode != 0:
        detail = f"\n{result.stdout}\n{result.stderr}" if capture else ""
        raise RuntimeError(f"{tool} {' '.join(args)} failed with {result.returncode}{detail}")
    return result


def podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return run("podman", *args, check=check, timeout=timeout)


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def image_size(ref: str) -> int:
    """The image's size in bytes (all layers, uncompressed), as ``podman images`` reports it."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())
