"""Finding a running system from runtime.json, and `--help` on every `pipeline` command."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.cli.main import build_parser, main
from infra.runtime.runtime_file import with_running_system

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {
    "database_url": "postgresql://127.0.0.1:5999/x",
    "kafka_bootstrap_servers": "127.0.0.1:9999",
    "redis_url": "redis://127.0.0.1:6999/0",
    "schema": "s1",
    "topic_prefix": "p1",
}


def write(data_dir: Path, pid: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "runtime.json").write_text(json.dumps({**RUNTIME, "supervisor_pid": pid}))


def test_unset_addresses_come_from_a_live_systems_runtime_file(tmp_path: Path) -> None:
    write(tmp_path, os.getpid())
    env = with_running_system({"PIPELINE_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://elsewhere:1/0"})
    assert env["DATABASE_URL"] == RUNTIME["database_url"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == RUNTIME["kafka_bootstrap_servers"]
    assert env["REDIS_URL"] == "redis://elsewhere:1/0"  # what is set wins
    assert env["PIPELINE_DATABASE_SCHEMA"] == "s1" and env["PIPELINE_KAFKA_TOPIC_PREFIX"] == "p1"


def test_a_runtime_file_whose_supervisor_is_gone_is_ignored(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write(tmp_path, int(finished.stdout))  # that process has exited
    env = with_running_system({"PIPELINE_DATA_DIR": str(tmp_path)})
    assert "DATABASE_URL" not in env


def commands(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    """Every command and subcommand the parser knows, from the parser itself (none can be missed)."""
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += commands(child, [*prefix, name])
    return found


COMMANDS = commands(build_parser(), [])


def test_the_commands_are_all_found() -> None:
    for expected in (["dlq", "skip"], ["audit", "export"], ["blobs", "check"], ["user", "set-role"]):
        assert expected in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "pipeline")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: pipeline")


BAD_ARGUMENTS = [
    ["nope"],
    ["worker", "nope"],
    ["projections", "rebuild", "--into", "bad schema;drop"],
    ["user", "create", "no spaces allowed"],
    ["user", "set-role", "someone", "root"],
    ["dlq", "list", "--limit", "many"],
    ["dlq", "retry", "abc"],
    ["audit", "verify", "--from-offset", "\u00b2"],
    ["audit", "verify", "--aggregate", "zz"],
    ["audit", "export", "--output", "/nonexistent/dir/out.jsonl"],
    ["audit", "export", "--output", "."],
    ["audit", "export", "--output", "out.jsonl", "--from", "yesterday"],
]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=" ".join)
def test_bad_arguments_are_a_usage_message_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:  # refused while parsing: nothing is connected to
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_the_console_script_is_installed() -> None:
    script = ROOT / ".venv" / "bin" / "pipeline"  # from pyproject's [project.scripts]
    answer = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert "user" in answer.stdout and "run" in answer.stdout


def test_an_unreachable_system_is_a_message_and_exit_1(tmp_path: Path) -> None:
    nowhere = {  # port 1 refuses at once: nothing is listening there
        "PIPELINE_DATA_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    env = {**os.environ, **nowhere, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "infra.cli", "user", "disable", "someone"]
    answer = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert answer.returncode == 1, answer.stderr
    assert "error: cannot reach the system" in answer.stderr and "Traceback" not in answer.stderr
