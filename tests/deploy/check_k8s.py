#!/usr/bin/env python3
"""Checks deploy/k8s without a cluster:

1. schema: every object against the Kubernetes OpenAPI schemas bundled in
   npm's kubernetes-models (tests/deploy/k8s-schema, installed by
   scripts/install-deps.sh): types, required fields, enums. Like kubeconform
   without -strict, unknown field names are not errors there, so step 2
   checks the fields that matter by name;
2. consistency: selectors match pod labels, probes are grpc on the gRPC
   port, the startup probe covers loading, termination outlasts preStop +
   drain, resources are set, the HPA's metrics are served by a
   prometheus-adapter rule whose queries parse (promtool) and read metrics a
   real server exports, the proxy's nginx configuration passes `nginx -t`;
3. deploy/prometheus/kubernetes.yml: promtool check config. Debian's promtool
   is built without Kubernetes service discovery, so the kubernetes_sd_configs
   block is checked here by structure and replaced by a static target for promtool.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import tempfile

from promql import check_promql_syntax, exported_metric_names, fail, metric_names, require_tool

SERVER = "matformer-server"


def load(path):
    import yaml
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def seconds(flag_value):
    match = re.fullmatch(r"(\d+)s", flag_value)
    if not match:
        fail("cannot read duration %r" % flag_value)
    return int(match.group(1))


def check_schema(objects, schema_dir):
    node = require_tool("node", "nodejs")
    if not os.path.isfile(os.path.join(schema_dir, "node_modules", "kubernetes-models", "package.json")):
        fail("kubernetes-models missing in %s: run scripts/install-deps.sh (npm ci)" % schema_dir)
    items = [{"file": os.path.relpath(f), "object": o} for f, o in objects if o.get("kind") != "Kustomization"]
    result = subprocess.run([node, os.path.join(schema_dir, "validate.mjs")], input=json.dumps(items),
                            capture_output=True, text=True, cwd=schema_dir)
    print(result.stdout.strip())
    if result.returncode != 0:
        fail("schema validation failed\n" + result.stderr)


def by_kind(objects, kind, name=None):
    found = [o for _, o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if not found:
        fail("no %s%s in deploy/k8s" % (kind, " " + name if name else ""))
    return found


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_server(objects):
    deployment = by_kind(objects, "Deployment", SERVER)[0]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    if not selects(deployment["spec"]["selector"]["matchLabels"], labels):
        fail("the Deployment's selector does not match its pod labels")
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("grpc") != 50051 or ports.get("metrics") != 9464:
        fail("container ports must be grpc 50051 and metrics 9464: %s" % ports)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container.get(probe)
        if not spec or spec.get("grpc", {}).get("port") != ports["grpc"]:
            fail("%s must be a grpc probe (grpc.health.v1) on port %d: %s" % (probe, ports["grpc"], spec))
    startup = container["startupProbe"]
    if startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 120:
        fail("the startup probe allows under 120 s for loading and calibration")
    drain = 30
    for arg in container.get("args", []):
        if arg.startswith("--drain_timeout="):
            drain = seconds(arg.split("=", 1)[1])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = int(pre_stop[-1]) if pre_stop and pre_stop[0].endswith("sleep") else 0
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if grace <= pre_stop_s + drain:
        fail("terminationGracePeriodSeconds %d must exceed preStop %ds + drain %ds" % (grace, pre_stop_s, drain))
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(container.get("resources", {}).get(kind, {})):
            fail("the server container needs cpu and memory %s" % kind)
    if not pod["spec"].get("securityContext", {}).get("runAsNonRoot"):
        fail("the server pod must set runAsNonRoot")
    print("server: grpc probes on %d, startup up to %ds, grace %ds > preStop %ds + drain %ds"
          % (ports["grpc"], startup["periodSeconds"] * startup["failureThreshold"], grace, pre_stop_s, drain))
    return deployment, labels, ports


def check_services(objects, server_labels, server_ports):
    headless = [s for _, s in objects if s["kind"] == "Service" and s["spec"].get("clusterIP") == "None"]
    if len(headless) != 1 or not selects(headless[0]["spec"]["selector"], server_labels):
        fail("exactly one headless Service (clusterIP: None) must select the server pods")
    for port in headless[0]["spec"]["ports"]:
        if port["targetPort"] not in server_ports and port["targetPort"] not in server_ports.values():
            fail("headless Service targets port %s, not a server container port" % port["targetPort"])
    proxy = by_kind(objects, "Deployment", "matformer-proxy")[0]
    proxy_labels = proxy["spec"]["template"]["metadata"]["labels"]
    fronts = [s for _, s in objects if s["kind"] == "Service" and s["spec"].get("clusterIP") != "None"
              and selects(s["spec"]["selector"], proxy_labels)]
    if not fronts:
        fail("no regular Service selects the proxy pods")
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        if not selects(pdb["spec"]["selector"]["matchLabels"], server_labels):
            fail("the PodDisruptionBudget does not select the server pods")
    return headless[0], proxy


def check_proxy(objects, headless, proxy):
    nginx = require_tool("nginx", "nginx")
    config_map = by_kind(objects, "ConfigMap", "matformer-proxy")[0]
    volumes = {v["name"]: v for v in proxy["spec"]["template"]["spec"]["volumes"]}
    mounts = proxy["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    if not any(volumes[m["name"]].get("configMap", {}).get("name") == "matformer-proxy"
               and m["mountPath"] == "/etc/nginx/templates" for m in mounts):
        fail("the proxy does not mount its ConfigMap at /etc/nginx/templates")
    (name, template), = config_map["data"].items()
    if not name.endswith(".template"):
        fail("the proxy's ConfigMap key must end in .template (the nginx image renders those)")
    if headless["metadata"]["name"] + ".${POD_NAMESPACE}.svc" not in template:
        fail("the proxy does not pass to the headless Service %s" % headless["metadata"]["name"])
    # Render as the nginx image's entrypoint would (envsubst of the defined variables) and test it.
    rendered = template.replace("${NGINX_LOCAL_RESOLVERS}", "127.0.0.1").replace("${POD_NAMESPACE}", "default")
    if "${" in rendered:
        fail("the proxy template uses an environment variable the pod does not set")
    with tempfile.TemporaryDirectory() as prefix:
        with open(os.path.join(prefix, "matformer.conf"), "w") as f:
            f.write(rendered)
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write("pid %s/nginx.pid;\nevents {}\nhttp {\n  include %s/matformer.conf;\n}\n" % (prefix, prefix))
        result = subprocess.run([nginx, "-t", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"),
                                 "-e", os.path.join(prefix, "error.log")], capture_output=True, text=True)
    if result.returncode != 0:
        fail("nginx -t rejects the proxy configuration:\n" + result.stderr)
    print("proxy: nginx -t accepts the rendered %s" % name)


def adapter_rules(monitoring_objects):
    import yaml
    config_map = [o for _, o in monitoring_objects if o["kind"] == "ConfigMap"][0]
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def check_hpa(objects, monitoring_objects, deployment, exported, promtool):
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[0]
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        fail("the HPA scales %s/%s, not the server Deployment" % (target["kind"], target["name"]))
    if hpa["spec"]["minReplicas"] < 2:
        fail("minReplicas below 2 leaves no replica during a drain")
    served = {}
    for rule in adapter_rules(monitoring_objects):
        series = metric_names(rule["seriesQuery"])
        pattern, name = rule["name"]["matches"], rule["name"]["as"]
        if not any(re.search(pattern, s) for s in series):
            fail("adapter rule %s: name.matches %r matches none of %s" % (name, pattern, series))
        if set(rule["resources"]["overrides"]) != {"namespace", "pod"}:
            fail("adapter rule %s must map the namespace and pod labels" % name)
        # The adapter's template, filled in as it would be for one pod.
        query = (rule["metricsQuery"].replace("<<.Series>>", sorted(series)[0])
                 .replace("<<.LabelMatchers>>", 'namespace="default",pod="p"').replace("<<.GroupBy>>", "pod"))
        check_promql_syntax([query], promtool)
        unknown = (metric_names(query) | series) - exported
        if unknown:
            fail("adapter rule %s reads %s, which the server does not export" % (name, sorted(unknown)))
        served[name] = rule
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] != "Pods":
            fail("HPA metric of type %s: expected Pods metrics from the adapter" % metric["type"])
        name = metric["pods"]["metric"]["name"]
        if name not in served:
            fail("the HPA scales on %s, which no prometheus-adapter rule serves (%s)" % (name, sorted(served)))
    print("hpa: %s served by prometheus-adapter rules over exported metrics"
          % ", ".join(m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]))


def check_kustomization(k8s_dir, objects):
    kustomization = [o for f, o in objects if o["kind"] == "Kustomization"]
    if len(kustomization) != 1:
        fail("deploy/k8s needs one kustomization.yaml")
    listed = set(kustomization[0]["resources"])
    present = {os.path.basename(p) for p in glob.glob(os.path.join(k8s_dir, "*.yaml"))} - {"kustomization.yaml"}
    if listed != present:
        fail("kustomization.yaml lists %s, deploy/k8s has %s" % (sorted(listed), sorted(present)))


def check_scrape_config(source_dir, promtool):
    import yaml
    path = os.path.abspath(os.path.join(source_dir, "deploy", "prometheus", "kubernetes.yml"))
    with open(path) as f:
        config = yaml.safe_load(f)
    job = config["scrape_configs"][0]
    if job.get("kubernetes_sd_configs") != [{"role": "pod"}]:
        fail("%s: the job must discover pods (kubernetes_sd_configs: [{role: pod}])" % path)
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    if not {"namespace", "pod", "__address__"} <= targets:
        fail("%s: relabelling must set namespace, pod and __address__ (sets %s)" % (path, targets))
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
    with tempfile.TemporaryDirectory() as directory:
        copy = os.path.join(directory, "kubernetes.yml")
        with open(copy, "w") as f:
            yaml.safe_dump(config, f)
        for rule_file in config.get("rule_files", []):
            os.symlink(os.path.join(os.path.dirname(path), rule_file), os.path.join(directory, rule_file))
        result = subprocess.run([promtool, "check", "config", copy], capture_output=True, text=True)
    if result.returncode != 0:
        fail("promtool check config %s (pod discovery swapped for a static target):\n%s%s"
             % (path, result.stdout, result.stderr))
    print("prometheus: %s passes promtool (pod discovery checked by structure)" % os.path.relpath(path))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build_dir", required=True)
    parser.add_argument("--source_dir", required=True)
    args = parser.parse_args()
    try:
        import yaml  # noqa: F401
    except ImportError:
        fail("PyYAML missing: install Debian's python3-yaml (scripts/install-deps.sh does)")
    promtool = require_tool("promtool", "prometheus")
    k8s_dir = os.path.abspath(os.path.join(args.source_dir, "deploy", "k8s"))
    objects = [(p, o) for p in sorted(glob.glob(os.path.join(k8s_dir, "*.yaml"))) for o in load(p)]
    monitoring = [(p, o) for p in sorted(glob.glob(os.path.join(k8s_dir, "monitoring", "*.yaml"))) for o in load(p)]
    for path, obj in objects + monitoring:
        for key in ("apiVersion", "kind"):
            if key not in obj:
                fail("%s: an object without %s" % (path, key))
    check_schema(objects + monitoring, os.path.join(os.path.dirname(os.path.abspath(__file__)), "k8s-schema"))
    check_kustomization(k8s_dir, objects)
    deployment, labels, ports = check_server(objects)
    headless, proxy = check_services(objects, labels, ports)
    check_proxy(objects, headless, proxy)
    exported = exported_metric_names(args.build_dir, args.source_dir)
    check_hpa(objects, monitoring, deployment, exported, promtool)
    check_scrape_config(args.source_dir, promtool)
    print("check_k8s: PASS")


if __name__ == "__main__":
    main()
