"""deploy/grafana: the dashboard asks only for series core/metrics.py exports, and the manifests ship it.

The dashboard's PromQL is checked against the sample names the service really exposes (counters with
``_total``, histograms with ``_bucket``/``_sum``/``_count``), read from the collectors of
``policyopt.core.metrics``, so renaming a metric without the dashboard fails here. The rendered overlays
carry the dashboard ConfigMap and the Prometheus scrape annotations of every pod that serves ``/metrics``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from prometheus_client import Counter, Gauge, Histogram
from support.manifests import KUSTOMIZE_ROOT, OVERLAYS, REPO, Manifest, config_map_data, named, render

from policyopt.core import metrics

DASHBOARD = REPO / "deploy" / "grafana" / "policyopt-dashboard.json"
KUBERNETES_VERSION = "1.31.0"  # as in test_manifests.py
METRIC_NAME = re.compile(r"\bpolicyopt_[a-z_]+")
# Processes that serve /metrics on POLICYOPT_HTTP_PORT (core/metrics.serve_metrics, the server's HTTP app).
SCRAPED = ("policyopt-server", "policyopt-rollout-worker", "policyopt-trainer")
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


class _StubQueues(metrics.QueueCollector):
    """The server's scrape-time queue collector with one run and no Redis."""

    def __init__(self) -> None:
        super().__init__(r=None)  # type: ignore[arg-type]

    def _read(self) -> tuple[dict[str, tuple[int, int, int, int]], int]:
        return {"run": (1, 2, 3, 4)}, 5


def exported_samples() -> dict[str, str]:
    """Every sample name the service exports -> the metric family it belongs to."""
    families = [
        family
        for value in vars(metrics).values()
        if isinstance(value, Counter | Gauge | Histogram)
        for family in value.describe()
    ]
    families += list(_StubQueues().collect())
    samples = {}
    for family in families:
        for suffix in SAMPLE_SUFFIXES[family.type]:
            samples[family.name + suffix] = family.name
    return samples


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]  # collapsed rows nest their panels
    return found


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query, the template variables' included."""
    exprs = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append((f"${variable['name']}", query["query"] if isinstance(query, dict) else query))
    return exprs


def test_the_collectors_are_read(dashboard: dict[str, Any]) -> None:
    samples = exported_samples()
    assert "policyopt_rpc_requests_total" in samples
    assert "policyopt_rpc_duration_seconds_bucket" in samples
    assert "policyopt_prompts_queued" in samples and "policyopt_trainer_runs" in samples


