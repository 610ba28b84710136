"""Process-wide settings of the operator, set by the CLI before kopf starts."""

from __future__ import annotations

from dataclasses import dataclass

from aperag_operator.reconcile import Hooks


@dataclass
class Config:
    workers: int = 8
    resync_interval: float = 60.0
    child_event_delay: float = 0.2
    watch_server_timeout: int = 60
    watch_client_timeout: int = 90
    watch_connect_timeout: int = 10
    request_timeout: float = 30.0
    #: None: the default hooks (the databases, see database_hooks.py); set to replace them.
    hooks: Hooks | None = None


CONFIG = Config()
