#!/usr/bin/env python3
"""seeds.py - writes the fuzz targets' seed corpora from the fixtures (nothing binary is kept in
the repository): GGUF headers of the fixture models (tensor data cut off), tokenizer test texts,
chat templates, replies and tool calls, and OpenAI request bodies.

Usage: fuzz/seeds.py FIXTURES_DIR OUT_DIR   (writes OUT_DIR/{gguf,tokenizer,chat,http}/)"""
import glob
import json
import os
import struct
import sys

FX, OUT = sys.argv[1], sys.argv[2]
SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
n_written = {}


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    n_written[target] = n_written.get(target, 0) + 1


def rd_str(b, p):
    """A GGUF string at p: its bytes and the position after it."""
    n = struct.unpack_from("<Q", b, p)[0]
    return b[p + 8:p + 8 + n], p + 8 + n


def skip_value(b, t, p):
    """The position after a metadata value of type t at p."""
    if t == 8:
        return rd_str(b, p)[1]
    if t == 9:
        et, n = struct.unpack_from("<IQ", b, p)
        p += 12
        for _ in range(n):
            p = skip_value(b, et, p)
        return p
    return p + SIZES[t]


def walk_kv(b):
    """Walks the metadata of a GGUF header: (position after it, general.alignment or 32)."""
    pos, align = 24, 32
    for _ in range(struct.unpack_from("<Q", b, 16)[0]):
        key, pos = rd_str(b, pos)
        t = struct.unpack_from("<I", b, pos)[0]
        if key == b"general.alignment":
            align = struct.unpack_from("<I", b, pos + 4)[0]
        pos = skip_value(b, t, pos + 4)
    return pos, align


def gguf_header(path):
    """The bytes of a GGUF file before its tensor data (header, metadata, tensor table)."""
    with open(path, "rb") as f:
        b = f.read(64 << 20)
    pos, align = walk_kv(b)
    for _ in range(struct.unpack_from("<Q", b, 8)[0]):
        _, pos = rd_str(b, pos)
        nd = struct.unpack_from("<I", b, pos)[0]
        pos += 4 + 8 * nd + 4 + 8
    return b[:(pos + align - 1) // align * align]


# GGUF: flags byte (see fuzz_gguf.c) + header; the tiny models and two quantized small ones
models = sorted(glob.glob(f"{FX}/tiny/*/*.gguf")) + [f"{FX}/small/qwen35moe/qwen35moe-Q4_K_M.gguf",
                                                    f"{FX}/small/qwen3moe/qwen3moe-Q8_0.gguf"]
for path in models:
    if not os.path.exists(path):
        continue
    h = gguf_header(path)
    base = os.path.basename(path)[:-5]
    put("gguf", f"{base}-parse", b"\x01" + h)
    if base.startswith(("qwen3", "qwen35")):
        put("gguf", f"{base}-eval-mmap", b"\x0b" + h)
        put("gguf", f"{base}-eval-pagecache", b"\x0f" + h)

def split_in_two(header):
    """Two GGUF headers holding the tensors of one, the first with split.count = 2."""
    n_tensors, n_kv = struct.unpack_from("<QQ", header, 8)
    b = header
    pos, _ = walk_kv(b)
    kvs = b[24:pos]
    infos = []
    for _ in range(n_tensors):
        start = pos
        _, pos = rd_str(b, pos)
        nd = struct.unpack_from("<I", b, pos)[0]
        pos += 4 + 8 * nd + 4
        infos.append((b[start:pos], struct.unpack_from("<Q", b, pos)[0]))
        pos += 8
    half = len(infos) // 2
    base = infos[half][1]

    def part(kv_bytes, n_kv, tensors, rebase):
        h = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), n_kv) + kv_bytes
        for raw, off in tensors:
            h += raw + struct.pack("<Q", off - rebase)
        return h + b"\0" * (-len(h) % 32)

    split_kv = struct.pack("<Q", 11) + b"split.count" + struct.pack("<IH", 2, 2)
    return part(kvs + split_kv, n_kv + 1, infos[:half], 0), part(b"", 0, infos[half:], base)


for path in [f"{FX}/tiny/qwen3moe/qwen3moe-f32.gguf", f"{FX}/tiny/qwen35moe/qwen35moe-bf16.gguf"]:
    if os.path.exists(path):
        p1, p2 = split_in_two(gguf_header(path))
        base = os.path.basename(path)[:-5]
        put("gguf", f"{base}-split", b"\x11" + p1 + b"\0SPLIT\0" + p2)
        put("gguf", f"{base}-split-eval", b"\x1b" + p1 + b"\0SPLIT\0" + p2)

