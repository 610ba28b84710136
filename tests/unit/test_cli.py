"""The ``aperag-operator`` command line."""

from __future__ import annotations

import pytest
from aperag_operator.cli import main, parse_args


def test_run_arguments() -> None:
    args = parse_args(["run", "-n", "a", "-n", "b", "--resync-interval", "5", "--watch-client-timeout", "30"])
    assert args.namespace == ["a", "b"] and not args.all_namespaces
    assert args.resync_interval == 5 and args.watch_client_timeout == 30
    assert args.log_format == "json" and args.liveness.endswith("/healthz")
    assert parse_args(["run", "--all-namespaces"]).all_namespaces


def test_scope_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--log-format", "plain"]) == 2
    assert "--namespace" in capsys.readouterr().err


def test_namespace_and_all_namespaces_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        parse_args(["run", "-n", "a", "--all-namespaces"])
