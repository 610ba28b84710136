"""Builds the two images without Docker: ``python -m images.build [all|base|wheelhouse|context DIR]``.

1. The base image: no base image can be pulled here, so Debian's ``mmdebstrap`` makes a bookworm root
   filesystem with Python 3.11 (as in ``python:3.11-slim-bookworm``) and ``podman import`` turns it into
   ``localhost/aperag-base:bookworm-<key>``. The key is a hash of the recipe below: a change rebuilds it.
2. The wheelhouse: ``pip wheel`` of the locked requirements (requirements/*.txt, hashes checked) on the
   host, keyed by the lock files' contents; the project's own wheel is built fresh each time.
3. Each image: ``buildah bud`` of its Dockerfile with a context holding only its wheels, so the build
   needs no network; layers are cached, so a rebuild after a source change only reinstalls the project.

Everything is cached under ``~/.cache/aperag-operator/images`` (see images/containers.py). Concurrent
runs wait on a lock for the base and the wheelhouse; images are built in separate temporary contexts.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from images.containers import IMAGES_DIR, image_exists, podman, run

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"

#: The registry placeholder of the images this project builds. The CRD's default image.repository is
#: ``<DEFAULT_REGISTRY>/aperag``; publishing means retagging and pushing (docs/images.md).
DEFAULT_REGISTRY = "registry.example.com/aperag"


@dataclass(frozen=True)
class ImageKind:
    name: str  # repository name under the registry
    dockerfile: str
    locks: tuple[str, ...]  # requirements/*.txt its wheels come from


IMAGES = {
    "app": ImageKind("aperag", "Dockerfile.app", ("app.txt", "model.txt", "pip.txt")),
    "operator": ImageKind("aperag-operator", "Dockerfile.operator", ("operator.txt", "pip.txt")),
}

MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
#: What the base root filesystem is made of (its hash is the cache key).
BASE_RECIPE = (
    "--variant=minbase",
    "--include=python3,python3-venv,ca-certificates",
    # merged /usr without the usrmerge package (which pulls in all of perl).
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    # No documentation or translations (as in Debian's slim images); licences stay.
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "--format=tar",
    "bookworm",
)
BASE_CONFIG = (
    "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV=LANG=C.UTF-8",
    'CMD=["python3"]',
)
#: Wheel timestamps, so the same sources give the same project wheel (and a cached image layer).
SOURCE_DATE_EPOCH = "315532800"


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(what: str, timings: dict[str, float]) -> Iterator[None]:
    start = time.monotonic()
    yield
    timings[what] = round(time.monotonic() - start, 1)
    log(f"{what}: {timings[what]} s")


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock shared by every worktree and test session on this machine."""
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    with open(IMAGES_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def image_ref(kind: str, registry: str = DEFAULT_REGISTRY, version: str | None = None) -> str:
    return f"{registry}/{IMAGES[kind].name}:{version or project_version()}"


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.hexdigest()[:12]


def base_image() -> str:
    """The local base image (built once per recipe); returns its reference."""
    key = _digest(json.dumps([BASE_RECIPE, MIRRORS, BASE_CONFIG]).encode())
    ref = f"localhost/aperag-base:bookworm-{key}"
    with locked("base"):
        if image_exists(ref):
            return ref
        tar = IMAGES_DIR / "base" / f"bookworm-{key}.tar"
        if not tar.exists():
            tar.parent.mkdir(parents=True, exist_ok=True)
            partial = tar.with_suffix(".partial")
            log(f"mmdebstrap: Debian bookworm root filesystem -> {tar}")
            subprocess.run(["mmdebstrap", "--quiet", *BASE_RECIPE, str(partial), *MIRRORS], check=True)
            partial.replace(tar)
        changes = [arg for change in BASE_CONFIG for arg in ("--change", change)]
        podman("import", *changes, str(tar), ref)
    return ref


def wheelhouse() -> Path:
    """The locked wheels, one directory per lock file, keyed by the lock files' contents."""
    locks = sorted({lock for kind in IMAGES.values() for lock in kind.locks})
    key = _digest(*[(REQUIREMENTS / lock).read_bytes() for lock in locks])
    house = IMAGES_DIR / "wheelhouse" / key
    with locked("wheelhouse"):
        if (house / ".complete").exists():
            return house
        shutil.rmtree(house, ignore_errors=True)
        for lock in locks:
            # --no-deps: a lock is complete (and the model's dependencies are left out on purpose).
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--require-hashes",
                 "--only-binary", ":all:", "--wheel-dir", str(house / Path(lock).stem), "-r",
                 str(REQUIREMENTS / lock)],
                check=True,
            )
        (house / ".complete").touch()
    return house


