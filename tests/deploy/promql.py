"""Helpers for the deploy/ checks: the metric names a real server exports,
the metric names a PromQL expression reads, and PromQL syntax via promtool."""

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}


def fail(message):
    raise SystemExit("FAIL: " + message)


def require_tool(name, package):
    # /usr/sbin too: nginx lives there and is not on every user's PATH.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not path:
        fail("%s not found: install Debian's %s (scripts/install-deps.sh does)" % (name, package))
    return path


def exported_metric_names(build_dir, source_dir):
    """Starts the real server on the shipped model (free ports), makes one
    request so that every labelled family has a child, scrapes /metrics and
    returns every sample name it may expose (histograms: _bucket/_sum/_count)."""
    server = os.path.join(build_dir, "server", "matformer-server")
    cli = os.path.join(build_dir, "tools", "matformer-cli")
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [server, "--model_dir=" + os.path.join(source_dir, "models", "default"),
             "--tiers=" + os.path.join(source_dir, "deploy", "tiers.json"), "--port=0", "--metrics_port=0"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            ports = {}
            end = time.time() + 60
            while len(ports) < 2:
                log.seek(0)
                text = log.read()
                for kind, port in re.findall(r"(listening|metrics) on \S+:(\d+)", text):
                    ports[kind] = int(port)
                if process.poll() is not None or time.time() > end:
                    fail("matformer-server did not start:\n" + text)
                time.sleep(0.1)
            subprocess.run([cli, "generate", "--target=127.0.0.1:%d" % ports["listening"], "--prompt=And God said",
                            "--max_new_tokens=4", "--tier=batch", "--deadline=30s"],
                           check=True, stdout=subprocess.DEVNULL)
            text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % ports["metrics"], timeout=10).read().decode()
        finally:
            process.terminate()
            process.wait(60)
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if kind in ("histogram", "summary"):
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    if not any(n.startswith("matformer_") for n in names):
        fail("the server's /metrics has no matformer_ metrics:\n" + text[:2000])
    return names


def metric_names(expr):
    """Metric names read by a PromQL expression (selectors, not functions or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                     # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                    # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def check_promql_syntax(exprs, promtool):
    """Parses every expression with Prometheus' own parser (promtool check rules)."""
    import yaml
    rules = {"groups": [{"name": "check", "rules": [{"record": "check:expr_%d" % i, "expr": e}
                                                      for i, e in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        result = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if result.returncode != 0:
        fail("promtool rejects PromQL:\n%s%s" % (result.stdout, result.stderr))


def recorded_names(rules_path):
    import yaml
    with open(rules_path) as f:
        rules = yaml.safe_load(f)
    return {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
