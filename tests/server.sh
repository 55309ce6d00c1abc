#!/bin/sh
# Starts `moestream serve` on a free loopback port with a fixture model and runs the server tests
# against it: hostile and concurrent clients (tests/server_hostile.py), then the official openai
# npm client (tests/node/openai.mjs; skipped, with a note, only where node is absent), then a second
# server whose reads and allocations fail (tests/server_faults.py). Each server must still be up at
# the end and stop cleanly on SIGTERM.
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
    "--max-body lots|expects a size" "--io pagecache --mem 10M|cannot hold the dense weights" \
    "--mem 65M|raise --mem to at least"; do
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

# wait_port: sets port once the server started as $pid prints it in $tmp/err, or fails the test
wait_port() {
    port=
    i=0
    while [ $i -lt 300 ]; do
        port=$(sed -n 's/.*on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/err" 2>/dev/null)
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
}

# stop_server: the server must still be up; SIGTERM must stop it with status 0
stop_server() {
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
}

"$bin" serve -m "$model" --host 127.0.0.1 --port 0 -t 1 --api-key "$key" >"$tmp/out" 2>"$tmp/err" &
pid=$!
wait_port
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

stop_server

# The server while its disk and memory fail (tests/server_faults.py): faults come from the file
# MS_FAULTS names; a 68M budget leaves a cache of about 16 experts, so every request reads experts.
: >"$tmp/faults"
MS_FAULTS="$tmp/faults" "$bin" serve -m "$model" --host 127.0.0.1 --port 0 -t 1 -c 256 --io pagecache --mem 68M \
    >"$tmp/out" 2>"$tmp/err" &
pid=$!
wait_port
python3 "$here/server_faults.py" "http://127.0.0.1:$port" "$id" "$tmp/faults" || fail=1
stop_server
[ $fail -eq 0 ] && echo "server: all server tests passed"
exit $fail
