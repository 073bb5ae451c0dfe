"""Log lines: JSON with the request's id and actor; a repeated condition written a bounded number of times."""

from __future__ import annotations

import io
import json
import logging

import pytest

from infra.runtime.logs import ContextFilter, JsonFormatter, RepeatFilter, actor_var, configure_logging, request_id_var
from infra.runtime.settings import MonitoringSettings, SettingsError


def capture(*filters: logging.Filter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    for f in filters:
        handler.addFilter(f)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_json_lines_name_the_request_and_the_actor() -> None:
    logger, stream = capture(ContextFilter())
    request_token, actor_token = request_id_var.set("req-42"), actor_var.set("alice(admin)")
    try:
        logger.info("ingested %s", "x")
    finally:
        request_id_var.reset(request_token)
        actor_var.reset(actor_token)
    logger.warning("outside a request")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "ingested x" and first["level"] == "INFO"
    assert first["request_id"] == "req-42" and first["actor"] == "alice(admin)"
    assert "request_id" not in second and second["message"] == "outside a request"


def test_a_repeated_condition_is_written_burst_times_per_window_then_summarized() -> None:
    now = [1000.0]
    logger, stream = capture(RepeatFilter(window=60.0, burst=3, clock=lambda: now[0]))
    line = "partition %s: stored position %s is before the batch; reading from it"
    for offset in range(50):
        logger.info(line, 0, offset)
        now[0] += 0.5  # 50 in 25 s: one window
    logger.info("another condition")
    lines = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert len(lines) == 4  # three of the repeated line, then the other one
    now[0] += 60.0
    logger.info(line, 0, 99)
    last = json.loads(stream.getvalue().splitlines()[-1])["message"]
    assert last.startswith("partition 0: stored position 99") and "47 more like this" in last


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(SettingsError):
        configure_logging(MonitoringSettings(log_format="xml"))
