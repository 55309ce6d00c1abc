#!/usr/bin/env python3
"""server_faults.py - `moestream serve` while its disk and its memory fail (MS_FAULTS, see
src/util.h): expert and embedding reads that fail with EIO or end early, at several points of a
request (prompt or generation, early or late layers), partial reads, and a failed allocation at
each allocation of a request in turn, on both endpoints, streaming or not, and with clients at
once. Every request gets 200 or a 500 with an OpenAI-shaped error, and once the fault clears the
same request gets the same reply as before any fault: nothing lost. Standard library only.

Usage: server_faults.py BASE_URL MODEL_ID FAULT_FILE   (the server runs with MS_FAULTS=FAULT_FILE
and a cache small enough that every request reads experts)"""
import http.client
import json
import sys
import threading
import urllib.parse

from checks import Checks

BASE, MODEL, FAULTS = sys.argv[1], sys.argv[2], sys.argv[3]
U = urllib.parse.urlparse(BASE)
check = Checks("server faults", lambda d: str(d)[:400])


def fault(text):
    with open(FAULTS, "w") as f:
        f.write(text)


def post(path, body):
    c = http.client.HTTPConnection(U.hostname, U.port, timeout=120)
    c.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    text = r.read().decode("utf-8", "replace")
    c.close()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the sky."}], "max_tokens": 8,
        "temperature": 0, "seed": 1}
COMPL = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}


def chat():
    st, js = post("/v1/chat/completions", CHAT)
    return st, js, js["choices"][0]["message"]["content"] if st == 200 else None


def compl():
    st, js = post("/v1/completions", COMPL)
    return st, js, js["choices"][0]["text"] if st == 200 else None


def is_error(st, js, status=500):
    e = js.get("error") if isinstance(js, dict) else None
    return st == status and isinstance(e, dict) and isinstance(e.get("message"), str) and \
        e.get("type") == "server_error"


def main():
    fault("")
    st, js, base_chat = chat()
    check(st == 200, "baseline chat", js)
    st, js, base_compl = compl()
    check(st == 200, "baseline completion", js)
    if check.failures:
        return check.finish()

    # reads that fail: at the first read (an embedding row), then after some expert reads
    n_read = 0
    for kind, needle in (("read-eio", "Input/output error"), ("read-eof", "truncated")):
        for skip in (0, 20, 80, 400):
            for name, call, base in (("chat", chat, base_chat), ("completion", compl, base_compl)):
                fault(f"{kind} {skip}")
                st, js, _ = call()
                fault("")
                if st == 200:
                    continue  # the request needed fewer reads than were let through
                n_read += 1
                check(is_error(st, js) and needle in js["error"]["message"],
                      f"{name} under {kind} after {skip} reads: a 500 naming the failure", js)
                st, js, text = call()
                check(st == 200 and text == base, f"{name} after {kind} {skip} cleared: the same reply", (st, text, base))
    check(n_read >= 12, f"read faults hit only {n_read} requests", n_read)

    # a streamed request under a read fault: the error comes as an event, then [DONE]
    fault("read-eio 40")
    st, text = post("/v1/chat/completions", dict(CHAT, stream=True))
    fault("")
    check(st == 200 and '"error"' in text and text.rstrip().endswith("data: [DONE]"),
          "a streamed request under read-eio ends with an error event and [DONE]", text[-300:])
    st, js, text = chat()
    check(st == 200 and text == base_chat, "chat after the streamed fault: the same reply", (st, text))

    # partial reads are no error at all
    fault("read-partial")
    st, js, text = chat()
    fault("")
    check(st == 200 and text == base_chat, "chat under read-partial: the same reply", (st, text))

    # a failed allocation at each allocation of a request in turn, until requests go through
    n_alloc = n_500 = 0
    clean = 0
    for k in range(1, 2000):
        for name, call, base in (("chat", chat, base_chat), ("completion", compl, base_compl)):
            fault(f"alloc {k} {name}")
            st, js, _ = call()
            fault("")
            check(st == 200 or is_error(st, js), f"{name} with allocation {k} failing: 200 or a 500", (st, js))
            n_500 += st == 500
            st2, js2, text = call()
            check(st2 == 200 and text == base, f"{name} after allocation {k} failed: the same reply", (st2, text, base))
        n_alloc = k
        clean = clean + 1 if st == 200 else 0
        if clean >= 40:  # past the allocations a request makes
            break
    check(n_500 >= 10, f"allocation faults gave only {n_500} errors", n_500)

    # clients at once while reads fail, then all of them again once the fault clears
    out = [None] * 6

    def one(i):
        out[i] = chat() if i % 2 else compl()
    for phase in ("read-eio 30", ""):
        fault(phase)
        ts = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for i, (st, js, text) in enumerate(out):
            if phase:
                check(st == 200 or is_error(st, js), f"client {i} under {phase}: 200 or a 500", (st, js))
            else:
                check(st == 200 and text == (base_chat if i % 2 else base_compl), f"client {i} after the fault", (st, text))
    fault("")

    print(f"  read faults: {n_read} requests answered 500 then the same reply; allocation faults at "
          f"1..{n_alloc}: {n_500} answered 500, every next request the same reply")
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
