"""Child processes of `pipeline run`: how to start one, and the secret they share (runtime, not CLI)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path


def ensure_secret_key(data_dir: Path) -> str:
    """The embedded default: a random key generated once and kept beside the data."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def python_command(*args: str) -> list[str]:
    """How to start another `pipeline` subcommand with this interpreter."""
    return [sys.executable, "-m", "infra.cli", *args]


def spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own, appending its output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
