"""A throw-away PostgreSQL cluster and a `prefect server start` on it, as production runs them.

infra/docker-compose.yml runs the Prefect API server on PostgreSQL; the integration tests do the
same on 127.0.0.1: `postgres()` initialises a cluster in a temp dir (Debian's `postgresql`
binaries: `make setup` installs them) and `prefect_server()` starts the server on it. Both are
context managers that stop what they started. Ports are free ones picked on 127.0.0.1.

Run as root (CI containers), the PostgreSQL binaries run as the `postgres` system user, since
initdb refuses root; the temp dir is handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PG_USER = "prefect"  # the superuser initdb creates, and the database the server uses
SCHEDULER_LOOP_S = 2  # the server's scheduler creates a cron's runs within this (default 60 s)
INSTALL_HINT = "apt-get install postgresql (or `make setup`, which does)"


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bindir() -> Path:
    """Where initdb and pg_ctl are: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin (Debian's layout, whose pg_config may be missing or elsewhere)."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    debian = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates += sorted(debian, key=lambda p: _version(p.parent.name), reverse=True)  # newest
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "createdb")):
            return bindir
    raise RuntimeError(
        "PostgreSQL's server binaries (initdb, pg_ctl) were not found via `pg_config --bindir` "
        f"nor in /usr/lib/postgresql/*/bin: {INSTALL_HINT}"
    )


def _version(name: str) -> tuple[int, ...]:
    """A version folder's name as numbers: 15 -> (15,), 9.6 -> (9, 6); others sort first."""
    return tuple(int(part) for part in name.split(".")) if name.replace(".", "").isdigit() else ()


def _as_db_owner() -> list[str]:
    """The prefix that runs a PostgreSQL binary as a user it accepts: nothing, or `runuser -u
    postgres --` under root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise RuntimeError("running as root, PostgreSQL needs `runuser` (util-linux) to drop root")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            f"running as root, but there is no `postgres` user: {INSTALL_HINT}"
        ) from None
    return ["runuser", "-u", "postgres", "--"]


def _pg(cmd: list[str], cwd: Path) -> None:
    """Run one PostgreSQL binary; a failure raises with its output."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )


@contextlib.contextmanager
def postgres(tmp_dir: Path) -> Iterator[str]:
    """A PostgreSQL cluster in tmp_dir on a free port of 127.0.0.1, with a database `prefect`.

    Trust authentication on the loopback only; the socket is in tmp_dir too, so nothing of the
    machine's own PostgreSQL setup is read or touched. Stopped (fast mode) at exit.

    Yields:
        the connection URL, postgresql://prefect@127.0.0.1:PORT/prefect
    """
    bindir, prefix = pg_bindir(), _as_db_owner()
    tmp_dir = Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    if prefix:
        shutil.chown(tmp_dir, "postgres", "postgres")
        probe = subprocess.run([*prefix, "test", "-w", str(tmp_dir)], cwd="/")
        if probe.returncode != 0:
            raise RuntimeError(f"the postgres user cannot write {tmp_dir}: use a dir under /tmp")
    data, log, port = tmp_dir / "data", tmp_dir / "postgres.log", free_port()
    _pg([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER,
         "-E", "UTF8", "--no-sync"], tmp_dir)  # fmt: skip
    options = f"-p {port} -k {tmp_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        _pg([*pg_ctl, "-o", options, "-l", str(log), "-w", "-t", "60", "start"], tmp_dir)
    except RuntimeError as err:
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise RuntimeError(f"{err}\n{log}:\n{tail}") from None
    try:
        _pg([*prefix, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
             "-U", PG_USER, PG_USER], tmp_dir)  # fmt: skip
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/{PG_USER}"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], cwd=tmp_dir, capture_output=True)


def server_env(db_url: str, home: Path, port: int) -> dict[str, str]:
    """The environment of `prefect server start` on db_url, with its UI at port."""
    api_url = f"http://127.0.0.1:{port}/api"
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": db_url.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        ),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api_url,  # the server's own services talk to it
        # on a port other than 4200 the UI must be told where its API is
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_UI_API_URL": api_url,
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(SCHEDULER_LOOP_S),
    }


def healthy(api_url: str) -> bool:
    """Whether GET /api/health answers true."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200 and response.read().strip() == b"true"
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def prefect_server(db_url: str, home: Path, timeout_s: float = 180) -> Iterator[str]:
    """`prefect server start` on db_url (PostgreSQL) at a free port of 127.0.0.1.

    Its PREFECT_HOME (UI build, log) is home; the scheduler loops every SCHEDULER_LOOP_S
    seconds, so a cron that is due in a test gets its run. Waits until /api/health answers;
    a server that exits or stays silent raises with the tail of its log. Terminated at exit.

    Yields:
        the API URL, http://127.0.0.1:PORT/api (the UI is the same URL without /api)
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).parent / "prefect"
    log_path = home / "server.log"
    cmd = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=server_env(db_url, home, port), stdout=log,
                                stderr=subprocess.STDOUT, cwd=home)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not healthy(api_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited ({proc.returncode})" if proc.poll() is not None else (
                    f"did not answer {api_url}/health within {timeout_s:.0f} s")  # fmt: skip
                tail = log_path.read_text()[-4000:]
                raise RuntimeError(f"prefect server {why}; the end of {log_path}:\n{tail}")
            time.sleep(0.5)
        yield api_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
