#!/bin/sh
# Runs each fuzz target for SECONDS, starting from seeds made from the fixtures (fuzz/seeds.py) and
# from what earlier runs found (BUILD/corpus/NAME, kept between runs). Fails on any crash, leak,
# timeout, out-of-memory or sanitizer report; libFuzzer leaves the input that caused it in
# BUILD/crashes/ (once it is fixed, add that input to tests/regress/NAME/ so `make test` replays it).
# Usage: fuzz/run.sh BUILD_DIR FIXTURES_DIR SECONDS TARGET...
set -u
build=$1
fx=$(cd "$2" && pwd) || exit 1
secs=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
export MS_FIXTURES="$fx"
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
python3 "$here/seeds.py" "$fx" "$build/seeds" || exit 1
mkdir -p "$build/crashes"
fail=0
for t in "$@"; do
    mkdir -p "$build/corpus/$t"
    case $t in
    gguf) max_len=262144 ;;
    *) max_len=16384 ;;
    esac
    log="$build/fuzz-$t.log"
    "$build/fuzz_$t" -max_total_time="$secs" -timeout=30 -rss_limit_mb=2560 -max_len=$max_len \
        -dict="$here/$t.dict" -artifact_prefix="$build/crashes/$t-" -print_final_stats=1 \
        "$build/corpus/$t" "$build/seeds/$t" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    corpus=$(ls "$build/corpus/$t" | wc -l)
    if [ $rc -ne 0 ]; then
        echo "FAIL fuzz_$t (exit $rc after ${execs:-?} inputs; log $log):" >&2
        grep -E "ERROR|SUMMARY|fuzz invariant|Test unit written|==[0-9]+==" "$log" | head -20 >&2
        fail=1
    else
        echo "fuzz_$t: ${secs} s, ${execs:-?} inputs, ${cov:-cov: ?} edges, corpus $corpus, no findings"
    fi
done
exit $fail
