"""The app image in four versions for the real-node tests, and their import into the node's containerd.

Each later version is a thin image FROM the app image as `make images` builds it (one small layer, a
second or two with buildah): test-only Alembic revisions (tests/app/migration_fixtures.py) in
``/opt/aperag-test/migrations``, added through ``APERAG_MIGRATIONS_EXTRA_DIR`` (docs/app.md), so each
version's migrations are those of the one before plus its own, as real releases are.

| version | image | its migrations | its API |
| --- | --- | --- | --- |
| 1.0.0 | the app image | the release's own (its head) | serves |
| 1.1.0 | + ``t_next`` | a table and a defaulted column | serves |
| 1.2.0 | + ``t_next``, ``t_audit``, ``t_index`` | ``t_index`` commits ``t_audit`` (autocommit block), fails | serves |
| 1.3.0 | + ``t_next``, ``t_flags`` | a table | ``aperag serve`` exits 1 at start |

All four are saved once into one archive (cached under ~/.cache/aperag-operator/images, keyed by the
image ids) and imported into the real node's containerd, where the kubelet finds them
(``imagePullPolicy: Never``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aperag import migrate
from images.build import BuiltImage
from images.containers import IMAGES_DIR, podman, run
from tests.app.migration_fixtures import next_release, part_way_release, write_revision

REPOSITORY = "localhost/aperag-realnode"
V1, V2, V3, V4 = "1.0.0", "1.1.0", "1.2.0", "1.3.0"
EXTRA_DIR = "/opt/aperag-test/migrations"
WRAPPER_DIR = "/opt/aperag-test/bin"
#: The head revision of each version: V1 is the app as it is (its own head), the others add test revisions.
HEADS = {V1: migrate.heads()[0], V2: "t_next", V3: "t_index", V4: "t_flags"}
NEVER_STARTS_MESSAGE = "aperag 1.3.0 (test image): the API exits at start"

# 1.3.0: `aperag serve` exits at once; every other command (the migration Jobs') runs the real aperag.
SERVE_EXITS = f"""#!/bin/sh
if [ "$1" = serve ]; then
  echo "{NEVER_STARTS_MESSAGE}" >&2
  exit 1
fi
exec /opt/aperag/bin/aperag "$@"
"""


def ref(version: str) -> str:
    return f"{REPOSITORY}:{version}"


@dataclass(frozen=True)
class TestImages:
    """The four versions: reference by version, and the archive imported into the node."""

    refs: dict[str, str]
    archive: Path
    timings: dict[str, float]


def _revisions(version: str, directory: Path) -> Path | None:
    if version == V1:
        return None
    next_release(directory)
    if version == V3:
        part_way_release(directory, after="t_next")
    if version == V4:
        write_revision(
            directory,
            "t_flags",
            "t_next",
            'op.create_table("feature_flags", sa.Column("name", sa.String(64), primary_key=True))',
            'op.drop_table("feature_flags")',
        )
    return directory


def _image_id(reference: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()


def build(app: BuiltImage) -> TestImages:
    """The four versions on top of ``app`` (each a no-op when its tag already holds the same content)."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    refs = {V1: ref(V1)}
    podman("tag", app.image_id, ref(V1))
    with tempfile.TemporaryDirectory(prefix="aperag-realnode-images-") as tmp:
        for version in (V2, V3, V4):
            context = Path(tmp) / version
            migrations = _revisions(version, context / "migrations")
            assert migrations is not None
            files = sorted(migrations.glob("*.py"))
            content = [app.image_id, SERVE_EXITS if version == V4 else "", *(f.read_text() for f in files)]
            key = hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]
            refs[version] = ref(version)
            label = podman("image", "inspect", "--format", '{{index .Labels "test.aperag.io/key"}}', refs[version],
                           check=False).stdout.strip()  # fmt: skip
            if label == key:
                continue
            container = run("buildah", "from", "--pull=never", app.image_id).stdout.strip()
            try:
                run("buildah", "copy", "--chmod", "0644", container, *map(str, files), EXTRA_DIR + "/")
                config = ["--env", f"APERAG_MIGRATIONS_EXTRA_DIR={EXTRA_DIR}", "--label", f"test.aperag.io/key={key}",
                          "--label", f"org.opencontainers.image.version={version}"]  # fmt: skip
                if version == V4:
                    wrapper = context / "aperag"
                    wrapper.write_text(SERVE_EXITS)
                    run("buildah", "copy", "--chmod", "0755", container, str(wrapper), f"{WRAPPER_DIR}/aperag")
                    path = podman("image", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}",
                                  app.image_id).stdout  # fmt: skip
                    base_path = next(line.split("=", 1)[1] for line in path.splitlines() if line.startswith("PATH="))
                    config += ["--env", f"PATH={WRAPPER_DIR}:{base_path}"]
                run("buildah", "config", *config, container)
                run("buildah", "commit", "--quiet", "--rm", container, refs[version])
            except BaseException:
                run("buildah", "rm", container, check=False)
                raise
    timings["build"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    ids = [_image_id(refs[v]) for v in (V1, V2, V3, V4)]
    archive = IMAGES_DIR / "realnode" / f"{hashlib.sha256(''.join(ids).encode()).hexdigest()[:16]}.tar"
    if not archive.exists():
        shutil.rmtree(archive.parent, ignore_errors=True)  # one archive at a time: each is ~600 MB
        archive.parent.mkdir(parents=True)
        partial = archive.with_suffix(".partial")
        podman("save", "--multi-image-archive", "--output", str(partial), *refs.values(), timeout=600)
        partial.replace(archive)
    timings["save"] = round(time.monotonic() - started, 1)
    return TestImages(refs, archive, timings)
