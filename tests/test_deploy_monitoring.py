"""The shipped Grafana dashboard and Prometheus alert rules: promtool checks and unit tests, every
query parses, and every series they read is one a real server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from calls import call
from conftest import ROOT, running, settings
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase
from grpcstack import AsyncBaseServer
from grpcstack.cache import cached

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "grpcstack-dashboard.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)
# grpc_client_* come from grpcstack's Client (issue 15), not from a server's registry
CLIENT_SERIES = re.compile(r"^grpc_client_")
# metric names, not the recording rules named level:metric:operations
SERIES = re.compile(r"(?<![\w:])(grpc_(?:server|client)_[a-z_]+|grpcstack_[a-z0-9_]+)(?![\w:])")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    return exprs


def concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Grafana sends it."""
    return expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$service", ".*")


def referenced_series(text: str) -> set[str]:
    return {m for m in SERIES.findall(text) if not m.endswith("_")}


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_alert_rules_unit_tests_fire_and_stay_quiet() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_alert_unit_tests_notice_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests have teeth: a p99 threshold of 1.5 s instead of 500 ms fails them."""
    broken = ALERTS.read_text().replace("p99_5m > 0.5", "p99_5m > 1.5")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts_test.yml").write_text(ALERT_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "GrpcHighLatencyP99" in result.stdout + result.stderr


def test_alert_rules_cover_the_seed_alerts() -> None:
    text = ALERTS.read_text()
    for alert, threshold in (
        ("GrpcHighLatencyP99", "> 0.5"),
        ("GrpcHighErrorRate", "> 0.01"),
        ("GrpcCacheHitRateLow", "< 0.8"),
    ):
        assert f"alert: {alert}" in text
        assert threshold in text


@needs_promtool
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each panel's PromQL (as recording rules) once the variables are filled."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": concrete(e)}
                    for i, e in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    board = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for wanted in ("request rate", "errors by code", "p99", "in flight", "hit rate per layer"):
        assert wanted in titles
    assert "rate-limit" in titles
    exprs = " ".join(dashboard_exprs())
    for q in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,"):
        assert q in exprs
    assert 'grpc_code="ResourceExhausted"' in exprs
    assert "sum by (layer)" in exprs
    # panels of one dashboard need unique ids, and every target a data source variable
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


class CachedEcho(EchoServiceBase):
    @cached(ttl=60)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        return EchoResponse(message=message.message)


class CachedEchoServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        return [CachedEcho()]


def exported_families(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
    # counters are exposed as NAME_total; histograms as NAME_bucket/_sum/_count
    for family in list(names):
        names.update({f"{family}_total", f"{family}_bucket", f"{family}_sum", f"{family}_count"})
    return names


async def test_dashboard_and_alerts_read_series_a_real_server_exports() -> None:
    server = CachedEchoServer(settings(GRPC_ENABLE_RATE_LIMITING=True))
    async with running(server):
        assert server.port is not None
        for _ in range(3):  # a miss, then hits
            out = await call("grpclib", server.port, "Echo", EchoRequest(message="hi"))
            assert out.status.name == "OK"
        exported = exported_families(generate_latest(server.metrics_registry).decode())
    wanted = referenced_series(" ".join(dashboard_exprs()) + ALERTS.read_text())
    server_side = {name for name in wanted if not CLIENT_SERIES.match(name)}
    assert {"grpc_server_handled_total", "grpcstack_cache_lookups_total"} <= server_side
    missing = sorted(server_side - exported)
    assert not missing, f"dashboard/alerts read series no server exports: {missing}"