# tokenizer: flags byte + text; llama.cpp's vocab test texts and the fixtures' prompts
texts = []
for inp in sorted(glob.glob(f"{FX}/vocab/*.inp")):
    with open(inp, encoding="utf-8") as f:
        texts += [t.strip("\n") for t in f.read().split("\n__ggml_vocab_test__\n")]
for ref in sorted(glob.glob(f"{FX}/tiny/*/ref.json")):
    with open(ref) as f:
        r = json.load(f)
    texts += [r.get("prompt", ""), r.get("chat_example", "")]
texts += ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
          "\xff\xfe bad \xc3 bytes \xe4\xb8", "<tool_call>\n{\"name\": \"f\"}\n</tool_call><|endoftext|>"]
seen = set()
for i, t in enumerate(texts):
    data = t.encode("utf-8", "surrogateescape") if isinstance(t, str) else t
    if data in seen:
        continue
    seen.add(data)
    for flags in (0, 1, 3, 7):
        put("tokenizer", f"text{i:03d}-{flags}", bytes([flags]) + data)

# chat: flags + template \0 tools \0 messages (role byte + content \1 reasoning \1 name \1 args) \0 ... reply
tools = json.dumps([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                     "parameters": {"type": "object", "properties": {
                         "city": {"type": "string"}, "days": {"type": "integer"},
                         "unit": {"type": "string", "enum": ["c", "f"]}, "ok": {"type": "boolean"}},
                         "required": ["city", "unit", "days"]}}}])
templates = [""]
for t in sorted(glob.glob(f"{FX}/tiny/*/hf/chat_template.jinja"))[:1]:
    with open(t) as f:
        templates.append(f.read())
templates += ["{%- if enable_thinking %}<|im_start|>assistant\\n<think>\\n'{% endif %}<think></think>",
              "<|im_start|>{{ m }}<tool_call><function=x><parameter=y><think>",
              "{{ bos_token }}[INST] {{ m }} [/INST]", "<|start_header_id|>"]
replies = ["Hello there!", "<think>\nhmm\n</think>\n\nThe answer.",
           "reason first</think>\n\nthen <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
           "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
           "<tool_call>\n{\"name\": 1}\n</tool_call> <tool_call>unclosed"]
msgs = [b"\x00be brief", b"\x01What is the weather in Paris?",
        b"\x02\x01I should call a tool\x01get_weather\x01{\"city\": \"Paris\"}", b"\x03{\"temp\": 21}",
        b"\x01<tool_response>x</tool_response>", b"\x0a"]
k = 0
for ti, tmpl in enumerate(templates):
    for ri, reply in enumerate(replies):
        for flags in ((ti % 4) | 0x24, (ri % 4) | 0x54):
            body = tmpl.encode() + b"\0" + tools.encode() + b"\0" + b"\0".join(msgs) + b"\0" + reply.encode()
            put("chat", f"chat{k:03d}", bytes([flags]) + body)
            k += 1
put("chat", "no-tools", b"\x03" + b"\0\0\x01hi\0\x02\x01why\0answer")

# http: flags + body
bodies = [
    {"model": "model", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "seed": 1},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                  {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "21C"}],
     "tools": json.loads(tools), "tool_choice": "required", "stream": True, "stream_options": {"include_usage": True},
     "temperature": 0.5, "top_p": 0.9, "stop": ["\n", "END"], "chat_template_kwargs": {"enable_thinking": False}},
    {"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y", "reasoning_content": "r"}],
     "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "tools": json.loads(tools),
     "response_format": {"type": "text"}, "logprobs": False, "n": 1, "max_completion_tokens": 8},
    {"model": "model", "prompt": "The quick brown fox", "max_tokens": 8, "echo": False, "stream": False},
    {"prompt": [60, 279, 229, 456], "max_tokens": 2, "seed": -1, "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1},
    {"prompt": ["one string"], "suffix": None, "best_of": 1, "ignore_eos": True},
]
for i, b in enumerate(bodies):
    flags = 1 if "prompt" in b else 0
    for t in range(4):
        put("http", f"body{i}-{t}", bytes([flags | t << 1]) + json.dumps(b).encode())
put("http", "not-json", b"\x00{\"messages\": [")
put("http", "array", b"\x00[]")
print(" ".join(f"{t}: {n} seeds" for t, n in sorted(n_written.items())))
