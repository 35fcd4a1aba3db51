"""The shipped Grafana dashboard (cocoedit/dashboards/) names only series that are exported, and every
cocoedit series is on it; the README documents every series."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

from cocoedit.cluster.runtime.launch import metrics_url
from cocoedit.telemetry import GRAFANA_DASHBOARD, SPECS, exported_names

REPO = Path(__file__).resolve().parents[2]
# a metric name in PromQL: ray_ then name characters, not a label (followed by `=` or `:`) or a function
_NAME = re.compile(r"\b(ray_[A-Za-z0-9_]+)\b(?!\s*[=~!:(])")


def dashboard_queries(path: Path = GRAFANA_DASHBOARD) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets (rows included) and template queries."""
    dash = json.loads(path.read_text())
    panels = [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return exprs


def dashboard_series(path: Path = GRAFANA_DASHBOARD) -> set[str]:
    """The series names the dashboard's queries read."""
    return {name for expr in dashboard_queries(path) for name in _NAME.findall(expr)}


def scraped_names(url: str) -> set[str]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.M)}


def test_the_dashboard_reads_only_exported_series_and_every_cocoedit_one(ray_local) -> None:  # noqa: ANN001
    named = dashboard_series()
    ours = {n for n in named if n.startswith("ray_cocoedit_")}
    assert ours - exported_names() == set(), (
        "dashboard names cocoedit series that telemetry.SPECS does not export"
    )
    # every cocoedit metric has a panel (a histogram counts when one of its series is read)
    assert {n for n in SPECS if not any(s.startswith(f"ray_{n}") for s in ours)} == set()

    # Ray's own series the dashboard reads are in the export of the suite's Ray once it runs an actor
    # and a task (ray_actors, ray_tasks); its agent reports every 10 s
    ray = ray_local
    ray_own = named - ours
    assert ray_own >= {"ray_tasks", "ray_actors", "ray_node_cpu_utilization"}

    @ray.remote(num_cpus=0)
    class Idle:
        def ping(self) -> int:
            return 1

    actor = Idle.remote()
    ray.get(actor.ping.remote())
    deadline = time.monotonic() + 40
    while not ray_own <= (seen := scraped_names(metrics_url())) and time.monotonic() < deadline:
        time.sleep(1)
    ray.kill(actor)
    assert ray_own - seen == set(), "dashboard names Ray series that Ray does not export"


def test_a_misspelt_series_is_caught(tmp_path: Path) -> None:
    """The check reads every query: a renamed metric on the dashboard shows up as unexported."""
    text = GRAFANA_DASHBOARD.read_text().replace("ray_cocoedit_policy_lag", "ray_cocoedit_policy_lag_s")
    (tmp_path / "d.json").write_text(text)
    assert dashboard_series(tmp_path / "d.json") - exported_names() - dashboard_series() == {
        "ray_cocoedit_policy_lag_s"
    }


def test_the_readme_documents_every_series() -> None:
    readme = (REPO / "README.md").read_text()
    assert [n for n in SPECS if f"`{n}`" not in readme] == []