def test_the_dashboard_is_a_grafana_dashboard_with_its_variables(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    run_id = variables["run_id"]
    assert run_id["multi"] is True
    assert "label_values(policyopt_trainer_reward_mean, run_id)" in json.dumps(run_id["query"])
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert panel["datasource"]["uid"] == target["datasource"]["uid"] == "${datasource}", panel[
                "title"
            ]


def test_every_expression_uses_only_exported_series(dashboard: dict[str, Any]) -> None:
    samples = exported_samples()
    unknown = []
    for title, expr in expressions(dashboard):
        names = METRIC_NAME.findall(expr)
        assert names, f"{title}: {expr} names no policyopt metric"
        unknown += [f"{title}: {name}" for name in names if name not in samples]
    assert not unknown, "series core/metrics.py does not export:\n" + "\n".join(unknown)


def test_counters_are_rated_and_histograms_are_read_as_quantiles(dashboard: dict[str, Any]) -> None:
    for title, expr in expressions(dashboard):
        for name in METRIC_NAME.findall(expr):
            if name.endswith("_total"):
                assert re.search(rf"(rate|increase)\({name}\b", expr), f"{title}: a raw counter {name}"
            if name.endswith("_bucket"):
                assert "histogram_quantile(" in expr and "le)" in expr.replace(" ", ""), title


@pytest.mark.parametrize(
    "family",
    [
        "policyopt_rpc_requests",
        "policyopt_rpc_duration_seconds",
        "policyopt_prompts_queued",
        "policyopt_prompts_pending",
        "policyopt_groups_queued",
        "policyopt_rollout_tokens",
        "policyopt_reward_call_duration_seconds",
        "policyopt_reward_call_errors",
        "policyopt_reward_call_retries",
        "policyopt_trainer_last_step_duration_seconds",
        "policyopt_trainer_reward_mean",
        "policyopt_trainer_optimizer_steps",
        "policyopt_adapter_versions_published",
        "policyopt_trainer_runs",
        "policyopt_redis_errors",
    ],
)
def test_the_dashboard_charts(dashboard: dict[str, Any], family: str) -> None:
    samples = exported_samples()
    charted = {samples[n] for _, e in expressions(dashboard) for n in METRIC_NAME.findall(e) if n in samples}
    assert family in charted


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {overlay: render(KUSTOMIZE_ROOT / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_ships_the_dashboard_for_the_grafana_sidecar(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    config_map = named(rendered[overlay], "ConfigMap", "policyopt-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "policyopt"
    assert json.loads(config_map["data"]["policyopt-dashboard.json"]) == json.loads(DASHBOARD.read_text())


def _http_port(container: Manifest, settings: dict[str, str]) -> int:
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return int(env.get("POLICYOPT_HTTP_PORT") or settings["POLICYOPT_HTTP_PORT"])


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", SCRAPED)
def test_every_pod_serving_metrics_is_annotated_for_scraping_on_its_http_port(
    rendered: dict[str, list[Manifest]], overlay: str, deployment: str
) -> None:
    objects = rendered[overlay]
    template = named(objects, "Deployment", deployment)["spec"]["template"]
    container = template["spec"]["containers"][0]
    port = _http_port(container, config_map_data(objects))
    annotations = template["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true", deployment
    assert annotations.get("prometheus.io/port") == str(port), deployment
    assert annotations.get("prometheus.io/path") == "/metrics", deployment
    named_ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert named_ports.get("http") == port or named_ports.get("metrics") == port, deployment
    # ... and the NetworkPolicy of the role lets Prometheus in on that port.
    policy = named(objects, "NetworkPolicy", deployment)["spec"]
    ingress_ports = {p["port"] for rule in policy.get("ingress", []) for p in rule.get("ports", [])}
    assert port in ingress_ports, deployment


def test_the_prometheus_operator_component_monitors_every_scraped_pod(tmp_path: Path) -> None:
    overlay = tmp_path / "monitored"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(KUSTOMIZE_ROOT / 'overlays' / 'gpu', overlay)}]\n"
        f"components: [{os.path.relpath(KUSTOMIZE_ROOT / 'components' / 'servicemonitor', overlay)}]\n"
    )
    objects = render(overlay)
    monitors = [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in monitors} == {"ServiceMonitor", "PodMonitor"}
    for monitor in monitors:
        assert monitor["metadata"]["namespace"] == "policyopt"
    # Every scraped pod is selected by exactly one monitor, through a port its container (or Service) names.
    service = named(objects, "Service", "policyopt-server")
    service_monitor = named(objects, "ServiceMonitor", "policyopt-server")["spec"]
    assert service_monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in service_monitor["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    pod_monitor = named(objects, "PodMonitor", "policyopt-workers")["spec"]
    for deployment in SCRAPED:
        template = named(objects, "Deployment", deployment)["spec"]["template"]
        labels = template["metadata"]["labels"]
        selected = pod_monitor["selector"]["matchLabels"].items() <= labels.items() and all(
            labels.get(e["key"]) in e["values"] for e in pod_monitor["selector"]["matchExpressions"]
        )
        assert selected == (deployment != "policyopt-server"), deployment
        if selected:
            ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
            assert {e["port"] for e in pod_monitor["podMetricsEndpoints"]} <= ports, deployment
    # The Prometheus Operator's CRDs have no schema in kubernetes_validate (it knows only the built-in API),
    # so the monitors are checked above instead; everything else still validates strictly.
    for obj in objects:
        if obj not in monitors:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_prometheus_operator_component_is_not_in_the_default_overlays(
    rendered: dict[str, list[Manifest]],
) -> None:
    for overlay in OVERLAYS:
        assert not [o for o in rendered[overlay] if o["apiVersion"].startswith("monitoring.coreos.com/")]
