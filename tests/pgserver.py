"""A real, throwaway PostgreSQL server for tests.

``PgServer`` runs ``initdb`` into a temporary directory, starts ``postgres`` on
a free loopback TCP port (its unix socket also inside that directory, so it
never collides with a system cluster), and exposes a DSN. ``stop()`` and
``start()`` reuse the same data directory and port, so outage tests can take the
server away and bring it back under the same DSN. ``cleanup()`` stops it and
removes the directory.

PostgreSQL refuses to run as root, so when the tests run as root every server
command runs as the ``postgres`` OS user (``runuser -u postgres --``) and the
temporary directory is handed to that user; otherwise commands run directly.

Binaries come from ``pg_config --bindir`` or the newest
``/usr/lib/postgresql/*/bin``. When none are found, :class:`PgNotInstalled`
says which package to install (``postgresql``; ``scripts/ensure-postgres.sh``
does it).

Not thread-safe: one test session owns one server. The server is tuned for
tests (fsync off) — never point it at data you want to keep.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PgServer", "PgNotInstalled", "find_bindir"]

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. "
    "Install the Debian package 'postgresql' (as root: scripts/ensure-postgres.sh, "
    "or apt-get install -y postgresql), or set CALLENGINE_TEST_NO_PG=1 to skip the PostgreSQL tests."
)


class PgNotInstalled(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def find_bindir() -> Path:
    """The directory holding ``initdb``/``pg_ctl``/``postgres``; raises :class:`PgNotInstalled`."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (subprocess.SubprocessError, OSError):
            pass

    def version_key(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if _has_server(bindir):
            return bindir
    raise PgNotInstalled(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One PostgreSQL server in a temp dir; see the module doc.

    After :meth:`start`, :attr:`dsn` points at database ``callengine_test`` as
    the superuser ``postgres`` (trust authentication on loopback only).
    """

    USER = "postgres"
    DATABASE = "callengine_test"

    def __init__(self, base_dir: str | os.PathLike[str] | None = None) -> None:
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PgNotInstalled(
                    "running as root but there is no 'postgres' OS user to run the server as; "
                    "installing the 'postgresql' package creates it"
                ) from None
        self.root = Path(tempfile.mkdtemp(prefix="callengine-pg-", dir=base_dir))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_file = self.root / "server.log"
        self.port = _free_port()
        self.running = False
        self._initialized = False
        self.socket_dir.mkdir()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")

    # -- commands -----------------------------------------------------------------

    def _cmd(self, *args: str) -> list[str]:
        argv = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._cmd(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
        if proc.returncode != 0:
            log_tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:1])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log_tail}"
            )
        return proc

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.DATABASE)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """initdb on first use, then start and wait until it accepts connections."""
        if self.running:
            return
        if not self._initialized:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            self._initialized = True
            first = True
        else:
            first = False
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "-t", "60", "start"
        )
        self.running = True
        if first:
            self.create_database(self.DATABASE)

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected); same port and data on the next start."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")
        self.running = False

    def cleanup(self) -> None:
        """Stop (if running) and delete the temporary directory. Idempotent."""
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ----------------------------------------------------------------

    def _psql(self, sql: str) -> None:
        self._run(
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.USER,
            "-d",
            "postgres",
            "-c",
            sql,
        )

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name when None); returns its DSN."""
        name = name or f"t_{uuid.uuid4().hex}"
        if not name.replace("_", "").isalnum():
            raise ValueError(f"unsafe database name {name!r}")
        self._psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"unsafe database name {name!r}")
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
