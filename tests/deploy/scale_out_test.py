#!/usr/bin/env python3
"""Scale-out on loopback: two matformer-server replicas behind nginx (grpc_pass).

1. starts replicas A and B (the shipped model, free ports) and nginx with an
   upstream of both, its configuration generated into a temporary directory
   (nginx runs with -p/-c/-e there and never reads /etc/nginx);
2. runs the load generator (build/tools/matformer-loadgen, closed loop) through nginx;
3. mid-run, drains A the way a rolling update does: A leaves the upstream
   (nginx reload; Kubernetes: readiness / endpoint removal, deploy/k8s's
   preStop), then SIGTERM. A long stream that was running on A must finish;
4. stops the load and checks: every request through nginx succeeded, both
   replicas served some (their own request logs), the logs account for every
   request exactly once, A exited 0 after draining, B still serves.

Why A leaves the upstream before SIGTERM: a draining replica answers new
calls with gRPC UNAVAILABLE inside an HTTP 200 response, which nginx cannot
retry on another upstream (grpc_next_upstream only sees connection errors
and HTTP statuses). Removing it first is what makes the drain lossless.

"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

DURATION_S = 14.0      # whole load run
DRAIN_AT_S = 5.0       # when replica A is drained
MIN_REQUESTS = 30      # a run with fewer proves nothing
STARTUP_TIMEOUT_S = 60
# The load's tier mix (tools/loadgen/mix.h): short interactive calls, longer batch ones.
MIX = [
    {"name": "interactive", "share": 0.4, "max_new_tokens": 16, "prompt_tokens": [8, 32]},
    {"name": "standard", "share": 0.4, "max_new_tokens": 32, "prompt_tokens": [16, 64]},
    {"name": "batch", "share": 0.2, "max_new_tokens": 96, "prompt_tokens": [32, 128]},
]
CONCURRENCY = 6


def fail(message):
    print("scale_out_test: FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One matformer-server process; its log is the record of what it served."""

    def __init__(self, name, server, model_dir, tiers, workdir):
        self.name = name
        self.log_path = os.path.join(workdir, name + ".log")
        self.log = open(self.log_path, "w")
        env = dict(os.environ, OMP_NUM_THREADS="1")  # two replicas share the machine's cores
        # serve_smallest: under a loaded shared machine a budget may not fit;
        # this test is about routing and draining, not about budget rejections.
        self.process = subprocess.Popen(
            [server, "--model_dir=" + model_dir, "--tiers=" + tiers, "--port=0", "--metrics_port=0",
             "--over_budget=serve_smallest", "--drain_timeout=60s"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = self.metrics_port = None

    def wait_ready(self):
        end = time.time() + STARTUP_TIMEOUT_S
        while time.time() < end:
            text = self.text()
            grpc_port = re.search(r"listening on \S+:(\d+)", text)
            metrics_port = re.search(r"metrics on \S+:(\d+)", text)
            if grpc_port and metrics_port:
                self.port, self.metrics_port = int(grpc_port.group(1)), int(metrics_port.group(1))
                return
            if self.process.poll() is not None:
                fail("replica %s exited during start-up:\n%s" % (self.name, text))
            time.sleep(0.1)
        fail("replica %s not listening after %ds:\n%s" % (self.name, STARTUP_TIMEOUT_S, self.text()))

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def served(self):
        """GenerateStream request ids this replica logged with status=OK, split at
        its drain. (The load generator's start-up calls are other methods.)"""
        before, after, drained = [], [], False
        for line in self.text().splitlines():
            if ": draining" in line:
                drained = True
            match = re.search(r" request id=(\S+) method=GenerateStream .* status=(\S+)", line)
            if match and match.group(2) == "OK":
                (after if drained else before).append(match.group(1))
        return before, after

    def metrics_ok(self):
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=10).read().decode()
        series = r'^matformer_requests_total\{(?=[^}]*method="GenerateStream")(?=[^}]*code="OK")[^}]*\} (\S+)$'
        return sum(float(v) for v in re.findall(series, text, re.M))

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Nginx:
    """nginx as the current user, everything under workdir."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.conf = os.path.join(workdir, "nginx.conf")
        self.error_log = os.path.join(workdir, "nginx-error.log")
        self.process = None

    def write_config(self, upstreams):
        servers = "\n".join("    server 127.0.0.1:%d max_fails=1 fail_timeout=30s;" % port for port in upstreams)
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF % {"dir": self.workdir, "port": self.port, "servers": servers})

    def start(self, upstreams):
        self.write_config(upstreams)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            fail("nginx not installed (scripts/install-deps.sh installs Debian's nginx)")
        check = subprocess.run([nginx, "-t", "-p", self.workdir, "-c", self.conf, "-e", self.error_log],
                               capture_output=True, text=True)
        if check.returncode != 0:
            fail("nginx -t rejected the generated configuration:\n" + check.stderr)
        self.process = subprocess.Popen([nginx, "-p", self.workdir, "-c", self.conf, "-e", self.error_log],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        end = time.time() + 10
        while time.time() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                fail("nginx exited:\n" + open(self.error_log).read())
            time.sleep(0.05)
        fail("nginx not listening on %d" % self.port)

    def reload(self, upstreams):
        """New upstream list; returns once the old worker stopped taking new requests."""
        shutting_down = self.error_log_text().count("gracefully shutting down")
        self.write_config(upstreams)
        self.process.send_signal(signal.SIGHUP)
        end = time.time() + 10
        while time.time() < end:
            if self.error_log_text().count("gracefully shutting down") > shutting_down:
                return
            time.sleep(0.02)
        fail("nginx did not reload:\n" + self.error_log_text())

    def error_log_text(self):
        with open(self.error_log) as f:
            return f.read()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# HTTP/2 listener (nginx 1.22 syntax) and grpc_pass to the replicas. Round
# robin per request; a replica that refuses connections (it has exited) is
# skipped by grpc_next_upstream, which gRPC needs non_idempotent for (every
# call is a POST) -- safe here: Generate has no side effects.
NGINX_CONF = """
daemon off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/nginx-error.log notice;
events { worker_connections 512; }
http {
  log_format upstream '$time_iso8601 $request_uri $status $upstream_addr $request_time';
  access_log %(dir)s/nginx-access.log upstream;
  client_body_temp_path %(dir)s/client_body;
  proxy_temp_path %(dir)s/proxy;
  fastcgi_temp_path %(dir)s/fastcgi;
  uwsgi_temp_path %(dir)s/uwsgi;
  scgi_temp_path %(dir)s/scgi;
  upstream matformer {
%(servers)s
  }
  server {
    listen 127.0.0.1:%(port)d http2;
    location / {
      grpc_pass grpc://matformer;
      grpc_next_upstream error timeout non_idempotent;
      grpc_next_upstream_tries 2;
      grpc_read_timeout 60s;
    }
  }
}
"""


class LoadGen:
    """tools/loadgen (matformer-loadgen): closed-loop GenerateStream calls by tier for DURATION_S."""

    def __init__(self, loadgen, target, source_dir, workdir):
        self.json_out = os.path.join(workdir, "loadgen.json")
        mix = os.path.join(workdir, "mix.json")
        with open(mix, "w") as f:
            json.dump({"tiers": MIX}, f)
        self.log = open(os.path.join(workdir, "loadgen.log"), "w")
        # No warm-up: the replicas' logs count every request, so the report must too.
        self.command = [loadgen, "--target=" + target, "--mix=" + mix, "--mode=closed",
                        "--concurrency=%d" % CONCURRENCY, "--duration_s=%g" % DURATION_S, "--warmup_s=0",
                        "--drain_s=60", "--prompts=" + os.path.join(source_dir, "models", "default", "heldout.txt"),
                        "--progress=false", "--json_out=" + self.json_out]
        self.process = None

    def start(self):
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self):
        try:
            code = self.process.wait(DURATION_S + 120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            fail("matformer-loadgen did not exit")
        self.log.close()
        if code != 0 or not os.path.exists(self.json_out):
            fail("matformer-loadgen exited %d:\n%s" % (code, open(self.log.name).read()[-3000:]))
        with open(self.json_out) as f:
            return json.load(f)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def long_stream_on(replica, v1, v1_grpc, grpc):
    """A long GenerateStream straight to one replica; returns (thread, result) once its first token arrived."""
    result = {}
    first = threading.Event()

    def run():
        channel = grpc.insecure_channel("127.0.0.1:%d" % replica.port)
        try:
            stream = v1_grpc.MatFormerStub(channel).GenerateStream(
                v1.GenerateRequest(text="And God said", tier="batch", max_new_tokens=256), timeout=120)
            for message in stream:
                first.set()
                if message.HasField("summary"):
                    result["summary"] = message.summary
            result["code"] = "OK"
        except grpc.RpcError as error:
            result["code"] = "%s: %s" % (error.code().name, error.details())
        finally:
            first.set()
            channel.close()

    thread = threading.Thread(target=run)
    thread.start()
    if not first.wait(30):
        fail("the long stream on replica %s produced nothing in 30s" % replica.name)
    return thread, result


def served_counts(replicas):
    return {r.name: [len(ids) for ids in r.served()] for r in replicas}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build_dir", required=True)
    parser.add_argument("--source_dir", required=True)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(args.build_dir, "proto", "python"))
    import grpc
    from matformer.v1 import matformer_pb2 as v1, matformer_pb2_grpc as v1_grpc

    server = os.path.join(args.build_dir, "server", "matformer-server")
    loadgen = os.path.join(args.build_dir, "tools", "matformer-loadgen")
    model_dir = os.path.join(args.source_dir, "models", "default")
    tiers = os.path.join(args.source_dir, "deploy", "tiers.json")
    workdir = tempfile.mkdtemp(prefix="matformer-scale-out-")
    replicas, nginx, load = [], Nginx(workdir), None
    try:
        replicas = [Replica(name, server, model_dir, tiers, workdir) for name in ("A", "B")]
        for replica in replicas:
            replica.wait_ready()
        a, b = replicas
        nginx.start([a.port, b.port])
        print("scale_out_test: replicas A :%d, B :%d behind nginx :%d (%s)" % (a.port, b.port, nginx.port, workdir))

        load = LoadGen(loadgen, "127.0.0.1:%d" % nginx.port, args.source_dir, workdir)
        started = time.time()
        load.start()
        time.sleep(DRAIN_AT_S)

        # Drain A: work is running on it, it leaves the upstream, then SIGTERM.
        stream_thread, stream = long_stream_on(a, v1, v1_grpc, grpc)
        nginx.reload([b.port])
        a.process.send_signal(signal.SIGTERM)
        print("scale_out_test: A drained at %.1fs" % (time.time() - started))
        stream_thread.join(120)
        try:
            a_exit = a.process.wait(90)
        except subprocess.TimeoutExpired:
            fail("replica A still running 90s after SIGTERM:\n" + a.text()[-3000:])

        run = load.wait()["runs"][0]
        total = run["total"]
        print("scale_out_test: loadgen through nginx: sent %d, ok %d, errors %s; by tier %s" % (
            total["sent"], total["ok"], total["errors"],
            {t["tier"]: (t["sent"], t["ok"]) for t in run["tiers"]}))

        # The last replies may be logged a moment after the client has them.
        end = time.time() + 5
        while sum(sum(c) for c in served_counts(replicas).values()) < total["ok"] + 1 and time.time() < end:
            time.sleep(0.1)
        a_before, a_after = a.served()
        b_before, b_after = b.served()
        b_metrics_ok = b.metrics_ok()
        print("scale_out_test: A served %d (+%d finished while draining), B served %d; B /metrics OK %d"
              % (len(a_before), len(a_after), len(b_before), b_metrics_ok))

        if total["sent"] < MIN_REQUESTS:
            fail("only %d requests in %.0fs" % (total["sent"], DURATION_S))
        if total["errors"] or total["ok"] != total["sent"]:
            fail("requests lost through nginx: sent %d, ok %d, errors %s" % (total["sent"], total["ok"], total["errors"]))
        if stream.get("code") != "OK" or "summary" not in stream:
            fail("the stream running on A during its drain did not finish: %s" % stream)
        if stream["summary"].request_id not in a_after:
            fail("A did not log the stream %s as finished during its drain" % stream["summary"].request_id)
        if a_exit != 0:
            fail("replica A exited %d after SIGTERM:\n%s" % (a_exit, a.text()[-3000:]))
        if not a_before or not b_before:
            fail("a replica served nothing through nginx: A %d, B %d" % (len(a_before), len(b_before)))
        # Every request the load generator saw succeed is in exactly one replica's
        # log (plus the stream sent to A directly), and nothing else is.
        logged = len(a_before) + len(a_after) + len(b_before) + len(b_after)
        if logged != total["ok"] + 1:
            fail("the replicas logged %d successful requests, the load generator saw %d (+1 direct stream)"
                 % (logged, total["ok"]))
        if b_metrics_ok != len(b_before):
            fail("B's /metrics counts %d OK requests, its log %d" % (b_metrics_ok, len(b_before)))
        print("scale_out_test: PASS")
    finally:
        if load:
            load.stop()
        nginx.stop()
        for replica in replicas:
            replica.stop()
        if os.environ.get("KEEP_SCALE_OUT_DIR") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
