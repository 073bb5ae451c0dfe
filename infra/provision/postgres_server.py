"""The machine's PostgreSQL binaries running a cluster of the project's own, on loopback.

PostgreSQL refuses to run as root, so when we are root the cluster belongs to the `postgres` OS user
(created by Debian's `postgresql` package) and its processes run as that user.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BIN_ROOT = Path("/usr/lib/postgresql")
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; ".s.PGSQL.NNNNN.lock" must still fit after the directory


def bin_dir(pgdata: Path) -> Path:
    """The bin directory of the PostgreSQL that owns pgdata, or of the newest one for a new cluster."""
    versions = sorted(
        (path.parent.parent for path in BIN_ROOT.glob("*/bin/postgres")),
        key=lambda home: [int(part) for part in home.name.split(".") if part.isdigit()],
    )
    if not versions:
        raise RuntimeError(f"no PostgreSQL server under {BIN_ROOT}: install the Debian package `postgresql`")
    cluster_version = pgdata / "PG_VERSION"
    if cluster_version.is_file():
        wanted = BIN_ROOT / cluster_version.read_text().strip()
        if wanted not in versions:
            raise RuntimeError(f"{pgdata} was made by PostgreSQL {wanted.name}, which is not installed")
        return wanted / "bin"
    return versions[-1] / "bin"


def run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the `postgres` user; none when we are not root.

    Popen's user/group (not `runuser`) keep the server's PID the one we started: runuser would sit in
    between and SIGKILL its child two seconds after forwarding a SIGTERM.
    """
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "PostgreSQL will not run as root and there is no `postgres` user: install the Debian package `postgresql`"
        ) from None
    env = {**os.environ, "HOME": user.pw_dir, "USER": "postgres", "LOGNAME": "postgres"}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env}


def give_to_postgres_user(root: Path, log: Callable[[str], None]) -> None:
    """As root: hand root (recursively) to the postgres user and let it reach root through the ancestors.

    Only the search (x) bit for others is added where missing, never read, so directory listings stay
    private. pytest's /tmp/pytest-of-root is 0700, for one; pytest sets it back on its next session, which
    a running server does not mind: the postmaster works relative to its data directory once started.
    """
    owner = run_as()
    if not owner:
        return
    uid, gid = owner["user"], owner["group"]
    for path in [root, *root.rglob("*")]:
        if path.lstat().st_uid != uid:
            os.chown(path, uid, gid, follow_symlinks=False)
    for parent in root.parents:
        mode = parent.stat().st_mode
        if parent.stat().st_uid != uid and not mode & stat.S_IXOTH:
            log(f"postgres: letting the postgres user traverse {parent} (adding o+x)")
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def init_cluster(pgdata: Path, log: Callable[[str], None]) -> None:
    """Create the cluster with trust authentication for user `postgres`, unless it already exists."""
    if (pgdata / "PG_VERSION").is_file():
        return
    initdb = bin_dir(pgdata) / "initdb"
    log(f"postgres: initdb {pgdata}")
    command = [str(initdb), "-D", str(pgdata), "-A", "trust", "-U", "postgres", "--encoding=UTF8", "--locale=C.UTF-8"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=pgdata.parent, **run_as())
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"initdb failed ({done.returncode}):\n{output}")


def server_command(pgdata: Path, port: int, socket_dir: Path) -> list[str]:
    """`postgres` for the cluster in pgdata, on 127.0.0.1:port only."""
    # A too-long socket path makes the server fail to start; we connect over TCP anyway, so go without.
    sockets = str(socket_dir) if len(str(socket_dir)) <= SOCKET_PATH_MAX - 20 else ""
    return [
        str(bin_dir(pgdata) / "postgres"),
        *("-D", str(pgdata), "-p", str(port), "-k", sockets),
        *("-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "shared_buffers=128MB"),
    ]


def url(port: int, database: str = "pipeline") -> str:
    """The connection URL of a database in our cluster."""
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def server_ready(port: int) -> bool:
    """True once the server accepts a connection and answers a query."""
    try:
        with psycopg.connect(url(port, "postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def ensure_database(port: int, name: str = "pipeline") -> None:
    """Create the database `name` if it is missing."""
    with psycopg.connect(url(port, "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
