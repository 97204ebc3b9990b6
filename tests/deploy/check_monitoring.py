#!/usr/bin/env python3
"""Checks deploy/docker-compose.yml, the Prometheus configuration and the
Grafana dashboard:

* promtool check config (and the rule files it names);
* every dashboard expression parses (promtool) and reads only metrics that a
  real matformer-server exports (scraped from one started here) or that the
  recording rules define; the datasource uid and provisioning paths agree;
* the Compose file's services, mounts and scrape target fit together.

There is no Docker engine here, so Compose itself is checked structurally
(PyYAML), not by `docker compose config`.
"""

import argparse
import json
import os
import sys

from promql import check_promql_syntax, exported_metric_names, fail, metric_names, recorded_names, require_tool

# Grafana's interval variables, replaced by a duration for promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def load_yaml(path):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def dashboard_exprs(dashboard, uid):
    exprs = []
    ids = [panel.get("id") for panel in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        fail("dashboard panel ids repeat: %s" % ids)
    for panel in dashboard["panels"]:
        title = panel.get("title", "?")
        targets = panel.get("targets") or []
        if not targets:
            fail("panel '%s' has no query" % title)
        for target in targets:
            for source in (panel.get("datasource"), target.get("datasource")):
                if source and source.get("uid") != uid:
                    fail("panel '%s' uses datasource %s, not the provisioned uid '%s'" % (title, source, uid))
            expr = target.get("expr", "").strip()
            if not expr:
                fail("panel '%s' has a target without expr" % title)
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if "$" in expr:
                fail("panel '%s': unknown variable in %s" % (title, expr))
            exprs.append((title, expr))
    return exprs


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build_dir", required=True)
    parser.add_argument("--source_dir", required=True)
    args = parser.parse_args()
    deploy = os.path.abspath(os.path.join(args.source_dir, "deploy"))
    promtool = require_tool("promtool", "prometheus")
    try:
        import yaml  # noqa: F401
    except ImportError:
        fail("PyYAML missing: install Debian's python3-yaml (scripts/install-deps.sh does)")

    # Prometheus: its own checker, rule files included.
    import subprocess
    config_path = os.path.join(deploy, "prometheus", "prometheus.yml")
    result = subprocess.run([promtool, "check", "config", config_path], capture_output=True, text=True)
    if result.returncode != 0:
        fail("promtool check config:\n%s%s" % (result.stdout, result.stderr))
    print(result.stdout.strip())
    prometheus = load_yaml(config_path)
    rules = set()
    for rule_file in prometheus.get("rule_files", []):
        rules |= recorded_names(os.path.join(os.path.dirname(config_path), rule_file))

    # Compose: the services, what they mount, what Prometheus scrapes.
    compose = load_yaml(os.path.join(deploy, "docker-compose.yml"))
    services = compose.get("services", {})
    for name in ("server", "prometheus", "grafana"):
        if name not in services:
            fail("docker-compose.yml has no '%s' service" % name)
    build = services["server"].get("build", {})
    context = os.path.normpath(os.path.join(deploy, build.get("context", ".")))
    if not os.path.isfile(os.path.join(context, build.get("dockerfile", "Dockerfile"))):
        fail("the server's build context %s has no %s" % (context, build.get("dockerfile", "Dockerfile")))
    mounts = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                if not os.path.exists(os.path.join(deploy, source)):
                    fail("service %s mounts %s, which is not in deploy/" % (name, source))
                mounts[(name, target)] = os.path.normpath(os.path.join(deploy, source))
    if mounts.get(("prometheus", "/etc/prometheus")) != os.path.dirname(config_path):
        fail("prometheus does not mount deploy/prometheus at /etc/prometheus")
    published = {p.split(":")[-1] for p in services["server"].get("ports", [])}
    targets = [t for job in prometheus["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    if "server:9464" not in targets or "9464" not in published:
        fail("Prometheus must scrape server:9464 (targets %s, server ports %s)" % (targets, published))
    grace = str(services["server"].get("stop_grace_period", "10s"))
    if not grace.endswith("s") or int(grace[:-1]) <= 30:
        fail("the server's stop_grace_period (%s) must exceed the 30s drain timeout" % grace)

    # Grafana provisioning: the datasource uid and the dashboards path.
    grafana_dir = os.path.join(deploy, "grafana")
    datasources = load_yaml(os.path.join(grafana_dir, "provisioning", "datasources", "prometheus.yml"))["datasources"]
    uid = datasources[0]["uid"]
    if datasources[0]["url"] != "http://prometheus:9090":
        fail("the Grafana datasource does not point at the prometheus service: %s" % datasources[0]["url"])
    provider = load_yaml(os.path.join(grafana_dir, "provisioning", "dashboards", "matformer.yml"))["providers"][0]
    dashboards_dir = mounts.get(("grafana", provider["options"]["path"]))
    if dashboards_dir != os.path.join(grafana_dir, "dashboards"):
        fail("Grafana's dashboard provider reads %s, which Compose does not mount from deploy/grafana/dashboards"
             % provider["options"]["path"])

    # The dashboard: parses, expressions parse, metrics exist.
    dashboard_path = os.path.join(dashboards_dir, "matformer.json")
    with open(dashboard_path) as f:
        try:
            dashboard = json.load(f)
        except json.JSONDecodeError as error:
            fail("%s: %s" % (dashboard_path, error))
    exprs = dashboard_exprs(dashboard, uid)
    check_promql_syntax([expr for _, expr in exprs], promtool)
    exported = exported_metric_names(args.build_dir, args.source_dir)
    known = exported | rules
    for title, expr in exprs:
        names = metric_names(expr)
        if not names:
            fail("panel '%s' reads no metric: %s" % (title, expr))
        unknown = names - known
        if unknown:
            fail("panel '%s' reads %s, which the server does not export (%s)" % (title, sorted(unknown), expr))
    used = set().union(*(metric_names(e) for _, e in exprs))
    print("dashboard: %d panels, %d expressions, %d metrics, all exported by the server: %s"
          % (len(dashboard["panels"]), len(exprs), len(used), " ".join(sorted(used))))
    print("check_monitoring: PASS")


if __name__ == "__main__":
    main()
