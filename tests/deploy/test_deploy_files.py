"""The deployment files parse and agree with each other and with the code: metric names,
ports, paths, environment, runbook anchors. (No Docker or Kubernetes needed.)"""

from __future__ import annotations

import json
import pathlib
import re
import tomllib

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.ops import metrics
from streams.settings import Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
SCRAPE = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "qlane.json"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
OPERATIONS = ROOT / "docs" / "operations.md"
METRIC = re.compile(r"\bqlane_[a-z0-9_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_yaml(path: pathlib.Path):
    return yaml.safe_load(path.read_text())


def k8s_documents() -> dict[tuple[str, str], dict]:
    documents = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                documents[(doc["kind"], doc["metadata"]["name"])] = doc
    return documents


@pytest.fixture(scope="module")
def defined_series() -> set[str]:
    """Every series name the metrics module can expose (histograms with their suffixes)."""
    names = set()
    for family in text_string_to_metric_families(metrics.render_metrics().decode()):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


# --- every file parses ------------------------------------------------------------------------
def test_every_yaml_file_parses() -> None:
    paths = [COMPOSE, *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]
    assert len(paths) >= 12
    for path in paths:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents, f"{path} is empty"


def test_dashboard_json_parses_with_unique_panel_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "qlane-overview"


# --- metric names: alerts and dashboard use only defined metrics ----------------------------------
def test_every_metric_in_the_alerts_is_defined(alert_rules, defined_series) -> None:
    used = {name for rule in alert_rules for name in METRIC.findall(rule["expr"])}
    assert used, "the alerts use no qlane metric?"
    assert used <= defined_series, f"undefined: {sorted(used - defined_series)}"


def test_every_metric_in_the_dashboard_is_defined(defined_series) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in METRIC.findall(target["expr"])
    }
    assert used <= defined_series, f"undefined: {sorted(used - defined_series)}"
    # the dashboard shows rate, errors and duration per stage, cost, drift and lag
    for wanted in ("qlane_jobs_total", "qlane_stage_duration_seconds_bucket",
                   "qlane_cost_usd_total", "qlane_drift_statistic", "qlane_consumer_lag"):
        assert wanted in used


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    uids = {d["uid"] for d in datasources["datasources"]}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids


# --- alerts: required ones, labels, tests, runbooks -----------------------------------------------
REQUIRED_ALERTS = {
    "QlaneConsumerLagHigh", "QlaneDeadLetterRateHigh", "QlaneErrorRatioHigh", "QlaneDriftAlarm",
    "QlaneBudgetLow", "QlaneBudgetBurnFast", "QlaneBreakerOpen", "QlaneNoProgress",
}


def test_required_alerts_exist_with_severity_and_runbook(alert_rules) -> None:
    names = {rule["alert"] for rule in alert_rules}
    assert REQUIRED_ALERTS <= names
    for rule in alert_rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        assert "workflow_id" not in rule["expr"]


def test_every_alert_is_tested_firing_and_not_firing(alert_rules) -> None:
    tests = load_yaml(ALERT_TESTS)
    assert tests["rule_files"] == ["alerts.yml"]
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules}
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def _anchors(markdown: str) -> set[str]:
    """GitHub heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_runbook_link_has_a_section_in_operations_md(alert_rules) -> None:
    anchors = _anchors(OPERATIONS.read_text())
    for rule in alert_rules:
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"


# --- compose ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def test_compose_runs_kafka_in_kraft_mode(compose) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert f"{env['KAFKA_NODE_ID']}@kafka:9093" in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert not any("zookeeper" in name for name in compose["services"])
    assert "healthcheck" in kafka


def _workers(compose) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if n.startswith("worker")}


def test_compose_workers_build_the_dockerfile_and_talk_to_kafka(compose) -> None:
    workers = _workers(compose)
    assert len(workers) == 2
    ports = set()
    for service in workers.values():
        build = service["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        env = service["environment"]
        assert "kafka:9092" in env["QLANE_BROKER"].split(",")
        assert env["QLANE_PROFILE"] == "kafka"
        assert env["QLANE_WEB_HOST"] == "0.0.0.0"
        port = int(env["QLANE_WEB_PORT"])
        assert f"{port}:{port}" in service["ports"]
        ports.add(port)
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        Settings(**{k.removeprefix("QLANE_").lower(): v for k, v in env.items()})  # valid
    assert len(ports) == 2, "workers need distinct web ports"


def test_compose_topic_step_uses_the_project_topic_creation(compose) -> None:
    topics = compose["services"]["topics"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    code = topics["entrypoint"][-1]
    compile(code, "<topics>", "exec")
    from streams.kafka.topics import ensure_topics  # noqa: F401  the one-liner imports it

    assert "ensure_topics" in code


def test_prometheus_scrapes_every_compose_worker(compose) -> None:
    scrape = load_yaml(SCRAPE)
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    targets = {t for c in jobs["qlane-worker"]["static_configs"] for t in c["targets"]}
    expected = {
        f"{name}:{service['environment']['QLANE_WEB_PORT']}"
        for name, service in _workers(compose).items()
    }
    assert targets == expected
    assert jobs["qlane-worker"]["metrics_path"] == "/metrics"
    assert scrape["rule_files"] == ["alerts.yml"]
    # the alert on `up` uses this job name
    assert 'job="qlane-worker"' in ALERTS.read_text()


def test_compose_mounts_exist(compose) -> None:
    for name in ("prometheus", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} missing"
    grafana_mounts = {v.split(":")[1]: v.split(":")[0]
                      for v in compose["services"]["grafana"]["volumes"]}
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/qlane.yml")["providers"][0]
    assert grafana_mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    prometheus_mounts = {v.split(":")[1] for v in compose["services"]["prometheus"]["volumes"]}
    assert "/etc/prometheus/alerts.yml" in prometheus_mounts


# --- Dockerfile ---------------------------------------------------------------------------------
def test_dockerfile_installs_the_package_and_runs_a_worker() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install \.\s*$", text, re.M)
    assert 'ENTRYPOINT ["qlane", "worker"]' in text
    assert "QLANE_WEB_HOST=0.0.0.0" in text
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["qlane"] == "streams.cli:main"
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# --- Kubernetes ---------------------------------------------------------------------------------
def test_kustomization_lists_existing_files() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource


def test_k8s_worker_deployment_is_wired_to_config_and_service() -> None:
    docs = k8s_documents()
    deployment = docs[("Deployment", "qlane-worker")]
    config = docs[("ConfigMap", "qlane-config")]["data"]
    service = docs[("Service", "qlane-worker-metrics")]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["envFrom"][0]["configMapRef"]["name"] == "qlane-config"
    Settings(**{k.removeprefix("QLANE_").lower(): v for k, v in config.items()})  # valid
    assert config["QLANE_PROFILE"] == "kafka" and config["QLANE_WEB_HOST"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["web"] == int(config["QLANE_WEB_PORT"])
    assert container["readinessProbe"]["httpGet"]["port"] == "web"
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "web"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    topics_job = docs[("Job", "qlane-topics")]["spec"]["template"]["spec"]["containers"][0]
    assert topics_job["envFrom"][0]["configMapRef"]["name"] == "qlane-config"


def test_optional_hpa_targets_the_worker_and_stays_within_partitions() -> None:
    docs = k8s_documents()
    hpa = docs[("HorizontalPodAutoscaler", "qlane-worker")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "qlane-worker"
    partitions = int(docs[("ConfigMap", "qlane-config")]["data"]["QLANE_PARTITIONS"])
    assert hpa["spec"]["maxReplicas"] <= partitions
