#!/bin/sh
# Starts `moestream serve` on a free loopback port with a fixture model and runs the server tests
# against it: hostile and concurrent clients (tests/server_hostile.py), then the official openai
# npm client (tests/node/openai.mjs; skipped, with a note, only where node is absent). The server
# must still be up at the end and stop cleanly on SIGTERM.
# Usage: tests/server.sh MOESTREAM_BINARY FIXTURES_DIR
bin=$1
fx=$2
here=$(cd "$(dirname "$0")" && pwd)
model=$fx/tiny/qwen35moe/qwen35moe-f32.gguf
key=test-key-$$
tmp=$(mktemp -d /tmp/ms_server_XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
fail=0

# bad command lines: one clear line and exit status 1
for args in "--port 70000|expects an integer" "--host nowhere|is not an IP address" "--bogus|unknown option" \
    "--max-body lots|expects a size"; do
    opt=${args%%|*}
    want=${args#*|}
    # shellcheck disable=SC2086
    "$bin" serve -m "$model" $opt >"$tmp/o" 2>"$tmp/e"
    rc=$?
    if [ $rc -ne 1 ] || ! grep -q -- "$want" "$tmp/e" || [ "$(grep -c . "$tmp/e")" -ne 1 ]; then
        echo "FAIL server: 'serve $opt': exit $rc, expected one line with '$want':" >&2
        head -3 "$tmp/e" >&2
        fail=1
    fi
done
"$bin" serve --port 0 >"$tmp/o" 2>"$tmp/e"
if [ $? -ne 1 ] || ! grep -q "no model given" "$tmp/e"; then echo "FAIL server: serve without a model" >&2; fail=1; fi

"$bin" serve -m "$model" --host 127.0.0.1 --port 0 -t 1 --api-key "$key" >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=
i=0
while [ $i -lt 300 ]; do
    port=$(sed -n 's/.*on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/err")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
done
if [ -z "$port" ]; then
    echo "FAIL server: did not start:" >&2
    cat "$tmp/err" >&2
    exit 1
fi
base=http://127.0.0.1:$port
id=qwen35moe-f32

python3 "$here/server_hostile.py" "$base" "$key" "$id" || fail=1

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    if (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error >"$tmp/npm" 2>&1); then
        node "$here/node/openai.mjs" "$base/v1" "$key" "$id" || fail=1
    else
        echo "FAIL server: npm ci in tests/node failed:" >&2
        tail -5 "$tmp/npm" >&2
        fail=1
    fi
else
    echo "server: SKIPPED the openai client test: node/npm not found (install Node 20 to run it)"
fi

if ! kill -0 "$pid" 2>/dev/null; then
    echo "FAIL server: the server died during the tests:" >&2
    tail -20 "$tmp/err" >&2
    fail=1
    pid=
else
    kill -TERM "$pid"
    wait "$pid"
    rc=$?
    pid=
    if [ $rc -ne 0 ]; then
        echo "FAIL server: exit status $rc after SIGTERM:" >&2
        tail -20 "$tmp/err" >&2
        fail=1
    fi
fi
[ $fail -eq 0 ] && echo "server: all server tests passed"
exit $fail
