/* bench_gpu.c - prefill and decode throughput of a model on a backend (CUDA or CPU), the
 * llama-bench way: random token ids, warm-up first, repetitions, mean ± sd, settings and
 * device printed beside every number. For the GPU backend also the VRAM expert cache's hit
 * rate and the host-to-VRAM bytes per decoded token, and with the router lookahead (the GPU
 * backend's default while streaming; --lookahead asks for it, MS_CUDA_LOOKAHEAD=0|1 overrides)
 * the experts it prefetched and the share of lookups they served.
 *
 * Not a test (tests/test_cuda.c checks results). Decode feeds a new random id each step, as
 * llama-bench's tg does, so routing is not artificially repetitive.
 *
 * Build and run from the project root:
 *   make CUDA=1 build/cuda/bench_gpu
 *   ./build/cuda/bench_gpu -m model.gguf --gpu --gpu-mem 8G -p 512 -n 128 -r 3
 *   ./build/cuda/bench_gpu -m model.gguf --gpu-mem 24G -n 128 -r 3 -w 32 --lookahead
 *   ./build/cuda/bench_gpu -m model.gguf -n 32            # the CPU backend
 * Output: one line per test (pp N, tg N) with tok/s mean ± sd over -r repetitions, then a
 * JSON line per test (--json) for scripts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda.h"
#include "moestream.h"

#define MS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MS_MAX(a, b) ((a) > (b) ? (a) : (b))

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse_size(const char *s, uint64_t *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1048576.0; end++; break;
    case 'g': case 'G': mul = 1073741824.0; end++; break;
    }
    if (*end == 'i') end++;
    if (*end == 'B') end++;
    if (*end) return -1;
    *out = (uint64_t)(v * mul);
    return 0;
}

static uint64_t rng = 88172645463325252ull;
static int32_t rand_id(int nv) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (int32_t)(rng % (uint64_t)nv);
}

static void mean_sd(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

static void die(const char *what, const ms_error *err) {
    fprintf(stderr, "bench_gpu: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

int main(int argc, char **argv) {
    const char *model = NULL;
    int gpu = 0, n_prompt = 0, n_gen = 128, reps = 3, warmup = 16, n_ctx = 0, threads = 0, json = 0, device = 0, lookahead = 0;
    uint64_t gpu_mem = 0;
    float cpu_share = -1;
    const char *io = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-m") && v) model = v, i++;
        else if (!strcmp(a, "--gpu")) gpu = 1;
        else if (!strcmp(a, "--gpu-mem") && v) {
            if (parse_size(v, &gpu_mem)) die("--gpu-mem expects a size like 8G", NULL);
            gpu = 1, i++;
        } else if (!strcmp(a, "--gpu-device") && v) device = atoi(v), i++;
        else if (!strcmp(a, "-p") && v) n_prompt = atoi(v), i++;
        else if (!strcmp(a, "-n") && v) n_gen = atoi(v), i++;
        else if (!strcmp(a, "-r") && v) reps = atoi(v), i++;
        else if (!strcmp(a, "-w") && v) warmup = atoi(v), i++;
        else if (!strcmp(a, "-c") && v) n_ctx = atoi(v), i++;
        else if (!strcmp(a, "-t") && v) threads = atoi(v), i++;
        else if (!strcmp(a, "--io") && v) io = v, i++;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--lookahead")) lookahead = 1;
        else if (!strcmp(a, "--cpu-share") && v) cpu_share = strcmp(v, "auto") ? (float)atof(v) : -1, i++;
        else {
            fprintf(stderr, "usage: bench_gpu -m MODEL [--gpu] [--gpu-mem SIZE] [--gpu-device N] [-p N] [-n N] [-r N] [-w N] [-c N] [-t N] "
                            "[--io MODE] [--lookahead] [--cpu-share X|auto] [--json]\n");
            return 1;
        }
    }
    if (!model || reps < 1 || n_gen < 0 || n_prompt < 0) {
        fprintf(stderr, "bench_gpu: -m MODEL is required; -r >= 1\n");
        return 1;
    }
    ms_error err;
    ms_model *m;
    double t0 = now();
    ms_model_params mp;
    ms_model_params_default(&mp);
    mp.io = io ? io : gpu ? "mmap" : NULL; /* as the CLI: the GPU copies from the page-locked mapping */
    if (ms_model_load(model, &mp, &m, &err)) die(model, &err);
    ms_model_info info;
    ms_model_get_info(m, &info);
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.n_ctx = n_ctx ? n_ctx : MS_MAX(n_prompt + n_gen, warmup) + 16;
    cp.n_batch = n_prompt > 0 ? MS_MIN(n_prompt, 512) : 512;
    cp.n_threads = threads;
    cp.gpu = gpu;
    cp.gpu_mem = gpu_mem;
    cp.gpu_device = device;
    cp.lookahead = lookahead;
    cp.gpu_cpu_share = cpu_share;
    ms_context *c;
    if (ms_context_new(m, &cp, &c, &err)) die("context", &err);
    double t_load = now() - t0;
    int nv = ms_n_vocab(m);
    printf("model    %s (%s), %.2f GiB: %.2f GiB dense, %.2f GiB experts (%.2f MiB each), %d layers, top-%d of %d\n", model,
           info.arch, info.bytes_total / 1073741824.0, info.bytes_dense / 1073741824.0, info.bytes_experts / 1073741824.0,
           info.bytes_per_expert / 1048576.0, info.n_layer, info.n_expert_used, info.n_expert);
    printf("backend  %s", ms_context_backend(c));
    if (gpu) printf(", gpu-mem %s", gpu_mem ? "" : "all free");
    if (gpu && gpu_mem) printf("%.1f GiB", gpu_mem / 1073741824.0);
    const char *la_env = getenv("MS_CUDA_LOOKAHEAD");
    if (la_env && *la_env) printf(", MS_CUDA_LOOKAHEAD=%s", la_env);
    else printf(", %s", lookahead ? "--lookahead" : "lookahead as the backend's default");
    printf(", ctx %d, batch %d, load+context %.2f s\n", cp.n_ctx, cp.n_batch, t_load);

    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n_prompt + n_gen + warmup + 1));
    /* warm-up: a few decode steps (cache fill, clocks up); not timed */
    for (int i = 0; i < warmup; i++) {
        int32_t t = rand_id(nv);
        if (ms_eval(c, &t, 1, 0, &err)) die("warm-up", &err);
    }
    ms_context_reset(c);
    double *pp = malloc(sizeof(double) * reps), *tg = malloc(sizeof(double) * reps);
    double hit_sum = 0, bytes_tok = 0, cpu_tok = 0, h2d_gbs = 0, pf_hit_sum = 0, pf_tok = 0, pf_acc_sum = 0;
    int pf_reps = 0;
    for (int r = 0; r < reps; r++) {
        ms_context_reset(c);
        if (n_prompt > 0) {
            for (int i = 0; i < n_prompt; i++) ids[i] = rand_id(nv);
            double t1 = now();
            for (int done = 0; done < n_prompt;) {
                int b = MS_MIN(cp.n_batch, n_prompt - done);
                if (ms_eval(c, ids + done, b, 0, &err)) die("prompt", &err);
                done += b;
            }
            pp[r] = n_prompt / (now() - t1);
        }
        if (n_gen > 0) {
            ms_stats s0, s1;
            ms_context_stats(c, &s0);
            double t1 = now();
            for (int i = 0; i < n_gen; i++) {
                int32_t t = rand_id(nv);
                if (ms_eval(c, &t, 1, 0, &err)) die("decode", &err);
            }
            double dt = now() - t1;
            tg[r] = n_gen / dt;
            ms_context_stats(c, &s1);
            uint64_t pf0 = s0.gpu_prefetches, used0 = s0.gpu_prefetch_used, pf1 = s1.gpu_prefetches,
                     used1 = s1.gpu_prefetch_used;
            uint64_t req = s1.gpu_requests - s0.gpu_requests, hit = s1.gpu_hits - s0.gpu_hits;
            hit_sum += req ? (double)hit / req : 0;
            /* lookups a prefetch served (not in the hits, as the CPU's prefetch_used) */
            pf_hit_sum += req ? (double)(used1 - used0) / req : 0;
            pf_tok += (double)(pf1 - pf0) / n_gen;
            if (pf1 > pf0) pf_acc_sum += (double)(used1 - used0) / (pf1 - pf0), pf_reps++;
            if (r == reps - 1 && s1.t_attn + s1.t_route + s1.t_expert_compute > s0.t_attn + s0.t_route + s0.t_expert_compute)
                printf("phases   per token: attention %.3f ms, router+lookup %.3f ms, experts %.3f ms, other %.3f ms "
                       "(MS_CUDA_TIMING=1)\n",
                       (s1.t_attn - s0.t_attn) * 1e3 / n_gen, (s1.t_route - s0.t_route) * 1e3 / n_gen,
                       (s1.t_expert_compute - s0.t_expert_compute) * 1e3 / n_gen, (s1.t_other - s0.t_other) * 1e3 / n_gen);
            bytes_tok += (double)(s1.gpu_bytes_in - s0.gpu_bytes_in) / n_gen;
            cpu_tok += (double)(s1.gpu_cpu_experts - s0.gpu_cpu_experts) / n_gen;
            h2d_gbs += (s1.gpu_bytes_in - s0.gpu_bytes_in) / dt / 1e9;
        }
    }
    double mu, sd;
    if (n_prompt > 0) {
        mean_sd(pp, reps, &mu, &sd);
        printf("pp%-6d %10.2f ± %.2f tok/s\n", n_prompt, mu, sd);
        if (json)
            printf("{\"model\":\"%s\",\"backend\":\"%s\",\"gpu_mem\":%llu,\"test\":\"pp%d\",\"tok_s\":%.3f,\"sd\":%.3f,\"reps\":%d}\n", model,
                   ms_context_backend(c), (unsigned long long)gpu_mem, n_prompt, mu, sd, reps);
    }
    if (n_gen > 0) {
        mean_sd(tg, reps, &mu, &sd);
        printf("tg%-6d %10.2f ± %.2f tok/s", n_gen, mu, sd);
        if (gpu)
            printf("   VRAM cache hits %.1f%%, %.1f MiB copied in per token (%.1f GB/s)", 100 * hit_sum / reps, bytes_tok / reps / 1048576.0,
                   h2d_gbs / reps);
        if (gpu && cpu_tok > 0)
            printf("\n         host-computed misses: %.1f experts per token (%.1f%% of lookups)", cpu_tok / reps,
                   100 * cpu_tok / reps / ((double)info.n_layer * info.n_expert_used));
        if (pf_reps)
            printf("\n         lookahead: %.1f experts prefetched per token, %.1f%% of them routed to; prefetch hits %.1f%% of "
                   "lookups (%.1f%% in VRAM or prefetched)",
                   pf_tok / reps, 100 * pf_acc_sum / pf_reps, 100 * pf_hit_sum / reps, 100 * (hit_sum + pf_hit_sum) / reps);
        printf("\n");
        if (json)
            printf("{\"model\":\"%s\",\"backend\":\"%s\",\"gpu_mem\":%llu,\"test\":\"tg%d\",\"tok_s\":%.3f,\"sd\":%.3f,\"reps\":%d,"
                   "\"cache_hit\":%.4f,\"bytes_in_per_token\":%.0f,\"prefetch_hit\":%.4f,\"prefetch_per_token\":%.2f}\n",
                   model, ms_context_backend(c), (unsigned long long)gpu_mem, n_gen, mu, sd, reps, hit_sum / reps, bytes_tok / reps,
                   pf_hit_sum / reps, pf_tok / reps);
    }
    free(pp);
    free(tg);
    free(ids);
    ms_context_free(c);
    ms_model_free(m);
    return 0;
}
