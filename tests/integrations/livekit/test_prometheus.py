"""tether's metrics in the real livekit-agents worker's Prometheus endpoint (`AgentServer(prometheus_port=)`),
scraped over HTTP while its control socket is recycled by the fake control plane and its pool runs."""

from __future__ import annotations

import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed")

import prometheus_client
from livekit.agents import worker as lk_worker
from lk_scenarios import check_scrape, metrics_scrape

import tether
from tether.integrations import livekit
from tether.integrations._livekit_metrics import prometheus_name


@pytest.fixture
def installed():
    report = livekit.install(stable_after=1.0)
    assert "metrics" in report.patched, report
    yield report
    livekit.uninstall()


@pytest.mark.timeout(180)
async def test_tether_series_next_to_livekits_labelled_like_them(installed):
    m = await metrics_scrape()
    assert m["registrations"] >= 2, m
    check_scrape(m, reconnects=True)
    names = {n for n, _, _ in m["tether"]}
    # the OpenTelemetry-to-Prometheus names: _total for counters, _seconds for a unit of s
    assert {"tether_connection_losses_total", "tether_connection_retries_total", "tether_pool_spawns_total"} <= names
    assert "tether_connection_downtime_seconds_bucket" in names
    retries = [labels for n, labels, _ in m["tether"] if n == "tether_connection_retries_total"]
    assert retries and all(r["name"] == "livekit" and r["strategy"] == "reconnect" for r in retries), retries
    # reported only while the worker ran: afterwards nothing is measured, nor scraped from the registry
    assert not tether.metrics.enabled()
    assert "tether_" not in prometheus_client.generate_latest().decode()


@pytest.mark.timeout(180)
async def test_as_shipped_the_endpoint_has_no_tether_series():
    m = await metrics_scrape()
    assert m["lk_agents"] and not m["tether"], m


def test_uninstall_takes_the_collector_out_of_the_registry():
    before = set(prometheus_client.REGISTRY._collector_to_names)
    livekit.install()
    assert len(prometheus_client.REGISTRY._collector_to_names) == len(before) + 1
    assert lk_worker.AgentServer.run.__wrapped__ is not None
    livekit.uninstall()
    assert set(prometheus_client.REGISTRY._collector_to_names) == before


def test_names_follow_the_opentelemetry_to_prometheus_rules():
    assert prometheus_name("tether.connection.downtime", "s") == "tether_connection_downtime_seconds"
    assert prometheus_name("tether.connection.connects", "{connection}") == "tether_connection_connects"
    assert prometheus_name("tether.pool.acquire.duration", "s") == "tether_pool_acquire_duration_seconds"
