#!/bin/sh
# CLI behaviour: every bad input gives one clear line on stderr and exit status 1, never a crash;
# good input works. Usage: tests/cli.sh MOESTREAM_BINARY FIXTURES_DIR
bin=$1
fx=$2
tiny=$fx/tiny/qwen35moe/qwen35moe-f32.gguf
tmp=$(mktemp -d /tmp/ms_cli_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
checks=0

# expect_fail NAME NEEDLE CMD...: exit 1, stderr one line containing NEEDLE
expect_fail() {
    name=$1; needle=$2; shift 2
    checks=$((checks + 1))
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    lines=$(grep -c . "$tmp/err")
    if [ $rc -ne 1 ] || ! grep -q -- "$needle" "$tmp/err" || [ "$lines" -ne 1 ]; then
        echo "FAIL cli: $name: exit $rc, $lines stderr lines, expected 1 line with '$needle':" >&2
        head -5 "$tmp/err" >&2
        fails=$((fails + 1))
    fi
}

# expect_ok NAME NEEDLE CMD...: exit 0, stdout+stderr contain NEEDLE
expect_ok() {
    name=$1; needle=$2; shift 2
    checks=$((checks + 1))
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ $rc -ne 0 ] || ! cat "$tmp/out" "$tmp/err" | grep -q -- "$needle"; then
        echo "FAIL cli: $name: exit $rc, expected success with '$needle':" >&2
        head -5 "$tmp/err" >&2
        fails=$((fails + 1))
    fi
}

head -c 1000 "$tiny" >"$tmp/truncated.gguf"
head -c 3000000 "$tiny" >"$tmp/truncated_data.gguf"
printf 'not a gguf file at all, just text\n' >"$tmp/text.gguf"
: >"$tmp/empty.gguf"
printf '1 2 3 x\n' >"$tmp/bad_ids.txt"
printf '60 279 229 456\n' >"$tmp/ids.txt"
printf '99999\n' >"$tmp/big_id.txt"

checks=$((checks + 1))
"$bin" >/dev/null 2>"$tmp/err"
if [ $? -ne 1 ] || ! grep -q "usage" "$tmp/err"; then echo "FAIL cli: no arguments should print usage and exit 1" >&2; fails=$((fails + 1)); fi
expect_fail "unknown command" "unknown command 'frobnicate'" "$bin" frobnicate -m "$tiny"
expect_fail "unknown option" "unknown option '--bogus'" "$bin" run -m "$tiny" --bogus
expect_fail "missing value" "needs a value" "$bin" run -m
expect_fail "bad number" "expects an integer" "$bin" run -m "$tiny" -n many -p hi
expect_fail "no model" "no model given" "$bin" run -p hi
expect_fail "share above 1" "not auto or a share from 0 to 1" "$bin" run -m "$tiny" --cpu-share 1.5 -p hi
expect_fail "share not a number" "expects a number" "$bin" run -m "$tiny" --cpu-share most -p hi
expect_fail "missing file" "nonexistent.gguf: cannot open" "$bin" run -m "$tmp/nonexistent.gguf" -p hi
expect_fail "directory" "not a regular file" "$bin" info -m "$tmp"
expect_fail "empty file" "not a GGUF file" "$bin" info -m "$tmp/empty.gguf"
expect_fail "text file" "not a GGUF file" "$bin" info -m "$tmp/text.gguf"
expect_fail "truncated header" "truncated" "$bin" info -m "$tmp/truncated.gguf"
expect_fail "truncated data" "truncated" "$bin" run -m "$tmp/truncated_data.gguf" -p hi
expect_fail "budget below the dense weights" "the --mem budget of 10.0 MiB cannot hold the dense weights" \
    "$bin" run -m "$tiny" --io pagecache --mem 10M -p hi
expect_fail "budget without room for the cache" "raise --mem to at least" "$bin" run -m "$tiny" --mem 65M -p hi
# reads and allocations that fail (MS_FAULTS, src/util.h): one line, exit status 1
echo "read-eio" >"$tmp/faults"
expect_fail "read error at load" "Input/output error" env MS_FAULTS="$tmp/faults" "$bin" run -m "$tiny" --io pagecache -p hi
echo "read-eof 200" >"$tmp/faults"
expect_fail "file cut short while running" "was the file truncated" env MS_FAULTS="$tmp/faults" "$bin" run -m "$tiny" \
    --io pagecache --mem 68M -c 256 -p hi -n 8
echo "alloc 100" >"$tmp/faults"
expect_fail "allocation failure" "out of memory" env MS_FAULTS="$tmp/faults" "$bin" run -m "$tiny" -p hi
expect_fail "prompt beyond context" "context holds 8" "$bin" run -m "$tiny" -c 8 -p "The quick brown fox jumps over the lazy dog again and again"
expect_fail "empty prompt" "prompt is empty" "$bin" run -m "$tiny" -p ""
expect_fail "bad ids" "not a token id" "$bin" logits -m "$tiny" --ids "$tmp/bad_ids.txt" -o "$tmp/l.f32"
expect_fail "id out of range" "out of range" "$bin" logits -m "$tiny" --ids "$tmp/big_id.txt" -o "$tmp/l.f32"
expect_fail "experts beyond model" "exceeds the model's 16 experts" "$bin" run -m "$tiny" --experts-per-token 99 -p hi

expect_ok "info" "qwen35moe" "$bin" info -m "$tiny"
expect_ok "tokenize" "60 279 229 456" "$bin" tokenize -m "$tiny" "The quick brown fox"
expect_ok "run" "generation" "$bin" run -m "$tiny" -p "The quick brown fox" -n 8 --temp 0
expect_ok "run sampled" "generation" "$bin" run -m "$tiny" -p "Hello" -n 8 --temp 0.9 --top-k 20 --top-p 0.9 --min-p 0.01 --repeat-penalty 1.1 --seed 7
expect_ok "experts per token" "changes the output" "$bin" run -m "$tiny" --experts-per-token 2 -p hi -n 2
expect_ok "logits" "wrote 4 x 512" "$bin" logits -m "$tiny" --ids "$tmp/ids.txt" -o "$tmp/l.f32"
checks=$((checks + 1))
if [ "$(wc -c <"$tmp/l.f32")" -ne $((4 * 512 * 4)) ]; then echo "FAIL cli: logits file size" >&2; fails=$((fails + 1)); fi
# the same seed gives the same text
"$bin" run -m "$tiny" -p "Hello" -n 16 --temp 1 --seed 42 >"$tmp/a" 2>/dev/null
"$bin" run -m "$tiny" -p "Hello" -n 16 --temp 1 --seed 42 >"$tmp/b" 2>/dev/null
checks=$((checks + 1))
if ! cmp -s "$tmp/a" "$tmp/b"; then echo "FAIL cli: same seed, different text" >&2; fails=$((fails + 1)); fi

if [ $fails -ne 0 ]; then
    echo "cli: $fails of $checks checks FAILED" >&2
    exit 1
fi
echo "cli: $checks checks passed"
