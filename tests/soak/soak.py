#!/usr/bin/python3
"""Soak and fault test of matformer-server (bounded, loopback only).

Starts the server on the shipped default model and, for --duration_s, runs
at the same time:
  - normal load: matformer-loadgen, open loop, the default tier mix;
  - clients that cancel streams after a few tokens;
  - requests whose gRPC deadline expires in the queue or mid-decode;
  - oversized and malformed requests (each must get its clear status);
  - slow readers on streams;
  - bursts past the queue bound (RESOURCE_EXHAUSTED at once, never a hang);
  - a health poller (must read SERVING throughout) and a sampler of resident
    memory, KV blocks in use and PLE cache bytes.
At the end every request is accounted for (OK or an expected status), the KV
blocks in use are back to zero, the PLE cache is within its bound, the server
is alive, and resident memory after warm-up grew by less than --rss_growth_mb.
Writes <out>/soak.json and <out>/rss.csv; exits 1 on any failure.

  /usr/bin/python3 tests/soak/soak.py --duration_s 600      # the 10-minute soak
"""

import argparse
import collections
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build_dir", default=os.path.join(ROOT, "build"))
    p.add_argument("--duration_s", type=float, default=600)
    p.add_argument("--rate", type=float, default=6, help="loadgen arrivals per second")
    p.add_argument("--out", default=os.path.join(ROOT, "build/soak"))
    p.add_argument("--rss_growth_mb", type=float, default=32,
                   help="allowed resident memory growth from the end of warm-up to the end")
    return p.parse_args()


args = parse_args()
sys.path.insert(0, os.path.join(args.build_dir, "proto/python"))
import grpc  # noqa: E402

pb = importlib.import_module("matformer.v1.matformer_pb2")
pb_grpc = importlib.import_module("matformer.v1.matformer_pb2_grpc")
health_pb = importlib.import_module("health_pb2")
health_grpc = importlib.import_module("health_pb2_grpc")

MAX_QUEUE = 32
PLE_CACHE_MB = 1
failures = []
outcomes = collections.defaultdict(collections.Counter)  # kind -> status code name -> count
lock = threading.Lock()
stop = threading.Event()


def fail(message):
    with lock:
        failures.append(message)
    print("FAIL:", message, flush=True)


def record(kind, code, allowed):
    name = code.name if code is not None else "OK"
    with lock:
        outcomes[kind][name] += 1
    if name not in allowed:
        fail(f"{kind}: got {name}, expected one of {sorted(allowed)}")


def call(kind, allowed, fn):
    try:
        fn()
        record(kind, None, allowed)
    except grpc.RpcError as e:
        record(kind, e.code(), allowed)


def loop(period, fn):
    while not stop.wait(period):
        try:
            fn()
        except Exception as e:  # a fault thread must report, not die silently
            fail(f"{fn.__name__}: {type(e).__name__}: {e}")


