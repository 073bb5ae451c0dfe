"""The monitoring settings decide where health and metrics answer (nothing connects to build the app)."""

from __future__ import annotations

from api.app import create_app
from infra.runtime.settings import load_settings

SECRET = "unit-test-secret-" + "x" * 40


def paths(**environ: str) -> set[str]:
    app = create_app(load_settings(environ={"SECRET_KEY": SECRET, **environ}))
    return {route.path for route in app.routes}


def test_health_and_metrics_follow_their_paths() -> None:
    moved = paths(PIPELINE_MONITORING_HEALTH_CHECK_PATH="/live", PIPELINE_MONITORING_METRICS_PATH="/internal/m")
    assert {"/live", "/internal/m", "/ready"} <= moved
    assert "/health" not in moved and "/metrics" not in moved
    assert {"/health", "/metrics"} <= paths()


def test_metrics_can_be_switched_off() -> None:
    assert "/metrics" not in paths(PIPELINE_MONITORING_METRICS_ENABLED="false")
