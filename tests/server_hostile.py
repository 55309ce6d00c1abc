#!/usr/bin/env python3
"""server_hostile.py - `moestream serve` against bad and rough clients: invalid JSON, wrong types,
unknown model and endpoints, empty messages, an oversized body, a context overflow, a missing API
key, raw garbage on the socket, clients that drop mid-stream or while queued, and 20 clients at
once. Every bad request must get its HTTP status and an OpenAI-shaped error, and a normal request
must still work afterwards. Standard library only.

Usage: server_hostile.py BASE_URL API_KEY MODEL_ID"""
import http.client
import json
import re
import socket
import sys
import threading
import time
import urllib.parse

from checks import Checks

BASE, KEY, MODEL = sys.argv[1], sys.argv[2], sys.argv[3]
U = urllib.parse.urlparse(BASE)
HOST, PORT = U.hostname, U.port
check = Checks("server")


def request(method, path, body=None, headers=None, raw=None, timeout=60):
    """Returns (status, parsed JSON or text)."""
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    h.update(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    c = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    text = r.read().decode("utf-8", "replace")
    c.close()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


def expect_error(what, status, method, path, body=None, code=None, param=None, **kw):
    st, js = request(method, path, body, **kw)
    err = js.get("error") if isinstance(js, dict) else None
    ok = st == status and isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err
    check(ok, f"{what}: status {st} (want {status}) with an OpenAI error body", js)
    if ok and code:
        check(err.get("code") == code, f"{what}: code {err.get('code')} (want {code})", js)
    if ok and param:
        check(err.get("param") == param, f"{what}: param {err.get('param')} (want {param})", js)


def chat(max_tokens=4, **extra):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": max_tokens, "seed": 1}
    body.update(extra)
    return request("POST", "/v1/chat/completions", body)


def ok_request(what):
    st, js = chat()
    check(st == 200 and js["choices"][0]["message"]["role"] == "assistant", f"{what}: a normal request still works", js)


def metric(name):
    st, text = request("GET", "/metrics")
    m = re.search(rf"^moestream_{name} ([0-9.e+-]+)$", text, re.M) if st == 200 else None
    return float(m.group(1)) if m else None


def main():
    C = "/v1/chat/completions"
    st, js = request("GET", "/health")
    check(st == 200 and js == {"status": "ok"}, "health", js)

    # malformed requests
    expect_error("invalid JSON", 400, "POST", C, raw=b'{"messages": [', code="invalid_json")
    expect_error("JSON that is not an object", 400, "POST", C, raw=b"[1, 2]")
    expect_error("empty body", 400, "POST", C, raw=b"")
    expect_error("not UTF-8", 400, "POST", C, raw=b'{"messages": "\xff\xfe"}')
    # error messages that quote the client: a parser excerpt cut inside a UTF-8 sequence (a fuzz
    # finding: the error body could not be written and the server exited), a URL that is not UTF-8
    expect_error("bad escape before a 2-byte character", 400, "POST", C, raw=b'{"messages": "{\\\xde\x9bity"}',
                 code="invalid_json")
    expect_error("a path that is not UTF-8", 404, "GET", "/%FF%FE")
    expect_error("a model name that is not UTF-8", 404, "GET", "/v1/models/%C3")
    ok_request("after errors that quote invalid UTF-8")
    expect_error("messages missing", 400, "POST", C, {"model": MODEL}, param="messages")
    expect_error("messages not an array", 400, "POST", C, {"messages": "hi"}, param="messages")
    expect_error("empty messages", 400, "POST", C, {"messages": []}, param="messages")
    expect_error("message not an object", 400, "POST", C, {"messages": [42]})
    expect_error("role missing", 400, "POST", C, {"messages": [{"content": "x"}]})
    expect_error("unknown role", 400, "POST", C, {"messages": [{"role": "wizard", "content": "x"}]})
    expect_error("content a number", 400, "POST", C, {"messages": [{"role": "user", "content": 5}]})
    expect_error("image content", 400, "POST", C,
                 {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
    expect_error("user content null", 400, "POST", C, {"messages": [{"role": "user", "content": None}]})
    expect_error("temperature a string", 400, "POST", C,
                 {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, param="temperature")
    expect_error("temperature out of range", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "temperature": 9})
    expect_error("max_tokens zero", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
    expect_error("max_tokens a float", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5})
    expect_error("max_tokens beyond the limit", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9})
    expect_error("ignore_eos not a boolean", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "ignore_eos": 1})
    expect_error("stream not a boolean", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "stream": "yes"})
    expect_error("stop a number", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "stop": 5})
    expect_error("n = 2", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "n": 2})
    expect_error("tools not an array", 400, "POST", C, {"messages": [{"role": "user", "content": "x"}], "tools": {}})
    expect_error("tool without a name", 400, "POST", C,
                 {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {}}]})
    expect_error("tool_choice without tools", 400, "POST", C,
                 {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})
    expect_error("tool_choice naming an unknown tool", 400, "POST", C,
                 {"messages": [{"role": "user", "content": "x"}],
                  "tools": [{"type": "function", "function": {"name": "a"}}],
                  "tool_choice": {"type": "function", "function": {"name": "b"}}})
    expect_error("bad tool_calls", 400, "POST", C,
                 {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [{"x": 1}]}]})
    expect_error("model a number", 400, "POST", C, {"model": 7, "messages": [{"role": "user", "content": "x"}]})
    expect_error("unknown model", 404, "POST", C, {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
                 code="model_not_found")
    expect_error("unknown model (retrieve)", 404, "GET", "/v1/models/gpt-9")
    expect_error("unknown endpoint", 404, "POST", "/v1/embeddings", {"input": "x"})
    expect_error("wrong method", 405, "GET", C)
    expect_error("missing API key", 401, "POST", C, {"messages": [{"role": "user", "content": "x"}]},
                 headers={"Authorization": ""})
    expect_error("completions without prompt", 400, "POST", "/v1/completions", {"max_tokens": 3})
    expect_error("completions with token ids out of range", 400, "POST", "/v1/completions", {"prompt": [1, 10**7]})
    # a prompt longer than the context (4096): many words, well under the body limit
    expect_error("context overflow", 400, "POST", C,
                 {"messages": [{"role": "user", "content": "lorem ipsum dolor " * 5000}]}, code="context_length_exceeded")
    # a 10 MB body
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (10 << 20) + b'"}]}'
    expect_error("10 MB body", 413, "POST", C, raw=big)
    ok_request("after the hostile requests")

    # stop strings: the reply ends where the stop string would begin, finish_reason "stop"
    greedy = dict(max_tokens=24, temperature=0, ignore_eos=True)
    chat(**greedy)  # once first, so the next two resume from the same saved state
    st, js = chat(**greedy)
    full = js["choices"][0]["message"]["content"] if st == 200 else ""
    cut = next((i for i in range(4, len(full) - 3) if len(full[i:i + 3].split()) == 1 and len(full[i:i + 3]) == 3 and
                full[i:i + 3].split()[0] == full[i:i + 3]), None)
    if cut is not None:
        stop = full[cut:cut + 3]
        st, js = chat(stop=[stop, "never-matches"], **greedy)
        got = js["choices"][0] if st == 200 else {}
        check(st == 200 and got["message"]["content"] == full[:full.index(stop)].rstrip("\n") and got["finish_reason"] == "stop",
              f"stop string {stop!r} cuts {full!r}", js)
    else:
        check(False, "a greedy reply long enough to test stop strings", full)

    # raw garbage and a half request on the socket
    for junk in (b"\x00\x01\x02 garbage\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"mess"):
        s = socket.create_connection((HOST, PORT), timeout=10)
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        try:
            s.recv(4096)
        except OSError:
            pass
        s.close()
    ok_request("after garbage on the socket")

    # a client dropping mid-stream: its generation stops
    cancelled0 = metric("requests_cancelled_total") or 0
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Tell me everything"}],
                       "max_tokens": 4000, "stream": True, "seed": 2, "ignore_eos": True}).encode()
    s = socket.create_connection((HOST, PORT), timeout=30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data:") < 3:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    check(b"200 OK" in got and b"text/event-stream" in got, "stream started before the drop", got[:300])
    s.close()
    t0 = time.time()
    cancelled = cancelled0
    while time.time() - t0 < 30 and cancelled <= cancelled0:
        time.sleep(0.05)
        cancelled = metric("requests_cancelled_total") or 0
    check(cancelled > cancelled0, "a dropped stream cancels its generation", cancelled)
    gen = metric("completion_tokens_total")
    ok_request("after a dropped stream")

    # a non-streaming client that leaves while its request waits in the queue
    blockers = [threading.Thread(target=lambda: chat(max_tokens=200, ignore_eos=True)) for _ in range(2)]
    for t in blockers:
        t.start()
    time.sleep(0.05)
    s = socket.create_connection((HOST, PORT), timeout=10)
    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3000}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(0.05)
    s.close()
    for t in blockers:
        t.join()
    ok_request("after a client left the queue")

    # 20 clients at once, half of them streaming
    results = [None] * 20

    def one(i):
        try:
            if i % 2:
                st, js = chat(max_tokens=6, seed=i)
                results[i] = st == 200 and js["usage"]["completion_tokens"] <= 6
            else:
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"Client {i}"}], "max_tokens": 6, "stream": True}
                st, text = request("POST", C, body)
                results[i] = st == 200 and text.rstrip().endswith("data: [DONE]")
        except Exception as e:  # noqa: BLE001
            results[i] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    check(all(r is True for r in results), "20 concurrent clients all answered", results)
    print(f"  20 concurrent clients (6 tokens each) answered in {dt:.2f} s")
    ok_request("after 20 concurrent clients")

    # metrics
    st, text = request("GET", "/metrics")
    for name in ("completion_tokens_total", "decode_tokens_per_second", "expert_hit_rate", "prompt_tokens_reused_total"):
        check(st == 200 and f"moestream_{name} " in text, f"/metrics has {name}", text[:300])
    check(gen is not None and gen > 0, "tokens are counted", gen)

    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
