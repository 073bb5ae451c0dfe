"""Debian's `redis-server` on loopback, with an append-only file so a restart finds the data again."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis


def binary() -> str:
    """Path of `redis-server`; a clear error naming the Debian package when it is missing."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no `redis-server` on PATH: install the Debian package `redis-server`")
    return found


def server_command(home: Path, port: int) -> list[str]:
    """`redis-server` in the foreground on 127.0.0.1:port, keeping its append-only file in home."""
    # --save '' turns RDB snapshots off: the append-only file alone is the durable copy.
    return [
        *(binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(home)),
        *("--appendonly", "yes", "--save", "", "--daemonize", "no"),
    ]


def url(port: int) -> str:
    """The connection URL of database 0."""
    return f"redis://127.0.0.1:{port}/0"


def server_ready(port: int) -> bool:
    """True once the server answers PING."""
    client = redis.Redis.from_url(url(port), socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
