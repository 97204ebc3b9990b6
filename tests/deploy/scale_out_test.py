#!/usr/bin/env python3
"""Scale-out on loopback: two matformer-server replicas behind nginx (grpc_pass).

1. starts replicas A and B (the shipped model, free ports) and nginx with an
   upstream of both, its configuration generated into a temporary directory
   (nginx runs with -p/-c/-e there and never reads /etc/nginx);
2. sends closed-loop Generate load through nginx from several threads;
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

The load is this file's Load class; when tools/loadgen lands, Load.start/
Load.stop can run `matformer-loadgen --target=... --json_out=...` instead and
read the same sent/ok/errors counts.
"""

import argparse
import collections
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
PROMPTS = ["And God said", "In the beginning", "And it came to pass", "Blessed are"]
# (tier, max_new_tokens) cycled by each load thread: short interactive-like
# calls and longer batch ones.
MIX = [("standard", 16), ("batch", 48), ("standard", 8), ("batch", 96)]
THREADS = 6


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
        """Request ids this replica logged with status=OK, split at its drain."""
        before, after, drained = [], [], False
        for line in self.text().splitlines():
            if ": draining" in line:
                drained = True
            match = re.search(r" request id=(\S+) .* status=(\S+)", line)
            if match and match.group(2) == "OK":
                (after if drained else before).append(match.group(1))
        return before, after

    def metrics_ok(self):
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=10).read().decode()
        return sum(float(v) for v in re.findall(r'^matformer_requests_total\{[^}]*code="OK"[^}]*\} (\S+)$', text, re.M))

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


class Load:
    """Closed-loop Generate calls from THREADS threads until stop()."""

    def __init__(self, target, v1, v1_grpc, grpc):
        self.target, self.v1, self.v1_grpc, self.grpc = target, v1, v1_grpc, grpc
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sent = collections.Counter()
        self.ok = collections.Counter()
        self.errors = collections.Counter()
        self.ok_ids = []
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(THREADS)]

    def run(self, index):
        channel = self.grpc.insecure_channel(self.target)
        stub = self.v1_grpc.MatFormerStub(channel)
        i = index
        while not self.stopping.is_set():
            tier, max_new_tokens = MIX[i % len(MIX)]
            request = self.v1.GenerateRequest(text=PROMPTS[i % len(PROMPTS)], tier=tier,
                                              max_new_tokens=max_new_tokens)
            i += 1
            with self.lock:
                self.sent[tier] += 1
            try:
                reply = stub.Generate(request, timeout=60)
                with self.lock:
                    self.ok[tier] += 1
                    self.ok_ids.append(reply.request_id)
            except self.grpc.RpcError as error:
                with self.lock:
                    self.errors["%s: %s" % (error.code().name, error.details())] += 1
        channel.close()

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)
        return {"sent": sum(self.sent.values()), "ok": sum(self.ok.values()), "errors": dict(self.errors),
                "by_tier": {tier: {"sent": self.sent[tier], "ok": self.ok[tier]} for tier in self.sent}}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build_dir", required=True)
    parser.add_argument("--source_dir", required=True)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(args.build_dir, "proto", "python"))
    import grpc
    from matformer.v1 import matformer_pb2 as v1, matformer_pb2_grpc as v1_grpc

    server = os.path.join(args.build_dir, "server", "matformer-server")
    model_dir = os.path.join(args.source_dir, "models", "default")
    tiers = os.path.join(args.source_dir, "deploy", "tiers.json")
    workdir = tempfile.mkdtemp(prefix="matformer-scale-out-")
    replicas, nginx = [], Nginx(workdir)
    try:
        replicas = [Replica(name, server, model_dir, tiers, workdir) for name in ("A", "B")]
        for replica in replicas:
            replica.wait_ready()
        a, b = replicas
        nginx.start([a.port, b.port])
        print("scale_out_test: replicas A :%d, B :%d behind nginx :%d (%s)" % (a.port, b.port, nginx.port, workdir))

        load = Load("127.0.0.1:%d" % nginx.port, v1, v1_grpc, grpc)
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

        time.sleep(max(0.0, DURATION_S - (time.time() - started)))
        result = load.stop()
        print("scale_out_test: load through nginx: %s" % result)

        a_before, a_after = a.served()
        b_before, b_after = b.served()
        b_metrics_ok = b.metrics_ok()
        print("scale_out_test: A served %d (+%d finished while draining), B served %d; B /metrics OK %d"
              % (len(a_before), len(a_after), len(b_before), b_metrics_ok))

        if result["sent"] < MIN_REQUESTS:
            fail("only %d requests in %.0fs" % (result["sent"], DURATION_S))
        if result["errors"] or result["ok"] != result["sent"]:
            fail("requests lost through nginx: %s" % result)
        if stream.get("code") != "OK" or "summary" not in stream:
            fail("the stream running on A during its drain did not finish: %s" % stream)
        if stream["summary"].request_id not in a_after:
            fail("A did not log the stream %s as finished during its drain" % stream["summary"].request_id)
        if a_exit != 0:
            fail("replica A exited %d after SIGTERM:\n%s" % (a_exit, a.text()[-3000:]))
        if not a_before or not b_before:
            fail("a replica served nothing through nginx: A %d, B %d" % (len(a_before), len(b_before)))
        # Every OK the client saw is in exactly one replica's log, and nothing else is.
        logged = collections.Counter(a_before + a_after + b_before + b_after)
        expected = collections.Counter(load.ok_ids + [stream["summary"].request_id])
        if logged != expected:
            fail("replica logs and client disagree: only logged %s, only seen %s"
                 % (dict(logged - expected), dict(expected - logged)))
        if b_metrics_ok != len(b_before):
            fail("B's /metrics counts %d OK requests, its log %d" % (b_metrics_ok, len(b_before)))
        print("scale_out_test: PASS")
    finally:
        nginx.stop()
        for replica in replicas:
            replica.stop()
        if os.environ.get("KEEP_SCALE_OUT_DIR") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
