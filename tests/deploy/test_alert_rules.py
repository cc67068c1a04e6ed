"""The alert rules, their unit tests, the scrape config and the dashboard's queries, checked by
promtool (Debian package `prometheus`, /usr/bin/promtool). A missing promtool FAILS these tests:
install it with `apt-get install -y prometheus`."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "qlane.json"
INSTALL_HINT = (
    "promtool not found: install the Debian package `prometheus` (apt-get install -y prometheus)"
)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool") or (
        "/usr/bin/promtool" if pathlib.Path("/usr/bin/promtool").exists() else None
    )
    assert path, INSTALL_HINT  # fail, never skip: the alert rules must stay tested
    return path


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_alert_rules_are_valid(promtool: str) -> None:
    out = run(promtool, "check", "rules", "deploy/prometheus/alerts.yml").stdout
    assert "SUCCESS" in out


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    out = run(promtool, "test", "rules", "deploy/prometheus/alerts_test.yml").stdout
    assert "SUCCESS" in out and "FAILED" not in out


def test_scrape_config_is_valid(promtool: str) -> None:
    run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")


def test_dashboard_queries_parse(promtool: str, tmp_path: pathlib.Path) -> None:
    """Every dashboard query, with Grafana's range variables replaced, is valid PromQL."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert len(exprs) >= 15
    rules = {
        "groups": [{
            "name": "dashboard",
            "rules": [
                {"record": f"qlane:dashboard_query_{i}",
                 "expr": e.replace("$__rate_interval", "5m").replace("$__range", "1h")}
                for i, e in enumerate(exprs)
            ],
        }]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run(promtool, "check", "rules", str(path))


def test_a_broken_rule_makes_promtool_fail(promtool: str, tmp_path: pathlib.Path) -> None:
    """The checks above would notice: a rule whose expected alert is wrong fails."""
    (tmp_path / "alerts.yml").write_text(
        (PROMETHEUS / "alerts.yml").read_text().replace("> 1000", "> 5000")
    )
    (tmp_path / "alerts_test.yml").write_text((PROMETHEUS / "alerts_test.yml").read_text())
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "QlaneConsumerLagHigh" in result.stdout + result.stderr


def test_every_label_an_alert_matches_on_is_a_label_of_its_metric() -> None:
    """QlaneJobsLostToBackend matched `error_class` on qlane_dead_letters_total, whose label is
    `reason`: it could never fire, and its unit test, fed series with the same wrong label,
    passed (a red-team run)."""
    import re

    from streams.ops import metrics

    labels = {}
    for collector in list(metrics.REGISTRY._collector_to_names):
        for name in metrics.REGISTRY._collector_to_names[collector]:
            labels[name] = set(getattr(collector, "_labelnames", ()))
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    checked = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = " ".join(str(rule["expr"]).split())
            for metric, matchers in re.findall(r"(qlane_\w+)\s*\{([^}]*)\}", expr):
                names = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
                known = labels.get(metric, set()) | {"instance", "job"}
                assert names <= known, (rule["alert"], metric, names - known)
                checked += 1
    assert checked >= 3
