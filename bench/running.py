"""What the benchmarks share about a running system (`make run`): where it is, logging in, wrk, /proc figures."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def running_system(data_dir: Path) -> dict[str, Any]:
    """The running system's runtime.json (its API, database, processes); exits when there is none."""
    runtime_file = data_dir / "runtime.json"
    if not runtime_file.exists():
        sys.exit(f"no running system found ({runtime_file} is missing): start it with `make run`")
    runtime: dict[str, Any] = json.loads(runtime_file.read_text())
    return runtime


def memory_kb(pid: int) -> dict[str, int]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a process, in kB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            figures[key] = int(value.split()[0])
    return figures


def cpu_seconds_by_tree(roots: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) of each root process and all its descendants, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    totals = {}
    for name, root in roots.items():
        tree, frontier = {root}, [root]
        while frontier:
            current = frontier.pop()
            children = [pid for pid, ppid in parent.items() if ppid == current and pid not in tree]
            tree.update(children)
            frontier.extend(children)
        totals[name] = sum(cpu.get(pid, 0.0) for pid in tree)
    return totals


def log_in(url: str, username: str, password: str) -> str:
    """An access token for the benchmark's requests."""
    request = urllib.request.Request(
        f"{url}/api/v1/auth/login",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(json.load(response)["access_token"])
    except urllib.error.HTTPError as exc:
        sys.exit(f"login as {username!r} failed ({exc.code}); pass --username/--password of an admin")


def run_wrk(
    url: str, script: str, env: dict[str, str], connections: int, seconds: int, threads: int
) -> dict[str, float]:
    """Drive ``url`` with the wrk ``script`` (one of bench/*.lua, which report JSON): its figures."""
    args = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / script),
        url,
    ]
    environment = {**os.environ, "WRK_REPORT": str(HERE / "wrk_report.lua"), **env}
    out = subprocess.run(args, env=environment, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("{"))
    return dict(json.loads(line))


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p99 of ``values``, rounded to 0.01."""
    ordered = sorted(values)
    return {f"p{q}": round(ordered[min(len(ordered) - 1, len(ordered) * q // 100)], 2) for q in (50, 99)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat: how contended a run was."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-dir (where runtime.json is), --username and --password (who the requests are made as)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("PIPELINE_DATA_DIR", ".data")),
        help="data directory of the running system (its runtime.json names the parts)",
    )
    parser.add_argument(
        "--username",
        default=os.environ.get("PIPELINE_ADMIN_USERNAME", "admin"),
        help="who the requests are made as (default: PIPELINE_ADMIN_USERNAME or admin)",
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("PIPELINE_ADMIN_PASSWORD", ""),
        help="their password (default: PIPELINE_ADMIN_PASSWORD)",
    )


def system_and_token(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The running system named by ``args`` (add_system_arguments) and an access token; exits without wrk."""
    if shutil.which("wrk") is None:
        sys.exit("needs wrk (Debian package wrk; `make system-deps` installs it)")
    runtime = running_system(args.data_dir)
    return runtime, log_in(runtime["api"], args.username, args.password)
