"""The `pipeline` command as a new operator meets it: help on every argument, the README's command table, exit codes."""

from __future__ import annotations

import argparse
import re
import socket
from pathlib import Path

import pytest

from infra.cli.main import WORKER_HELP, build_parser, main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], tuple]:
    """Every (sub)command: its parser and the help its parent gives it."""
    found: dict[tuple[str, ...], tuple] = {prefix: (parser, "the program")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                found |= {key: value for key, value in parsers(child, (*prefix, name)).items()}
                found[(*prefix, name)] = (child, helps.get(name))
    return found


PARSERS = parsers(build_parser())
LEAVES = [name for name, (parser, _) in PARSERS.items() if not parser._subparsers]


@pytest.mark.parametrize("command", list(PARSERS), ids=lambda c: " ".join(c) or "pipeline")
def test_every_command_and_argument_says_what_it_is(command: tuple[str, ...]) -> None:
    parser, summary = PARSERS[command]
    assert summary, f"`pipeline {' '.join(command)}` has no one-line help in its parent's list"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        assert action.help, f"`pipeline {' '.join(command)}`: {action.dest} has no help"


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_the_readmes_command_table_lists_each_command_with_its_options(command: tuple[str, ...]) -> None:
    rows = re.findall(r"^  \| `(pipeline [^`]+)` \|", README, re.MULTILINE)
    row = next((r for r in rows if re.match(rf"pipeline {' '.join(command)}( |$)", r)), None)
    assert row, f"the README's command table has no row for `pipeline {' '.join(command)}`"
    parser = PARSERS[command][0]
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert all(option in row for option in options), f"{row!r} lacks some of {options}"
    documented = set(re.findall(r"--[a-z-]+", row))
    assert documented <= set(options), f"{row!r} names options the command lacks: {documented - set(options)}"


def test_the_worker_choices_are_the_workers_that_exist() -> None:
    from infra.runtime.supervisor import CHILDREN
    from infra.runtime.workers import WORKERS

    assert set(WORKER_HELP) == set(WORKERS) == {args[1] for args in CHILDREN.values() if args[0] == "worker"}


def test_a_taken_port_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("PIPELINE_PORT", str(holder.getsockname()[1]))
        for command in ("run", "api"):
            assert main([command]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "PIPELINE_PORT" in err and "in use" in err
    assert not (tmp_path / "data").exists()  # refused before anything was started


def test_unknown_read_model_names_the_read_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["projections", "rebuild", "--only", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "no read model named bogus" in err and "conversations" in err


def test_blobs_check_without_a_system_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DATABASE_URL", "PIPELINE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path))  # no runtime.json there
    with pytest.raises(SystemExit, match="missing settings: DATABASE_URL"):  # exit status 1, no 30 s wait
        main(["blobs", "check"])


def test_a_reader_that_stops_early_is_no_error() -> None:
    """`pipeline settings | head -1`: the closed pipe is neither an unreachable system nor a traceback."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "infra.cli", "settings"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=root,
            text=True,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_pipeline_api_names_what_it_lacks_before_starting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One line and exit status 1, not uvicorn's 40-line lifespan traceback and its exit status 3."""
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PIPELINE_PORT", "0")
    with pytest.raises(SystemExit, match="SECRET_KEY is not set"):
        main(["api"])
    monkeypatch.setenv("SECRET_KEY", "k" * 40)
    with pytest.raises(SystemExit, match="missing settings: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, REDIS_URL"):
        main(["api"])


def test_every_benchmark_option_has_help() -> None:
    """bench/*.py are run by hand too: each option's --help line says what it is (found in the source)."""
    import ast

    missing = []
    for path in sorted((Path(__file__).resolve().parents[2] / "bench").glob("*.py")):
        calls = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]
        for call in calls:
            named = isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument"
            if named and not any(keyword.arg == "help" for keyword in call.keywords):
                missing.append(f"{path.name}:{call.lineno}")
    assert not missing, f"benchmark options without help: {missing}"


def test_run_with_services_that_do_not_answer_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a free port for the API (nothing listens on port 1: refused at once)
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("PIPELINE_PORT", str(probe.getsockname()[1]))
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["run"]) == 1
    finally:  # the supervisor took Ctrl-C and SIGTERM over: give them back to pytest
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert "error: cannot reach the system" in err and "Traceback" not in err
    assert not (tmp_path / "runtime.json").exists()
