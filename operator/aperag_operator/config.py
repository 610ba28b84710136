"""Process-wide settings of the operator, set by the CLI before kopf starts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Config:
    #: Watched namespaces; empty: the whole cluster.
    namespaces: list[str] = field(default_factory=list)
    workers: int = 8
    resync_interval: float = 60.0
    relist_interval: float = 600.0
    child_event_delay: float = 0.2
    watch_server_timeout: int = 60
    request_timeout: float = 30.0
    #: The liveness endpoint ('' to serve none); /readyz is served beside it.
    liveness: str = "http://0.0.0.0:8080/healthz"
    #: Seconds without a successful request to the API server before liveness fails.
    contact_window: float = 120.0
    heartbeat_interval: float = 30.0


CONFIG = Config()