def project_wheel(out: Path) -> Path:
    """The project's wheel, built from a clean copy of the sources (no stale build/ directory)."""
    vendored = ROOT / "aperag/console/static/vendor/htmx.min.js"
    if not vendored.is_file():
        # Not in git: npm fetches it at build time; a wheel without it serves a console that cannot work.
        raise SystemExit(f"{vendored.relative_to(ROOT)} is missing: run `make console-assets`")
    with tempfile.TemporaryDirectory(prefix="aperag-src-") as tmp:
        src = Path(tmp)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "aperag", src / "aperag", ignore=ignore)
        shutil.copytree(ROOT / "operator" / "aperag_operator", src / "operator" / "aperag_operator", ignore=ignore)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)],
            check=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
        )
    (wheel,) = out.glob("*.whl")
    return wheel


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def assemble_context(kind: str, house: Path, project: Path, out: Path) -> Path:
    """A build context for ``kind``: ``requirements/`` (its locks), ``wheels/``, ``project/``."""
    spec = IMAGES[kind]
    for sub in ("requirements", "wheels", "project"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for lock in spec.locks:
        shutil.copy2(REQUIREMENTS / lock, out / "requirements" / lock)
        for wheel in sorted((house / Path(lock).stem).glob("*.whl")):
            if not (out / "wheels" / wheel.name).exists():
                _link_or_copy(wheel, out / "wheels" / wheel.name)
    shutil.copy2(project, out / "project" / project.name)
    return out


@dataclass(frozen=True)
class BuiltImage:
    kind: str
    ref: str
    image_id: str


def build_image(kind: str, base: str, house: Path, project: Path, registry: str = DEFAULT_REGISTRY) -> BuiltImage:
    ref = image_ref(kind, registry)
    scratch = IMAGES_DIR / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{kind}-", dir=scratch) as tmp:
        context = assemble_context(kind, house, project, Path(tmp) / "context")
        iidfile = Path(tmp) / "iid"
        run(
            "buildah", "bud", "--quiet", "--pull=never", "--layers", "--isolation", "chroot",
            "--file", str(ROOT / IMAGES[kind].dockerfile),
            "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"VERSION={project_version()}",
            "--iidfile", str(iidfile), "--tag", ref, str(context),
            capture=False,
        )
        image_id = iidfile.read_text().strip().removeprefix("sha256:")
    return BuiltImage(kind, ref, image_id)


def build_all(registry: str = DEFAULT_REGISTRY, timings: dict[str, float] | None = None) -> dict[str, BuiltImage]:
    """Base, wheelhouse and both images (each step a no-op when cached). Returns the images by kind."""
    timings = {} if timings is None else timings
    with timed("base image", timings):
        base = base_image()
    with timed("wheelhouse", timings):
        house = wheelhouse()
    built: dict[str, BuiltImage] = {}
    with tempfile.TemporaryDirectory(prefix="aperag-wheel-") as tmp:
        with timed("project wheel", timings):
            project = project_wheel(Path(tmp))
        for kind in IMAGES:
            with timed(f"{kind} image", timings):
                built[kind] = build_image(kind, base, house, project, registry)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry and path the images are tagged under")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("all", help="base image, wheelhouse, both images; prints the image references")
    sub.add_parser("base", help="the local base image; prints its reference")
    context = sub.add_parser("context", help="build contexts for docker build: DIR/app and DIR/operator")
    context.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "base":
        print(base_image())
    elif args.command == "context":
        house = wheelhouse()
        with tempfile.TemporaryDirectory(prefix="aperag-wheel-") as tmp:
            project = project_wheel(Path(tmp))
            for kind in IMAGES:
                shutil.rmtree(args.dir / kind, ignore_errors=True)
                print(assemble_context(kind, house, project, args.dir / kind))
    else:
        timings: dict[str, float] = {}
        for image in build_all(args.registry, timings).values():
            print(image.ref)
        log("timings: " + json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
