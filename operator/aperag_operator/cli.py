"""``aperag-operator run``: start the operator (also ``python -m aperag_operator run``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aperag_operator import __version__

EXIT_CONFIG = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aperag-operator", description="Kubernetes operator for ApeRAG.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch the whole cluster")
    run.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL to serve ('' to disable); /readyz is served beside it",
    )
    run.add_argument("--log-format", choices=["json", "plain", "full"], default="json")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    run.add_argument("--workers", type=int, default=8, help="concurrent reconciles")
    run.add_argument("--resync-interval", type=float, default=60.0, help="seconds between full resyncs")
    run.add_argument("--relist-interval", type=float, default=600.0, help="seconds after which each watch lists again")
    run.add_argument(
        "--child-event-delay",
        type=float,
        default=0.2,
        help="seconds to gather child events before reconciling their owner",
    )
    run.add_argument("--watch-server-timeout", type=int, default=60, help="seconds per watch request")
    run.add_argument(
        "--contact-window",
        type=float,
        default=120.0,
        help="liveness fails after this many seconds without a successful request to the API server",
    )
    run.add_argument(
        "--heartbeat-interval", type=float, default=30.0, help="seconds between the liveness heartbeat's reads"
    )
    return parser.parse_args(argv)


def credentials_problem() -> str | None:
    """Why the operator could not talk to any API server, or None when credentials are there."""
    from lightkube import ConfigError, KubeConfig

    try:
        KubeConfig.from_env()
    except ConfigError as err:
        return f"no Kubernetes credentials: {err} (set KUBECONFIG, or run in a pod with a service account)"
    except Exception as err:  # a malformed kubeconfig
        return f"cannot read the Kubernetes credentials: {err}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        print("aperag-operator: give --namespace NS (repeatable) or --all-namespaces", file=sys.stderr)
        return EXIT_CONFIG
    problem = credentials_problem()
    if problem is not None:
        print(f"aperag-operator: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    import kopf

    from aperag_operator.config import CONFIG

    CONFIG.namespaces = list(args.namespace)
    CONFIG.workers = args.workers
    CONFIG.resync_interval = args.resync_interval
    CONFIG.relist_interval = args.relist_interval
    CONFIG.child_event_delay = args.child_event_delay
    CONFIG.watch_server_timeout = args.watch_server_timeout
    CONFIG.liveness = args.liveness
    CONFIG.contact_window = args.contact_window
    CONFIG.heartbeat_interval = args.heartbeat_interval

    log_format = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}
    kopf.configure(
        debug=False,
        verbose=False,
        quiet=args.log_level in ("warning", "error"),
        log_format=log_format[args.log_format],
        log_refkey="object",
    )
    logging.getLogger("aperag_operator").setLevel(args.log_level.upper())
    for noisy in ("httpx", "httpx2", "httpcore", "aiohttp.access"):  # one line per request at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import aperag_operator.handlers  # noqa: F401  (registers the handlers)

    asyncio.run(
        kopf.operator(
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            standalone=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
