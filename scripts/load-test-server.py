#!/usr/bin/env python3
"""Load test for `gpt2q serve`, loopback only, bounded in count and time: CLIENTS concurrent
clients each send REQUESTS completions one after another to a server with --parallel SLOTS, and
the same load is run as one `gpt2q run` process per request (the shell-out alternative). Prints,
for each side, failed requests, p50/p99 latency and aggregate generated tokens per second, and
the server's peak RSS (Linux VmHWM) against its memory plan.

    scripts/load-test-server.py -m MODEL [--binary target/release/gpt2q] [--clients 8]
        [--requests 25] [--parallel 2] [--ctx 512] [--max-tokens 32] [--side server,run]

Uses only the Python standard library. Every request asks for exactly --max-tokens tokens
(ignore_eos), so both sides generate the same amount; prompts and seeds vary per request.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

PROMPTS = [
    "Once upon a time",
    "The weather today is",
    "In the beginning there was",
    "My favourite recipe for bread",
    "The history of the Roman empire",
    "A short guide to gardening:",
    "Breaking news from the city council",
    "The robot looked at the sky and",
]

DEADLINE_S = 900  # the whole run stops after this, whatever is left


def percentile(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def run_load(args, one_request):
    """CLIENTS threads x REQUESTS calls of one_request(client, i) -> tokens; returns stats."""
    latencies, tokens, failures = [], [], []
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_S

    def client(c):
        for i in range(args.requests):
            if time.monotonic() > deadline:
                with lock:
                    failures.append("deadline")
                return
            start = time.monotonic()
            try:
                n = one_request(c, i)
                with lock:
                    latencies.append(time.monotonic() - start)
                    tokens.append(n)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    failures.append(f"{type(e).__name__}: {e}")

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    return {
        "requests": len(latencies) + len(failures),
        "failed": len(failures),
        "first_failures": failures[:3],
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "wall_s": wall,
        "tokens": sum(tokens),
        "tok_per_s": sum(tokens) / wall,
    }


def start_server(args):
    cmd = [args.binary, "serve", "-m", args.model, "--host", "127.0.0.1", "--port", "0",
           "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--queue", str(args.clients * 2),
           "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    plan_mib, addr = None, None
    for line in proc.stderr:
        m = re.search(r"memory plan ([0-9.]+) MiB", line)
        if m:
            plan_mib = float(m.group(1))
        m = re.search(r"ready on http://([0-9.]+):(\d+)", line)
        if m:
            addr = (m.group(1), int(m.group(2)))
            break
    if addr is None or addr[0] not in ("127.0.0.1", "::1"):
        proc.kill()
        sys.exit(f"gpt2q serve did not start on loopback: {cmd}")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, addr, plan_mib


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def server_side(args):
    proc, (host, port), plan_mib = start_server(args)
    try:
        def one(c, i):
            body = json.dumps({"prompt": PROMPTS[(c + i) % len(PROMPTS)], "max_tokens": args.max_tokens,
                               "seed": c * 1000 + i, "ignore_eos": True})
            conn = http.client.HTTPConnection(host, port, timeout=300)
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
            conn.close()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")
            return json.loads(data)["usage"]["completion_tokens"]

        stats = run_load(args, one)
        stats["peak_rss_mib"] = peak_rss_mib(proc.pid)
        stats["plan_mib"] = plan_mib
        return stats
    finally:
        proc.kill()
        proc.wait()


def run_side(args):
    def one(c, i):
        cmd = [args.binary, "run", "-m", args.model, "-p", PROMPTS[(c + i) % len(PROMPTS)],
               "-n", str(args.max_tokens), "--seed", str(c * 1000 + i), "--ignore-eos",
               "--ctx", str(args.ctx), "-q"]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace")[:200])
        return args.max_tokens

    return run_load(args, one)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"),
                                                    "release", "gpt2q"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=25)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--side", default="server,run")
    args = p.parse_args()
    if args.clients * args.requests > 1000:
        sys.exit("at most 1000 requests per side")
    results = {}
    for side in args.side.split(","):
        results[side] = {"server": server_side, "run": run_side}[side](args)
        print(f"{side}: {json.dumps(results[side])}", flush=True)
    print()
    print("| side | requests | failed | p50 latency s | p99 latency s | tokens | wall s | tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for side, r in results.items():
        name = f"gpt2q serve --parallel {args.parallel}" if side == "server" else "gpt2q run per request"
        print(f"| {name} | {r['requests']} | {r['failed']} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | "
              f"{r['tokens']} | {r['wall_s']:.1f} | {r['tok_per_s']:.1f} |")
    if "server" in results:
        r = results["server"]
        print(f"\nserver peak RSS {r['peak_rss_mib']:.1f} MiB, memory plan {r['plan_mib']} MiB "
              f"(difference {r['peak_rss_mib'] - (r['plan_mib'] or 0):+.1f} MiB)")
    return 1 if any(r["failed"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
