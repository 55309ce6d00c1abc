#!/usr/bin/env python3
"""server_bench.py - latency and throughput of a running `moestream serve` (or any OpenAI-compatible
server): sequential requests (time to first token over SSE, total latency, decode tok/s), then
concurrent clients (requests/s and generated tok/s overall). Standard library only; prints the
settings beside every number.

Usage: bench/server_bench.py BASE_URL [--key KEY] [--tokens N] [--reps N] [--clients N]"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def stream_once(u, key, tokens, seed, prompt):
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "stream": True,
                       "seed": seed, "stream_options": {"include_usage": True}, "ignore_eos": True})
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    r = c.getresponse()
    ttft, usage = None, None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices", []):
            if ttft is None and (ch["delta"].get("content") or ch["delta"].get("reasoning_content")):
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    c.close()
    return ttft or total, total, usage["completion_tokens"] if usage else 0


def ms(v):
    return f"{statistics.mean(v) * 1e3:.1f} ± {statistics.pstdev(v) * 1e3:.1f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--key", default="")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--clients", type=int, default=20)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.base)
    print(f"server {a.base}, {a.tokens} tokens per request (ignore_eos), {a.reps} sequential, {a.clients} concurrent")
    stream_once(u, a.key, 4, 0, "warm up")
    ttft, lat, tps = [], [], []
    for i in range(a.reps):
        f, t, n = stream_once(u, a.key, a.tokens, i, f"Request number {i}: tell me a story")
        ttft.append(f)
        lat.append(t)
        if n > 1 and t > f:
            tps.append((n - 1) / (t - f))
    print(f"sequential: first token {ms(ttft)}, whole request {ms(lat)}, decode "
          f"{statistics.mean(tps):.1f} ± {statistics.pstdev(tps):.1f} tok/s")
    done = []
    lock = threading.Lock()

    def client(i):
        f, t, n = stream_once(u, a.key, a.tokens, 1000 + i, f"Client {i}: tell me a story")
        with lock:
            done.append((f, t, n))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(n for _, _, n in done)
    print(f"concurrent: {a.clients} clients in {wall:.2f} s: {a.clients / wall:.1f} requests/s, {toks / wall:.1f} tok/s "
          f"overall; first token {ms([f for f, _, _ in done])}, whole request {ms([t for _, t, _ in done])} "
          f"(served one at a time, first come first served)")


if __name__ == "__main__":
    main()
