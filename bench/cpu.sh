#!/bin/sh
# bench/cpu.sh - CPU speed against llama.cpp, same GGUF, same threads, one script run.
#
#   LLAMA_BIN=/path/to/llama.cpp/build/bin bench/cpu.sh [OUT_DIR]
#
# 1. small/qwen35moe Q4_K_M fixture: tg128 (issue 2's decode number)
# 2. a model that fits in RAM: synthetic qwen3-30b-a3b at Q4_K cut to 22 layers (~8.5 GB):
#    pp512 and tg128 (llama-bench with its defaults: it fits, so repacking is what users get),
#    ROUNDS times (default 3), the two taking turns
# 3. with BIG=path: pp512 on a model larger than RAM (e.g. bench/stream.sh's 45 GB
#    qwen3next-80b-a3b), moestream --io direct --mem MEM against llama.cpp memory-mapped with
#    repacking off (llama-batched-bench, which reads random ids like llama-bench), page cache
#    dropped before each.
set -eu
out=${1:-/tmp/ms-cpu}
bin=${MS_BIN:-./moestream}
llama=${LLAMA_BIN:?set LLAMA_BIN to a llama.cpp build/bin directory}
fx=${FIXTURES:-../shared/fixtures}
T=${THREADS:-2}
R=${REPS:-3}
ROUNDS=${ROUNDS:-3}
MEM=${MEM:-20G}
mkdir -p "$out"
res="$out/cpu.md"
: >"$res"
log() { echo "$@" | tee -a "$res"; }
load() { cut -d' ' -f1 /proc/loadavg; }
ms_tps() { awk -F'|' '/\| (pp|tg)[0-9]/ {gsub(/ /,"",$9); split($9,a,"±"); print $8 ": " a[1] " ± " a[2]}'; }
ll_tps() { awk -F'|' '/ (pp|tg)[0-9]+ / {gsub(/ /,"",$(NF-1)); split($(NF-1),a,"±"); t=$(NF-2); gsub(/ /,"",t); print t ": " a[1] " ± " a[2]}'; }

log "moestream $(git rev-parse --short HEAD 2>/dev/null), $T threads, $R repetitions, $(date -u +%Y-%m-%dT%H:%MZ)"
small=$fx/small/qwen35moe/qwen35moe-Q4_K_M.gguf
log ""
log "## small/qwen35moe Q4_K_M, tg128 (load avg $(load))"
log "- moestream: $("$bin" bench -m "$small" -p 0 -n 128 -r "$R" -t "$T" 2>/dev/null | ms_tps)"
log "- llama.cpp: $("$llama/llama-bench" -m "$small" -p 0 -n 128 -r "$R" -t "$T" 2>/dev/null | ll_tps)"

fit=$out/qwen3-30b-a3b-22l-q4k.gguf
[ -f "$fit" ] || "$bin" synth --preset qwen3-30b-a3b --layers 22 --type Q4_K -o "$fit"
log ""
log "## synthetic qwen3-30b-a3b, 22 layers, Q4_K ($(du -hL "$fit" | cut -f1)): pp512, tg128 (load avg $(load))"
# ROUNDS rounds, the two programs taking turns, so a change in the shared machine's speed
# during the script falls on both; the ratio is of the means over the rounds
for i in $(seq "$ROUNDS"); do
    "$bin" bench -m "$fit" -p 512 -n 128 -r "$R" -t "$T" 2>/dev/null >"$out/ms_fit.txt"
    "$llama/llama-bench" -m "$fit" -p 512 -n 128 -r "$R" -t "$T" 2>/dev/null >"$out/ll_fit.txt"
    [ "$i" = 1 ] && log "- moestream residency: $(awk -F'|' '/\| (pp|tg)[0-9]/ {gsub(/ /, "", $3); print $3; exit}' "$out/ms_fit.txt") (its default for a model that fits in RAM)"
    log "- round $i, moestream: $(ms_tps <"$out/ms_fit.txt" | tr '\n' ' ')"
    log "- round $i, llama.cpp: $(ll_tps <"$out/ll_fit.txt" | tr '\n' ' ')"
done
awk '/round [0-9]+, / {p = $4 == "moestream:" ? "ms" : "ll"; for (f = 5; f <= NF; f++) if ($f ~ /^(pp|tg)[0-9]+:?$/) {k = $f; sub(/:/, "", k); v = $(f + 1) == ":" ? $(f + 2) : $(f + 1); s[p, k] += v; n[p, k]++; t[k] = 1}}
     END {for (k in t) if (n["ms", k] && n["ll", k]) printf "- %s mean of %d rounds: moestream %.2f, llama.cpp %.2f, ratio %.2f\n", k, n["ms", k],
          s["ms", k] / n["ms", k], s["ll", k] / n["ll", k], (s["ms", k] / n["ms", k]) / (s["ll", k] / n["ll", k])}' "$res" | sort | tee -a "$res"

if [ -n "${BIG:-}" ]; then
    log ""
    log "## $(basename "$BIG") ($(du -hL "$BIG" | cut -f1)), pp512, cold (load avg $(load), disk ${DISK_BW:-1.42} GB/s)"
    sync; echo 3 >/proc/sys/vm/drop_caches
    "$bin" bench -m "$BIG" -p 512 -n 0 -r 1 --no-warmup -t "$T" --io direct --mem "$MEM" --disk-bw "${DISK_BW:-1.42}" \
        2>/dev/null >"$out/ms_big.txt"
    # the roofline: the expert bytes the batch read, once each, at DISK_BW GB/s (bench/disk.c measures it)
    log "- moestream --io direct --mem $MEM: $(ms_tps <"$out/ms_big.txt") | read GB/s, roofline t/s, % of roofline: \
$(awk -F'|' '/\| pp[0-9]/ {print $11 "," $12 "," $13}' "$out/ms_big.txt")"
    sync; echo 3 >/proc/sys/vm/drop_caches
    "$llama/llama-batched-bench" -m "$BIG" -npp 512 -ntg 1 -npl 1 -c 600 -t "$T" --no-repack >"$out/ll_big.txt" 2>&1 || true
    log "- llama.cpp mmap, no repack: pp512: $(awk -F'|' '/^\| +512 \|/ {gsub(/ /,"",$7); print $7}' "$out/ll_big.txt")"
fi
echo "results in $res"