def start_server():
    log_path = os.path.join(args.out, "server.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([os.path.join(args.build_dir, "server/matformer-server"), "--port=0", "--metrics_port=0",
                             f"--max_queue={MAX_QUEUE}", "--max_batch=16", f"--ple_cache_mb={PLE_CACHE_MB}",
                             "--drain_timeout=5s"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    end = time.time() + 300
    while time.time() < end:
        text = open(log_path).read()
        port = re.search(r"listening on [\d.]+:(\d+)", text)
        metrics = re.search(r"metrics on [\d.]+:(\d+)", text)
        if port and metrics:
            return proc, int(port.group(1)), int(metrics.group(1))
        if proc.poll() is not None:
            sys.exit(f"server exited at start-up: {text}")
        time.sleep(0.2)
    proc.kill()
    sys.exit("server did not start in 300 s")


def gauge(metrics_port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def main():
    os.makedirs(args.out, exist_ok=True)
    proc, port, metrics_port = start_server()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 << 20)])
    stub = pb_grpc.MatFormerStub(channel)
    health = health_grpc.HealthStub(channel)
    prompt = "And God said, Let there be light: and there was light."

    def generate(**fields):
        return pb.GenerateRequest(text=fields.pop("text", prompt), **fields)

    def cancel_mid_stream():
        def read_then_cancel():
            stream = stub.GenerateStream(generate(max_new_tokens=200), timeout=60)
            for i, _ in enumerate(stream):
                if i == 2:
                    stream.cancel()
            raise AssertionError("the stream ended before it was cancelled")
        call("cancel_mid_stream", {"CANCELLED", "RESOURCE_EXHAUSTED"}, read_then_cancel)

    def deadline_expires():
        call("deadline_expires", {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"},
             lambda: list(stub.GenerateStream(generate(max_new_tokens=200, spec_name="XL"), timeout=0.05)))

    def malformed():
        invalid = {"INVALID_ARGUMENT"}
        call("bad_max_new_tokens", invalid, lambda: stub.Generate(generate(max_new_tokens=10**9), timeout=30))
        call("bad_token_id", invalid, lambda: stub.Generate(
            pb.GenerateRequest(token_ids=pb.TokenIds(ids=[2, 999999]), max_new_tokens=4), timeout=30))
        call("unknown_tier", invalid, lambda: stub.Generate(generate(tier="platinum"), timeout=30))
        call("bad_spec", invalid, lambda: stub.Generate(generate(spec_name="XXL-S"), timeout=30))
        call("empty_prompt", invalid, lambda: stub.Generate(generate(text=""), timeout=30))
        call("oversized_message", {"RESOURCE_EXHAUSTED"},
             lambda: stub.Generate(generate(text="x" * (4 << 20)), timeout=30))
        call("too_long_prompt", invalid, lambda: stub.Generate(generate(text="light " * 5000), timeout=30))

    def slow_reader():
        def read():
            for _ in stub.GenerateStream(generate(max_new_tokens=24), timeout=120):
                time.sleep(0.3)
        call("slow_reader", {"OK", "RESOURCE_EXHAUSTED"}, read)  # shed during a burst is fine

    def burst():
        futures = [stub.Generate.future(generate(max_new_tokens=64, tier="batch"), timeout=120)
                   for _ in range(3 * MAX_QUEUE)]
        for f in futures:
            try:
                f.result()
                record("burst", None, {"OK", "RESOURCE_EXHAUSTED"})
            except grpc.RpcError as e:
                record("burst", e.code(), {"OK", "RESOURCE_EXHAUSTED"})

    health_samples = collections.Counter()

    def poll_health():
        try:
            status = health.Check(health_pb.HealthCheckRequest(), timeout=5).status
            name = health_pb.HealthCheckResponse.ServingStatus.Name(status)
        except grpc.RpcError as e:
            name = e.code().name
        with lock:
            health_samples[name] += 1
        if name != "SERVING":
            fail(f"health: {name}")

    samples = []  # (seconds, rss MiB, kv blocks in use, PLE bytes)
    t0 = time.time()

    def sample():
        samples.append((round(time.time() - t0, 1), rss_mb(proc.pid), gauge(metrics_port, "matformer_kv_blocks_in_use"),
                        gauge(metrics_port, "matformer_ple_cache_bytes")))

    threads = [threading.Thread(target=loop, args=a, daemon=True) for a in [
        (1.0, cancel_mid_stream), (0.7, deadline_expires), (5.0, malformed), (3.0, slow_reader),
        (max(10.0, args.duration_s / 6), burst), (0.5, poll_health), (2.0, sample)]]
    for t in threads:
        t.start()
    loadgen_json = os.path.join(args.out, "loadgen.json")
    warmup = min(30.0, args.duration_s / 5)
    loadgen = subprocess.run(
        [os.path.join(args.build_dir, "tools/matformer-loadgen"), f"--target=127.0.0.1:{port}",
         f"--rate={args.rate}", f"--duration_s={args.duration_s - warmup}", f"--warmup_s={warmup}", "--drain_s=30",
         "--progress=false", f"--json_out={loadgen_json}"], cwd=ROOT, capture_output=True, text=True)
    stop.set()
    for t in threads:
        t.join(timeout=180)
        if t.is_alive():
            fail("a fault thread did not finish (a call hung)")
    print(loadgen.stdout)
    if loadgen.returncode != 0:
        fail(f"loadgen exited {loadgen.returncode}: {loadgen.stderr[-2000:]}")
    else:
        run = json.load(open(loadgen_json))["runs"][0]
        for tier in run["tiers"] + [run["total"]]:
            accounted = tier["ok"] + sum(tier["errors"].values())
            if accounted != tier["sent"]:
                fail(f"loadgen {tier['tier']}: sent {tier['sent']} but {accounted} accounted for")
            unexpected = set(tier["errors"]) - {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
            if unexpected:
                fail(f"loadgen {tier['tier']}: unexpected statuses {sorted(unexpected)}")

    # Idle now: everything returned, caches within bounds, still serving.
    time.sleep(2)
    sample()
    if proc.poll() is not None:
        fail(f"server exited with {proc.returncode}")
    kv = gauge(metrics_port, "matformer_kv_blocks_in_use")
    ple = gauge(metrics_port, "matformer_ple_cache_bytes")
    if kv != 0:
        fail(f"KV blocks in use after the soak: {kv}")
    if ple is None or ple > PLE_CACHE_MB << 20:
        fail(f"PLE cache bytes {ple} over the bound {PLE_CACHE_MB << 20}")
    after_warmup = [s for s in samples if s[0] >= warmup]
    growth = after_warmup[-1][1] - after_warmup[0][1] if len(after_warmup) >= 2 else None
    if growth is None:
        fail("too few memory samples after warm-up")
    elif growth > args.rss_growth_mb:
        fail(f"resident memory grew {growth:.1f} MiB after warm-up (bound {args.rss_growth_mb} MiB)")
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
        if code != 0:
            fail(f"server exited {code} on SIGTERM")
    except subprocess.TimeoutExpired:
        proc.kill()
        fail("server did not exit within 60 s of SIGTERM")

    with open(os.path.join(args.out, "rss.csv"), "w") as f:
        f.write("seconds,rss_mib,kv_blocks_in_use,ple_cache_bytes\n")
        for s in samples:
            f.write(",".join(str(x) for x in s) + "\n")
    summary = {"duration_s": args.duration_s, "faults": {k: dict(v) for k, v in outcomes.items()},
               "health": dict(health_samples), "rss_mib_first_last_after_warmup":
               [after_warmup[0][1], after_warmup[-1][1]] if after_warmup else None,
               "rss_growth_mib": growth, "failures": failures}
    json.dump(summary, open(os.path.join(args.out, "soak.json"), "w"), indent=2)
    print(json.dumps(summary, indent=2))
    print("SOAK", "FAILED" if failures else "PASSED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
