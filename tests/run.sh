#!/bin/sh
# Runs every test binary in BUILD against the fixtures; exits non-zero if any fails.
# Usage: tests/run.sh BUILD_DIR FIXTURES_DIR
build=${1:-build}
fixtures=${2:-../shared/fixtures}
if [ ! -d "$fixtures" ]; then
    echo "tests: fixtures not found at $fixtures (expected ../shared/fixtures beside the checkout)" >&2
    exit 1
fi
fail=0
# tests that drive the CLI (e.g. a run under --mem) find the binary of this build here
[ -x "$build/moestream" ] && MS_BIN="$build/moestream" && export MS_BIN
for t in "$build"/test_*; do
    [ -x "$t" ] || continue
    if ! "$t" "$fixtures"; then
        echo "FAILED: $t" >&2
        fail=1
    fi
done
if [ -x "$build/moestream" ]; then
    # under TSan (MS_SANITIZED=thread) only the server runs threads of its own
    if [ "${MS_SANITIZED:-}" != thread ]; then
        "$(dirname "$0")/cli.sh" "$build/moestream" "$fixtures" || fail=1
        python3 "$(dirname "$0")/chat_pty.py" "$build/moestream" "$fixtures" || fail=1
    fi
    "$(dirname "$0")/server.sh" "$build/moestream" "$fixtures" || fail=1
fi
[ $fail -eq 0 ] && echo "all tests in $build passed"
exit $fail
