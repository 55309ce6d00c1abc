#!/usr/bin/env python3
"""chat_pty.py - drives `moestream chat` through a pseudo-terminal, as a person would: two turns
(the second reuses the first turn's context), /clear, /save and /load, Ctrl-C stopping a reply
without leaving, Ctrl-C at the prompt, and Ctrl-D to quit; then, reading from a pipe, the
reasoning controls (--think on|off, --think-budget) and bad options. Standard library only.

Usage: chat_pty.py MOESTREAM_BINARY FIXTURES_DIR"""
import os
import pty
import re
import select
import json
import signal
import subprocess
import sys
import tempfile
import time

from checks import Checks

BIN, FX = sys.argv[1], sys.argv[2]
SLOW = 10 if os.environ.get("MS_SANITIZED") else 1
check = Checks("chat_pty", lambda screen: "\n--- screen tail ---\n" + str(screen)[-600:].replace("\r", "") + "\n---")


class Chat:
    def __init__(self, *args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ["TERM"] = "xterm"
            os.execv(BIN, [BIN, "chat"] + list(args))
        self.out = ""

    def read_until(self, pattern, timeout):
        """Reads until pattern (a regex) matches the output after self.mark; returns the match or None."""
        deadline = time.time() + timeout * SLOW
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.out, self.mark)
            if m:
                self.mark = m.end()
                return m
            left = deadline - time.time()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if r:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    return rx.search(self.out, self.mark)
                self.out += data.decode("utf-8", "replace")

    mark = 0

    def send(self, text):
        os.write(self.fd, text.encode())

    def wait_exit(self, timeout):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return status
            self.read_until(r"$^", 0.1)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        return None


def main():
    tiny = os.path.join(FX, "tiny/qwen35moe/qwen35moe-f32.gguf")
    small = os.path.join(FX, "small/qwen35moe/qwen35moe-Q8_0.gguf")
    stats = r"\[(\d+) tokens, [\d.]+ tok/s \| prompt (\d+) tokens, (\d+) reused[^\]]*\]"

    # two turns, /clear, /save, /load, Ctrl-D
    c = Chat("-m", tiny, "-t", "1", "-n", "12", "--temp", "0", "--system", "You are terse.")
    check(c.read_until(r"template chatml", 20), "banner names the template", c.out)
    check(c.read_until(r"> ", 20), "first prompt", c.out)
    c.send("Hello there\r")
    m1 = c.read_until(stats, 20)
    check(m1 is not None, "first reply with tok/s", c.out)
    check(c.read_until(r"> ", 10), "prompt after the first reply", c.out)
    c.send("And a second question?\r")
    m2 = c.read_until(stats, 20)
    check(m2 is not None, "second reply with tok/s", c.out)
    if m1 and m2:
        check(int(m2.group(3)) >= int(m1.group(2)) - 1,
              f"the second turn reuses the first turn's context ({m2.group(3)} reused, first prompt {m1.group(2)})", c.out)
        check(int(m2.group(1)) <= 12, "-n caps the reply", c.out)
    check(c.read_until(r"> ", 10), "prompt after the second reply", c.out)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "conv.json")
        c.send(f"/save {path}\r")
        check(c.read_until(r"\[saved 5 messages", 10), "/save writes system + two turns", c.out)
        c.send("/clear\r")
        check(c.read_until(r"\[conversation cleared\]", 10), "/clear", c.out)
        c.send("After clearing\r")
        m3 = c.read_until(stats, 20)
        check(m3 is not None, "a reply after /clear", c.out)
        if m1 and m3:
            check(int(m3.group(2)) < int(m2.group(2)) if m2 else True, "/clear forgets the history (shorter prompt)", c.out)
        c.send(f"/load {path}\r")
        check(c.read_until(r"\[loaded 5 messages", 10), "/load", c.out)
        c.send("/load /nonexistent/x.json\r")
        check(c.read_until(r"\[could not load", 10), "/load of a missing file is reported, not fatal", c.out)
        c.send("/bogus\r")
        check(c.read_until(r"unknown command /bogus", 10), "unknown command", c.out)
    c.send("\x04")  # Ctrl-D at an empty prompt quits
    status = c.wait_exit(10)
    check(status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"Ctrl-D exits with 0 (status {status})", c.out)

    # Ctrl-C stops a long reply and the chat goes on
    c = Chat("-m", small, "-t", "1", "--ignore-eos", "--seed", "5")
    check(c.read_until(r"> ", 20), "prompt (small model)", c.out)
    c.send("Tell me a long story\r")
    check(c.read_until(r"\S{8}", 20), "the reply starts streaming", c.out)
    c.send("\x03")
    m = c.read_until(stats.replace(r"[^\]]*\]", r"[^\]]*\| stopped\]"), 20)
    check(m is not None, "Ctrl-C stops the reply", c.out)
    check(c.read_until(r"> ", 10), "prompt after the stopped reply", c.out)
    time.sleep(0.3)
    c.send("\x03")  # at the prompt: a fresh line, still running
    time.sleep(0.2)
    c.send("/help\r")
    check(c.read_until(r"/clear +forget the conversation", 10), "Ctrl-C at the prompt keeps the chat", c.out)
    c.send("/quit\r")
    status = c.wait_exit(10)
    check(status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"/quit exits with 0 (status {status})", c.out)

    # a template the model does not have is refused with a clear error
    c = Chat("-m", tiny, "--chat-template", "vicuna")
    check(c.read_until(r"unknown chat template 'vicuna'", 20), "bad --chat-template", c.out)
    status = c.wait_exit(10)
    check(status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1, "bad --chat-template exits 1", c.out)

    # reasoning: a template whose generation prompt opens <think> (qwen35); the budget closes it
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("on", "off"):
            path = os.path.join(tmp, f"think_{mode}.json")
            p = subprocess.run([BIN, "chat", "-m", tiny, "-t", "1", "--chat-template", "qwen35", "--think", mode,
                                "--think-budget", "3", "-n", "10", "--temp", "0", "--ignore-eos"],
                               input=f"Hi\n/save {path}\n", capture_output=True, text=True, timeout=60 * SLOW)
            check(p.returncode == 0 and "template qwen35" in p.stdout, f"--think {mode}: runs", p.stdout + p.stderr)
            try:
                reply = json.load(open(path))["messages"][-1]
            except (OSError, ValueError, KeyError, IndexError):
                reply = {}
            check(reply.get("role") == "assistant", f"--think {mode}: reply saved", reply)
            if mode == "on":
                check("reasoning_content" in reply and reply.get("content"),
                      "--think-budget 3 closes the reasoning and the model answers", reply)
            else:
                check("reasoning_content" not in reply, "--think off: no reasoning", reply)
        p = subprocess.run([BIN, "chat", "-m", tiny, "--think", "maybe"], capture_output=True, text=True, timeout=30)
        check(p.returncode == 1 and "--think expects on, off or hide" in p.stderr, "bad --think", p.stderr)
        p = subprocess.run([BIN, "chat", "-m", tiny, "--tools", "python"], capture_output=True, text=True, timeout=30)
        check(p.returncode == 1 and "--tools expects bash" in p.stderr, "bad --tools", p.stderr)
        p = subprocess.run([BIN, "chat"], capture_output=True, text=True, timeout=30)
        check(p.returncode == 1 and "no model given" in p.stderr, "chat without a model", p.stderr)

    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
