"""The image tests' stand-in for a kubelet (tests/images/pod_runner.py): what it makes of a pod spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images.pod_runner import Objects, Pods, container_run, instance_with_databases, resolve_env

SECRETS = {"pg-credentials": {"username": "app", "password": "s3cret"}, "api-keys": {"apiKeys": "k1,k2"}}


def api_pod(tmp_path: Path) -> Pods:
    inst = instance_with_databases(5432, "aperag", 6379, config={"LOG_LEVEL": "DEBUG", "APERAG_PORT": "18000"})
    return Pods(inst, Objects(secrets=SECRETS), tmp_path)


def test_the_operator_api_pod_becomes_a_restricted_podman_run(tmp_path: Path) -> None:
    pods = api_pod(tmp_path)
    run = pods.run("api")
    options = run.options
    assert options[options.index("--user") + 1] == "1000:1000"
    assert options[options.index("--group-add") + 1] == "1000"
    assert "--read-only" in options and "--read-only-tmpfs=false" in options
    assert options[options.index("--cap-drop") + 1] == "ALL"
    assert options[options.index("--security-opt") + 1] == "no-new-privileges"
    assert "/tmp:rw,mode=1777,size=1073741824" in options
    assert f"{tmp_path}:/data/objects" in options
    assert options[options.index("--entrypoint") + 1] == '["aperag", "serve"]'
    assert options[options.index("--memory") + 1] == str(2 * 2**30)
    # Secrets resolved, the ConfigMap under env (spec.app.config wins over the operator's settings).
    assert run.env["POSTGRES_PASSWORD"] == "s3cret" and run.env["APERAG_API_KEYS"] == "k1,k2"
    assert run.env["LOG_LEVEL"] == "DEBUG" and run.env["APERAG_PORT"] == "18000" and run.env["HOME"] == "/tmp"


def test_env_wins_over_env_from_and_missing_secrets_fail() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}}],
        "env": [
            {"name": "A", "value": "from-env"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "b"}}},
        ],
    }
    objects = Objects(secrets={"s": {"b": "secret-b"}}, config_maps={"cfg": {"A": "from-config", "C": "c"}})
    assert resolve_env(container, objects) == {"A": "from-env", "C": "c", "B": "secret-b"}
    with pytest.raises(KeyError, match="has no key"):
        resolve_env(container, Objects(secrets={"s": {}}, config_maps={"cfg": {}}))


def test_unknown_fields_are_refused_not_ignored(tmp_path: Path) -> None:
    pods = api_pod(tmp_path)
    pod_spec = pods.deployments["api"]["spec"]["template"]["spec"]
    with pytest.raises(ValueError, match="unsupported container field"):
        container_run(pod_spec, {**pods.container("api"), "lifecycle": {}}, pods.objects, pods.claims)
    with pytest.raises(ValueError, match="runAsNonRoot"):
        root = {**pod_spec, "securityContext": {"runAsNonRoot": True}}
        container_run(root, pods.container("api"), pods.objects, pods.claims)
    job_container = {**pods.container("api"), "terminationMessagePath": "/dev/termination-log"}
    with pytest.raises(ValueError, match="termination_log"):
        container_run(pod_spec, job_container, pods.objects, pods.claims)
    run = container_run(pod_spec, job_container, pods.objects, pods.claims, termination_log=tmp_path / "message")
    assert f"{tmp_path / 'message'}:/dev/termination-log:rw" in run.options
