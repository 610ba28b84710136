"""compose.yaml, the single-server deployment.

What runs here and what does not: the PostgreSQL, Redis and Jaeger images it names cannot be pulled on
this machine (no registry but the package indexes), and podman has no container network here (servers
bind to 127.0.0.1 only), so ``podman-compose up`` of the whole file is not run. Instead:

* podman-compose parses and interpolates the file with the env template (``config``), and the test
  checks what it rendered: the app services use the image ``make images`` builds, the operator's commands,
  user, read-only root and tmpfs, the migration is a one-shot service the app services wait for
  (``service_completed_successfully``), the databases have health checks the app waits on;
* the app services (migrate, api, worker, beat) are run one by one with podman exactly as the file
  defines them (image, command, env file and environment, user, read-only root, tmpfs, capabilities,
  volume, health check), on the host network against a real PostgreSQL with pgvector and a real Redis
  with a password; their own health checks must pass and an upload is indexed and found.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from aperag_operator.builders.common import APP_UID
from aperag_operator.builders.deployment import COMMANDS

from aperag.embedded_pg import EmbeddedPostgres
from bench.common import redis_server
from images.build import DEFAULT_REGISTRY, BuiltImage, image_ref, project_version
from images.containers import env as container_env
from images.containers import podman
from tests.e2e.conftest import free_port
from tests.harness.wait import poll_until
from tests.images.pod_runner import SESSION_LABEL

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_TEMPLATE = ROOT / "compose.env.example"
PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
APP_SERVICES = ("migrate", "api", "worker", "beat")


def rendered(env_file: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``podman-compose config`` of compose.yaml in a project directory holding ``.env``."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(COMPOSE, project / "compose.yaml")
    shutil.copy(env_file, project / ".env")
    return subprocess.run(
        [PODMAN_COMPOSE, "-f", str(project / "compose.yaml"), "config"],
        cwd=project, env=container_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def template_values() -> dict[str, str]:
    values = {}
    for line in ENV_TEMPLATE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_compose_file_renders_the_single_server_deployment(tmp_path: Path) -> None:
    result = rendered(ENV_TEMPLATE, tmp_path)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"postgres", "redis", "jaeger", *APP_SERVICES}

    # The template names the image `make images` builds, at this version.
    values = template_values()
    assert f"{values['APERAG_IMAGE']}:{values['APERAG_VERSION']}" == image_ref("app") == (
        f"{DEFAULT_REGISTRY}/aperag:{project_version()}"
    )
    for name in APP_SERVICES:
        service = services[name]
        assert service["image"] == image_ref("app"), name
        assert service["user"] == f"{APP_UID}:{APP_UID}"
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert any(mount.startswith("/tmp") for mount in service["tmpfs"])
    # The operator's commands (the image's entrypoint is `aperag`).
    for name in ("api", "worker", "beat"):
        assert ["aperag", *services[name]["command"]] == COMMANDS[name]
    assert services["migrate"]["command"] == ["migrate", "upgrade", "head"]
    assert services["migrate"]["restart"] == "no"

    # The migration runs once the database is healthy; the app services wait for it to succeed.
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["redis"] == {"condition": "service_healthy"}
    assert services["api"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in ("postgres", "redis", "api", "worker", "beat"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_refuses_to_start_without_passwords(tmp_path: Path) -> None:
    no_password = tmp_path / "no-password.env"
    no_password.write_text(ENV_TEMPLATE.read_text().replace("POSTGRES_PASSWORD=CHANGE-ME", "POSTGRES_PASSWORD="))
    result = rendered(no_password, tmp_path)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr + result.stdout


# --- the app services, one by one ---------------------------------------------------------------------

KNOWN_SERVICE_FIELDS = {
    "image", "command", "env_file", "environment", "user", "read_only", "tmpfs", "cap_drop", "security_opt",
    "restart", "depends_on", "ports", "volumes", "healthcheck", "stop_grace_period",
}  # fmt: skip


def _seconds(value: str) -> str:
    assert value.endswith("s"), value
    return value[:-1]


def service_run_args(service: dict[str, Any], project: Path, volume: str, extra_env: dict[str, str]) -> list[str]:
    """``podman run`` options for a compose service, field by field (``ports`` aside: host network)."""
    unknown = set(service) - KNOWN_SERVICE_FIELDS
    assert not unknown, f"the test does not know how to run {unknown}"
    args = ["--user", service["user"]]
    if service.get("read_only"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    args += [arg for mount in service.get("tmpfs", []) for arg in ("--tmpfs", mount)]
    args += [arg for cap in service.get("cap_drop", []) for arg in ("--cap-drop", cap)]
    args += [arg for opt in service.get("security_opt", []) for arg in ("--security-opt", opt.replace(":true", ""))]
    args += [arg for env_file in service.get("env_file", []) for arg in ("--env-file", str(project / env_file))]
    environment = {**service.get("environment", {}), **extra_env}
    args += [arg for key, value in environment.items() for arg in ("--env", f"{key}={value}")]
    for mount in service.get("volumes", []):
        _, _, target = mount.partition(":")
        args += ["--volume", f"{volume}:{target}"]
    check = service.get("healthcheck")
    if check:
        kind, *command = check["test"]
        assert kind == "CMD", "the app image has a shell but its checks need none"
        args += ["--health-cmd", json.dumps(command)]
        args += ["--health-timeout", check["timeout"], "--health-retries", str(check["retries"])]
    if "stop_grace_period" in service:
        args += ["--stop-timeout", _seconds(service["stop_grace_period"])]
    return args


@pytest.fixture
def volume() -> Iterator[str]:
    """The `objects` volume of one test, and its containers; all removed at the end."""
    name = f"aperag-compose-test-{uuid.uuid4().hex[:6]}"
    yield name
    # Every container of the test is named <volume>-<service> (beat mounts no volume: filter by name).
    containers = podman("ps", "--all", "--filter", f"name=^{name}-", "--format", "{{.Names}}", check=False)
    for container in containers.stdout.split():
        logs = podman("logs", container, check=False)
        sys.stderr.write(f"\n--- podman logs {container} ---\n{(logs.stdout + logs.stderr)[-5000:]}\n")
        podman("rm", "--force", "--time", "10", container, check=False, timeout=60)
    podman("volume", "rm", "--force", name, check=False, timeout=60)


def test_compose_app_services_run_one_by_one(
    built_images: dict[str, BuiltImage], postgres: EmbeddedPostgres, tmp_path: Path, volume: str
) -> None:
    database = "compose_" + uuid.uuid4().hex[:8]
    postgres.create_database(database)
    password = uuid.uuid4().hex
    api_key = uuid.uuid4().hex
    with redis_server() as redis_port:
        redis.Redis(port=redis_port).config_set("requirepass", password)
        env_file = tmp_path / "test.env"
        env_file.write_text(
            ENV_TEMPLATE.read_text()
            .replace("APERAG_API_KEYS=CHANGE-ME", f"APERAG_API_KEYS={api_key}")
            .replace("POSTGRES_USER=aperag", f"POSTGRES_USER={postgres.user}")
            .replace("POSTGRES_PASSWORD=CHANGE-ME", "POSTGRES_PASSWORD=unused-trust-auth")
            .replace("POSTGRES_DB=aperag", f"POSTGRES_DB={database}")
            .replace("POSTGRES_PORT=5432", f"POSTGRES_PORT={postgres.port}")
            .replace("REDIS_PASSWORD=CHANGE-ME", f"REDIS_PASSWORD={password}")
            .replace("REDIS_PORT=6379", f"REDIS_PORT={redis_port}")
            # The host's network stands in for the compose network: the databases on 127.0.0.1.
            + "POSTGRES_HOST=127.0.0.1\nREDIS_HOST=127.0.0.1\nOTEL_EXPORTER_OTLP_ENDPOINT=\nAPERAG_HOST=127.0.0.1\n"
        )
        result = rendered(env_file, tmp_path)
        assert result.returncode == 0, result.stderr
        services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
        project = tmp_path / "project"
        app = built_images["app"]
        ports = {"api": {"APERAG_PORT": str(free_port())}, "worker": {"HEALTH_PORT": str(free_port())},
                 "beat": {"HEALTH_PORT": str(free_port())}, "migrate": {}}  # fmt: skip

        def run(name: str, detach: bool) -> subprocess.CompletedProcess[str]:
            service = services[name]
            assert service["image"] == app.ref
            args = service_run_args(service, project, volume, ports[name])
            mode = ["--detach"] if detach else ["--rm"]
            return podman("run", *mode, "--name", f"{volume}-{name}", "--label", SESSION_LABEL, "--pull", "never",
                          "--network", "host", *args,
                          app.image_id, *service["command"], check=False, timeout=300)  # fmt: skip

        migrated = run("migrate", detach=False)
        assert migrated.returncode == 0, migrated.stderr[-4000:]
        for name in ("api", "worker", "beat"):
            assert run(name, detach=True).returncode == 0

        def healthy(container: str) -> bool:
            state = podman("container", "inspect", "--format", "{{.State.Running}}", container, check=False)
            assert state.stdout.strip() == "true", f"{container} exited"
            # The service's own health check, run inside its container.
            return podman("healthcheck", "run", container, check=False).returncode == 0

        for container in (f"{volume}-{name}" for name in ("api", "worker", "beat")):
            poll_until(lambda c=container: healthy(c), timeout=180, what=f"{container} healthy")

        base = f"http://127.0.0.1:{ports['api']['APERAG_PORT']}"
        auth = {"Authorization": f"Bearer {api_key}"}
        assert httpx.post(f"{base}/api/v1/collections", json={"name": "notes"}, headers=auth).status_code == 201
        upload = httpx.post(
            f"{base}/api/v1/collections/notes/documents",
            files={"file": ("tides.md", b"# Tides\nSpring tides follow the full and the new moon.\n")},
            headers=auth,
            timeout=30,
        )
        assert upload.status_code == 201, upload.text
        doc_url = f"{base}/api/v1/collections/notes/documents/{upload.json()['id']}"
        poll_until(lambda: httpx.get(doc_url, headers=auth).json()["status"] == "ready", timeout=180,
                   what="the compose worker to index the upload")  # fmt: skip
        hits = httpx.post(
            f"{base}/api/v1/collections/notes/search", json={"query": "when are spring tides"}, headers=auth
        ).json()["results"]
        assert hits and "Spring tides" in hits[0]["text"]
