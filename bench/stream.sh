#!/bin/sh
# bench/stream.sh - models larger than RAM: moestream against llama.cpp on the same synthetic
# GGUF, same threads, same machine, one script run (issue 6's table).
#
#   LLAMA_BIN=/path/to/llama.cpp/build/bin bench/stream.sh [OUT_DIR]
#
# Writes a synthetic qwen3next-80b-a3b at Q4_K (~45 GB) with uniform routing, then with skewed
# routing (Zipf exponent SKEW), and for each runs generation of N random token ids (as
# llama-bench does), cold (page cache dropped, fresh process) and warm (after a warm-up run):
#   moestream bench --io direct --mem MEM --lookahead
#   llama-batched-bench --no-repack (memory-mapped, weight repacking off: its default repack
#     copies the whole model into RAM and fails here)
# then the same under an 8 GiB cgroup-v1 memory limit (page cache counted), moestream with
# --mem MEM8. Needs root (drop_caches, cgroups) and ~50 GB of free disk in OUT_DIR.
# MODELS="skew uniform" picks (and orders) the models; an OUT_DIR/NAME.gguf already there is
# used as it is (and deleted after, unless KEEP=1). LLAMA_N: tokens per llama.cpp run (default
# N; its rate at 0.03-0.2 tok/s makes each token cost seconds to minutes).
set -eu
out=${1:-/tmp/ms-stream}
bin=${MS_BIN:-./moestream}
llama=${LLAMA_BIN:?set LLAMA_BIN to a llama.cpp build/bin directory}
N=${N:-32}
LLAMA_N=${LLAMA_N:-$N}
T=${THREADS:-2}
MEM=${MEM:-20G}
MEM8=${MEM8:-7.5G}
SKEW=${SKEW:-1.2}
PRESET=${PRESET:-qwen3next-80b-a3b}
mkdir -p "$out"
cc -O2 -pthread bench/disk.c -o "$out/disk"
res="$out/results.md"
: >"$res"
log() { echo "$@" | tee -a "$res"; }

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
load() { cut -d' ' -f1 /proc/loadavg; } # other work on the machine shows here

# run CMD inside the 8 GiB cgroup when CG is set
cg_run() {
    if [ -n "${CG:-}" ]; then
        sh -c 'echo $$ >/sys/fs/cgroup/memory/ms8g/cgroup.procs; exec "$@"' sh "$@"
    else
        "$@"
    fi
}

# moestream: bench prints one markdown row; keep t/s, hit rate, read GB/s, roofline, RSS
ms_run() { # label mem extra-args...
    label=$1 mem=$2
    shift 2
    row=$(cg_run "$bin" bench -m "$model" -p 0 -n "$N" -t "$T" --io direct --mem "$mem" --lookahead \
        --disk-bw "$disk" "$@" 2>/dev/null | tail -1)
    log "| $name | moestream --mem $mem | $label | $(echo "$row" | awk -F'|' '{print $9 "|" $10 "|" $11 "|" $12 "|" $13 "|" $14}') | $(load) |"
    echo "$row" | awk -F'|' '{gsub(/ /,"",$9); split($9,a,"±"); print a[1]}' >"$out/last_ms"
}

llama_run() { # label [quiet]
    label=$1
    cg_run "$llama/llama-batched-bench" -m "$model" -npp 1 -ntg "$LLAMA_N" -npl 1 -c 256 -t "$T" --no-repack \
        >"$out/llama.txt" 2>&1 || true
    tps=$(awk -F'|' '/^\| +1 \|/ {gsub(/ /,"",$9); print $9}' "$out/llama.txt" | tail -1)
    [ -n "$tps" ] || tps=failed
    [ -n "${2:-}" ] && return 0
    log "| $name | llama.cpp mmap, no repack | $label | $tps | - | - | - | - | - | $(load) |"
    echo "$tps" >"$out/last_llama"
}

ratio() { awk -v a="$(cat "$out/last_ms")" -v b="$(cat "$out/last_llama")" 'BEGIN { if (b + 0 > 0) printf "%.1fx", a / b; else print "-" }'; }

one_model() { # name skew
    name=$1
    model="$out/$name.gguf"
    [ -f "$model" ] || "$bin" synth --preset "$PRESET" --type Q4_K --skew "$2" -o "$model"
    drop
    disk=$("$out/disk" "$model" 1835008 32 5 2>/dev/null)
    log ""
    log "$name: $(du -h "$model" | cut -f1), disk random read (1.75 MB O_DIRECT, 32 in flight, measured now): $disk GB/s"
    for cgroup in "" 8G; do
        if [ -n "$cgroup" ]; then
            mkdir -p /sys/fs/cgroup/memory/ms8g
            echo 8G >/sys/fs/cgroup/memory/ms8g/memory.limit_in_bytes
            CG=1
            mem=$MEM8
            where="8 GiB cgroup"
        else
            CG=
            mem=$MEM
            where="$(free -g | awk '/Mem:/ {print $2}') GiB RAM"
        fi
        log ""
        log "| model ($where, $T threads, moestream tg$N, llama.cpp tg$LLAMA_N) | system | run | t/s | hit % | read GB/s | roofline t/s | % of roofline | peak RSS | load avg |"
        log "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        drop
        ms_run cold "$mem" --cold -r 1
        drop
        llama_run cold
        log "| | | cold speedup | $(ratio) | | | | | | |"
        drop
        ms_run warm "$mem" -r 2
        drop
        llama_run warm-up quiet
        llama_run warm
        log "| | | warm speedup | $(ratio) | | | | | | |"
    done
    [ "$2" = 0 ] || policies
    [ -n "${KEEP:-}" ] || rm -f "$model"
}

# On skewed routing under the 8 GiB cgroup, warm: residency mode x eviction policy x lookahead,
# moestream alone (the choices behind the defaults), with a budget MEMP tight enough that the
# cache must evict within NP tokens (at MEM8 the working set of N tokens fits and all tie).
policies() {
    CG=1
    memp=${MEMP:-4G} np=${NP:-64}
    log ""
    log "| $name, 8 GiB cgroup, --mem $memp, warm, tg$np | io | evict | lookahead | t/s | hit % | read GB/s | roofline t/s | % of roofline | peak RSS | load avg |"
    log "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for io in direct pagecache; do
        for ev in lru lfu; do
            for la in --lookahead --no-lookahead; do
                drop
                row=$(cg_run "$bin" bench -m "$model" -p 0 -n "$np" -t "$T" --io "$io" --evict "$ev" --mem "$memp" $la \
                    --disk-bw "$disk" -r 2 2>/dev/null | tail -1)
                log "| | $io | $ev | ${la#--} | $(echo "$row" | awk -F'|' '{print $9 "|" $10 "|" $11 "|" $12 "|" $13 "|" $14}') | $(load) |"
            done
        done
    done
    CG=
}

log "moestream $(git rev-parse --short HEAD 2>/dev/null), $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
for m in ${MODELS:-uniform skew}; do
    case $m in
    uniform) one_model uniform 0 ;;
    skew) one_model skew"$SKEW" "$SKEW" ;;
    *) echo "unknown model '$m' in MODELS (uniform, skew)" >&2; exit 1 ;;
    esac
done
echo "results in $res"
