"""The ``aperag-operator`` command line."""

from __future__ import annotations

import pytest
from aperag_operator.cli import main, parse_args


def test_run_arguments() -> None:
    args = parse_args(["run", "-n", "a", "-n", "b", "--resync-interval", "5", "--relist-interval", "30"])
    assert args.namespace == ["a", "b"] and not args.all_namespaces
    assert args.resync_interval == 5 and args.relist_interval == 30
    assert args.log_format == "json" and args.liveness.endswith("/healthz")
    assert parse_args(["run", "--all-namespaces"]).all_namespaces


def test_scope_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--log-format", "plain"]) == 2
    assert "--namespace" in capsys.readouterr().err


def test_namespace_and_all_namespaces_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        parse_args(["run", "-n", "a", "--all-namespaces"])


def test_no_credentials_is_a_clear_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    assert main(["run", "--all-namespaces"]) == 2
    err = capsys.readouterr().err
    assert "no Kubernetes credentials" in err and "KUBECONFIG" in err
