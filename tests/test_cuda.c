/* test_cuda.c - the CUDA backend against the scalar CPU path (the reference) and the fixtures'
 * own bounds.
 *
 * 1. Kernels, one at a time through cuda.h's hooks: GPU dequantization equals the scalar
 *    reference bit for bit for every type; GPU products (matrix-vector and tiled) agree with
 *    double-precision sums of the reference weights.
 * 2. Whole models, every fixture architecture and quant type: GPU logits against the scalar CPU
 *    path's, max KL <= 1e-5, with all experts in VRAM, with a cache of a few slots (evictions,
 *    batches split into waves) copying from page-locked memory, and through pinned staging
 *    buffers with small batches; the last two again with the router lookahead (decode prefetches
 *    the next layer's predicted experts into that small cache); the small cache again with every
 *    decode miss computed on the host (MS_CUDA_CPU_SHARE=1; the others adapt the share, except
 *    "few slots", which has none). Plus the core tests' bounds on the GPU: tiny fixtures against
 *    transformers (max KL <= 1e-4, the 24 greedy ids), small quantized files no worse than
 *    llama.cpp's logits, and prefix reuse (checkpoint, rewind).
 *
 * Without a GPU, or in a build without CUDA (the default `make test`), it prints
 * "test_cuda: skipped: <reason>" and exits 0. MS_FIXTURES_PARTIAL=1 skips fixture files that
 * are missing instead of failing (the GPU machine receives the fixtures in parts).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda.h"
#include "moestream.h"
#include "quant.h"
#include "testlib.h"

static uint64_t pf_total, pf_used_total; /* the lookahead configurations' prefetches, all files */
static uint64_t cpu_total;               /* misses computed on the host, all files */

static int partial;

static int have(const char *rel) {
    if (t_exists(t_path(rel))) return 1;
    if (!partial) CHECK(0, "missing fixture %s", rel);
    return 0;
}

static uint64_t rng = 0x243F6A8885A308D3ull;
static uint32_t rnd(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 32);
}
static float frand(void) { return (float)rnd() / 4294967296.0f * 2.0f - 1.0f; }

/* ------------------------------------------------------------------ kernels */

/* GPU dequantization of rows[n_rows][n_in] equals quant_dequant_ref bit for bit (NaN = NaN). */
static void check_dequant(int type, const uint8_t *rows, size_t row_bytes, int n_rows, int n_in, const char *what) {
    size_t n = (size_t)n_rows * n_in;
    float *want = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
    for (int r = 0; r < n_rows; r++) quant_dequant_ref(type, rows + (size_t)r * row_bytes, want + (size_t)r * n_in, n_in);
    int rc = cuda_test_dequant(type, rows, row_bytes, n_rows, n_in, got);
    CHECK(rc == 0, "%s %s: GPU dequantization failed", quant_name(type), what);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int same = memcmp(&want[i], &got[i], sizeof(float)) == 0 || (isnan(want[i]) && isnan(got[i]));
        if (!same && !bad++) first = i;
    }
    CHECK(bad == 0, "%s %s: %zu of %zu values differ from the reference, first at %zu: %.9g vs %.9g", quant_name(type), what,
          bad, n, first, bad ? want[first] : 0.0, bad ? got[first] : 0.0);
    free(want);
    free(got);
}

/* GPU products for several token counts against double sums over the reference weights. */
static void check_matmul(int type, const uint8_t *rows, size_t row_bytes, int n_out, int n_in, const char *what) {
    static const int toks[] = {1, 2, 3, 8, 9, 70};
    float *w = malloc(sizeof(float) * (size_t)n_out * n_in);
    for (int r = 0; r < n_out; r++) quant_dequant_ref(type, rows + (size_t)r * row_bytes, w + (size_t)r * n_in, n_in);
    for (size_t k = 0; k < sizeof toks / sizeof toks[0]; k++) {
        int nt = toks[k];
        float *x = malloc(sizeof(float) * (size_t)nt * n_in), *y = malloc(sizeof(float) * (size_t)nt * n_out);
        for (size_t i = 0; i < (size_t)nt * n_in; i++) x[i] = frand();
        int rc = cuda_test_matmul(type, rows, row_bytes, n_in, n_out, x, nt, y);
        CHECK(rc == 0, "%s %s: GPU product for %d tokens failed", quant_name(type), what, nt);
        double worst = 0;
        for (int t = 0; t < nt && rc == 0; t++)
            for (int r = 0; r < n_out; r++) {
                double s = 0, mag = 0;
                for (int i = 0; i < n_in; i++) {
                    double p = (double)w[(size_t)r * n_in + i] * x[(size_t)t * n_in + i];
                    s += p;
                    mag += fabs(p);
                }
                double err = fabs(s - y[(size_t)t * n_out + r]) / (mag + 1e-30);
                if (err > worst) worst = err;
            }
        CHECK(worst <= 1e-5, "%s %s: %d tokens: relative error %.3g > 1e-5", quant_name(type), what, nt, worst);
        free(x);
        free(y);
    }
    free(w);
}

static void check_kernels(void) {
    /* the fixture rows of real quantized tensors */
    static const char *names[] = {"BF16", "F16", "IQ4_XS", "MXFP4", "Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char rel[64];
        snprintf(rel, sizeof rel, "quant/%s.raw", names[i]);
        if (!have(rel)) continue;
        size_t len = 0;
        uint8_t *raw = t_read_file(t_path(rel), &len);
        int type = ms_type_from_name(names[i]);
        const ms_type_info *ti = quant_info(type);
        CHECK(raw && ti, "%s: cannot read", rel);
        if (!raw || !ti) continue;
        int n_in = 256;
        size_t rb = quant_row_bytes(type, n_in);
        int rows = (int)(len / rb);
        check_dequant(type, raw, rb, rows, n_in, "fixture rows");
        check_matmul(type, raw, rb, rows, n_in, "fixture rows");
        /* the same bytes as rows four times wider: several blocks per row */
        check_matmul(type, raw, 4 * rb, rows / 4, 4 * n_in, "wide rows");
        free(raw);
    }
    /* the other types the backend runs, from random codes with sane scales */
    static const int more[] = {MS_TYPE_F32, MS_TYPE_Q4_1, MS_TYPE_Q5_0, MS_TYPE_Q5_1, MS_TYPE_IQ4_NL};
    for (size_t k = 0; k < sizeof more / sizeof more[0]; k++) {
        int type = more[k], n_in = 512, n_out = 96;
        size_t rb = quant_row_bytes(type, n_in);
        uint8_t *raw = malloc(rb * n_out);
        if (type == MS_TYPE_F32) {
            for (size_t i = 0; i < (size_t)n_in * n_out; i++) {
                float v = frand();
                memcpy(raw + 4 * i, &v, 4);
            }
        } else {
            const ms_type_info *ti = quant_info(type);
            for (size_t i = 0; i < rb * n_out; i++) raw[i] = (uint8_t)rnd();
            for (size_t b = 0; b < rb * n_out; b += (size_t)ti->block_bytes) {
                uint16_t d = ms_f32_to_f16(0.001f + 0.05f * (frand() + 1)), m = ms_f32_to_f16(0.05f * frand());
                memcpy(raw + b, &d, 2);
                if (type == MS_TYPE_Q4_1 || type == MS_TYPE_Q5_1) memcpy(raw + b + 2, &m, 2);
            }
        }
        check_dequant(type, raw, rb, n_out, n_in, "random rows");
        check_matmul(type, raw, rb, n_out, n_in, "random rows");
        free(raw);
    }
    printf("  kernels: dequantization exact, products within 1e-5 for every type\n");
}

/* ------------------------------------------------------------------ models */

typedef struct run_cfg {
    int gpu;
    int n_batch;
    const char *slots;   /* MS_CUDA_CACHE_SLOTS, or NULL */
    const char *staging; /* MS_CUDA_STAGING, or NULL */
    const char *graphs;  /* MS_CUDA_GRAPHS, or NULL */
    const char *look;    /* MS_CUDA_LOOKAHEAD: "1" prefetch, "0" not (whatever the default) */
    const char *cpu;     /* MS_CUDA_CPU_SHARE: NULL adapts, "0" no host-computed misses, "1" all */
} run_cfg;

static void set_env(const char *name, const char *v) {
    if (v) setenv(name, v, 1);
    else unsetenv(name);
}

#define N_DECODE 6

/* Logits of the prompt (all positions, fed n_batch at a time) then of N_DECODE single tokens,
 * [n_prompt + N_DECODE][n_vocab] (malloc'd), or NULL. */
static float *run_logits(const char *path, const run_cfg *cfg, const int *prompt, int n_prompt, int *nv_out) {
    set_env("MS_CUDA_CACHE_SLOTS", cfg->slots);
    set_env("MS_CUDA_STAGING", cfg->staging);
    set_env("MS_CUDA_GRAPHS", cfg->graphs);
    set_env("MS_CUDA_LOOKAHEAD", cfg->look);
    set_env("MS_CUDA_CPU_SHARE", cfg->cpu);
    ms_model *m = NULL;
    ms_error err;
    float *out = NULL;
    if (ms_model_load(path, NULL, &m, &err)) {
        CHECK(0, "%s: load failed: %s", path, err.msg);
        return NULL;
    }
    int nv = ms_n_vocab(m);
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.n_ctx = 256;
    cp.n_batch = cfg->n_batch;
    cp.gpu = cfg->gpu;
    ms_context *c = NULL;
    if (ms_context_new(m, &cp, &c, &err)) {
        CHECK(0, "%s: context (%s): %s", path, cfg->gpu ? "gpu" : "cpu", err.msg);
        goto done;
    }
    int n = n_prompt + N_DECODE;
    if (n > 512) n_prompt = 512 - N_DECODE, n = 512;
    out = malloc(sizeof(float) * (size_t)n * nv);
    int32_t ids[512];
    for (int i = 0; i < n_prompt; i++) ids[i] = prompt[i];
    for (int i = 0; i < N_DECODE; i++) ids[n_prompt + i] = (int32_t)((17 + 31 * i) % nv);
    for (int done = 0; done < n;) {
        int b = done < n_prompt ? MS_MIN(cfg->n_batch, n_prompt - done) : 1;
        if (ms_eval(c, ids + done, b, 1, &err)) {
            CHECK(0, "%s: eval: %s", path, err.msg);
            free(out);
            out = NULL;
            break;
        }
        for (int i = 0; i < b; i++) memcpy(out + (size_t)(done + i) * nv, ms_logits(c, i), sizeof(float) * nv);
        done += b;
    }
    ms_stats st;
    ms_context_stats(c, &st);
    pf_total += st.gpu_prefetches;
    pf_used_total += st.gpu_prefetch_used;
    cpu_total += st.gpu_cpu_experts;
    ms_context_free(c);
done:
    ms_model_free(m);
    unsetenv("MS_CUDA_CACHE_SLOTS");
    unsetenv("MS_CUDA_STAGING");
    unsetenv("MS_CUDA_GRAPHS");
    unsetenv("MS_CUDA_LOOKAHEAD");
    unsetenv("MS_CUDA_CPU_SHARE");
    *nv_out = nv;
    return out;
}

static int worst_pos; /* where the last max_kl found its maximum */
static double max_kl(const float *ref, const float *got, int n, int nv, int *argmax) {
    double worst = 0;
    int agree = 0;
    worst_pos = 0;
    for (int i = 0; i < n; i++) {
        double kl = t_kl(ref + (size_t)i * nv, got + (size_t)i * nv, nv);
        if (isnan(kl)) kl = INFINITY;
        if (kl > worst) worst = kl, worst_pos = i;
        agree += t_argmax(ref + (size_t)i * nv, nv) == t_argmax(got + (size_t)i * nv, nv);
    }
    if (argmax) *argmax = agree;
    return worst;
}

/* GPU against the scalar CPU path in six cache/transfer/lookahead configurations; returns the
 * GPU logits of the default configuration (caller frees). */
static float *check_agreement(const char *rel, const int *prompt, int n_prompt, int *nv_out) {
    char path[4096];
    snprintf(path, sizeof path, "%s", t_path(rel));
    quant_force_isa("scalar");
    run_cfg cpu = {0, 512, NULL, NULL, NULL, NULL, NULL};
    int nv = 0;
    float *ref = run_logits(path, &cpu, prompt, n_prompt, &nv);
    if (quant_force_isa("avx512") && quant_force_isa("avx2")) quant_force_isa("scalar");
    if (!ref) return NULL;
    /* every expert in VRAM (decode as one graph replay per token, or kernel by kernel); a cache
     * of 2 * top-k slots (prefill in waves, evictions), copies from page-locked memory; the same
     * through pinned staging buffers, with batches of 5; both again with the router lookahead
     * (its prefetches compete with the misses for those few slots), the second kernel by kernel */
    const run_cfg gpus[] = {{1, 512, NULL, NULL, NULL, "0", NULL}, {1, 512, NULL, NULL, "0", "0", NULL},
                            {1, 512, "1", NULL, NULL, "0", "0"},   {1, 5, "1", "1", NULL, "0", NULL},
                            {1, 512, "1", NULL, NULL, "1", NULL},  {1, 5, "1", "1", "0", "1", NULL},
                            {1, 512, "1", NULL, NULL, "1", "1"}};
    const char *label[] = {"resident", "no graph", "few slots", "staged b5", "lookahead", "look staged", "host misses"};
    const int n_cfg = (int)(sizeof gpus / sizeof gpus[0]);
    float *keep = NULL;
    uint64_t pf0 = pf_total, used0 = pf_used_total;
    printf("  %-42s", rel);
    for (int g = 0; g < n_cfg; g++) {
        int nv2 = 0;
        float *got = run_logits(path, &gpus[g], prompt, n_prompt, &nv2);
        if (!got) continue;
        int agree = 0, n = n_prompt + N_DECODE;
        double kl = max_kl(ref, got, n, nv, &agree);
        CHECK(kl <= 1e-5, "%s (%s): GPU vs scalar CPU max KL %.3g > 1e-5 at position %d of %d (%d prompt; argmax %d/%d)", rel,
              label[g], kl, worst_pos, n, n_prompt, agree, n);
        printf(" %s %.1e", label[g], kl);
        if (g == 0) keep = got;
        else free(got);
    }
    printf(" (prefetched %llu, used %llu)\n", (unsigned long long)(pf_total - pf0), (unsigned long long)(pf_used_total - used0));
    free(ref);
    *nv_out = nv;
    return keep;
}

static void check_tiny(const char *arch, const char *dtype) {
    char rel[256];
    snprintf(rel, sizeof rel, "tiny/%s/%s-%s.gguf", arch, arch, dtype);
    if (!have(rel)) return;
    char jrel[256];
    snprintf(jrel, sizeof jrel, "tiny/%s/ref.json", arch);
    char *json = t_read_file(t_path(jrel), NULL);
    CHECK(json != NULL, "cannot read %s", jrel);
    if (!json) return;
    int n_prompt = 0, n_greedy = 0;
    int *prompt = t_json_ints(json, "prompt_ids", &n_prompt);
    int *greedy = t_json_ints(json, "greedy_ids", &n_greedy);
    int nv = 0;
    float *gpu = check_agreement(rel, prompt, n_prompt, &nv);
    /* the core test's bounds, on the GPU: transformers' logits and greedy ids */
    snprintf(jrel, sizeof jrel, "tiny/%s/logits.f32", arch);
    size_t len = 0;
    float *tf = t_read_file(t_path(jrel), &len);
    if (gpu && tf && len == (size_t)n_prompt * nv * sizeof(float)) {
        double kl = max_kl(tf, gpu, n_prompt, nv, NULL);
        CHECK(kl <= 1e-4, "%s %s on the GPU: max KL %.3g against transformers > 1e-4", arch, dtype, kl);
        ms_model *m;
        ms_error err;
        char path[4096];
        snprintf(path, sizeof path, "%s", t_path(rel));
        if (ms_model_load(path, NULL, &m, &err) == MS_OK) {
            ms_context_params cp;
            ms_context_params_default(&cp);
            cp.n_ctx = 256;
            cp.gpu = 1;
            ms_context *c;
            int match = 0;
            if (ms_context_new(m, &cp, &c, &err) == MS_OK) {
                int32_t ids[256];
                for (int i = 0; i < n_prompt; i++) ids[i] = prompt[i];
                if (ms_eval(c, ids, n_prompt, 0, &err) == MS_OK)
                    for (int g = 0; g < n_greedy; g++) {
                        int32_t tok = (int32_t)t_argmax(ms_logits(c, -1), nv);
                        if (tok != greedy[g]) break;
                        match++;
                        if (ms_eval(c, &tok, 1, 0, &err)) break;
                    }
                ms_context_free(c);
            }
            CHECK(match == n_greedy, "%s %s on the GPU: greedy ids match for %d of %d tokens", arch, dtype, match, n_greedy);
            printf("  %-42s transformers max KL %.2e, greedy %d/%d\n", "", kl, match, n_greedy);
            ms_model_free(m);
        }
    } else {
        CHECK(0, "%s: no GPU logits or transformers logits to compare", rel);
    }
    free(tf);
    free(gpu);
    free(prompt);
    free(greedy);
    free(json);
}

static void check_small(const char *arch, const char *quant) {
    char rel[256], jrel[256];
    snprintf(rel, sizeof rel, "small/%s/%s-%s.gguf", arch, arch, quant);
    if (!have(rel)) return;
    snprintf(jrel, sizeof jrel, "small/%s/ref.json", arch);
    char *json = t_read_file(t_path(jrel), NULL);
    CHECK(json != NULL, "cannot read %s", jrel);
    if (!json) return;
    int n_prompt = 0;
    int *prompt = t_json_ints(json, "prompt_ids", &n_prompt);
    int nv = 0;
    float *gpu = check_agreement(rel, prompt, n_prompt, &nv);
    /* no worse than llama.cpp's logits on the same file, against the file's exact reference */
    if (!strcmp(quant, "bf16")) snprintf(jrel, sizeof jrel, "small/%s/logits.f32", arch);
    else snprintf(jrel, sizeof jrel, "small/%s/%s-%s.exact-logits.f32", arch, arch, quant);
    size_t le = 0, ll = 0, want = (size_t)n_prompt * nv * sizeof(float);
    float *exact = t_read_file(t_path(jrel), &le);
    snprintf(jrel, sizeof jrel, "small/%s/%s-%s.llamacpp-logits.f32", arch, arch, quant);
    float *llama = t_read_file(t_path(jrel), &ll);
    if (gpu && exact && llama && le == want && ll == want) {
        int ours_a = 0, theirs_a = 0;
        double ours = max_kl(exact, gpu, n_prompt, nv, &ours_a), theirs = max_kl(exact, llama, n_prompt, nv, &theirs_a);
        CHECK(ours <= theirs, "%s %s on the GPU: max KL %.3g is above llama.cpp's %.3g", arch, quant, ours, theirs);
        CHECK(ours_a >= theirs_a, "%s %s on the GPU: argmax agreement %d below llama.cpp's %d", arch, quant, ours_a, theirs_a);
        printf("  %-42s exact max KL %.2e (llama.cpp %.2e), argmax %d/%d (llama.cpp %d)\n", "", ours, theirs, ours_a, n_prompt,
               theirs_a);
    } else {
        CHECK(0, "%s: reference logits missing or of the wrong size", rel);
    }
    free(exact);
    free(llama);
    free(gpu);
    free(prompt);
    free(json);
}

/* Prefix reuse on the GPU, as test_model.c checks it on the CPU. */
static void check_rewind(const char *arch) {
    char rel[256], path[4096];
    snprintf(rel, sizeof rel, "tiny/%s/%s-f32.gguf", arch, arch);
    if (!have(rel)) return;
    snprintf(path, sizeof path, "%s", t_path(rel));
    ms_model *m;
    ms_error err;
    if (ms_model_load(path, NULL, &m, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    int nv = ms_n_vocab(m);
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.gpu = 1;
    ms_context *c;
    if (ms_context_new(m, &cp, &c, &err)) {
        CHECK(0, "%s", err.msg);
        ms_model_free(m);
        return;
    }
    int32_t a[12], b[7];
    for (int i = 0; i < 12; i++) a[i] = (int32_t)(17 + 31 * i) % nv;
    for (int i = 0; i < 7; i++) b[i] = (int32_t)(5 + 13 * i) % nv;
    ms_eval(c, a, 8, 0, &err);
    CHECK(ms_context_checkpoint(c, &err) == MS_OK, "checkpoint: %s", err.msg);
    ms_eval(c, a + 8, 4, 0, &err);
    float *first = malloc(sizeof(float) * nv);
    memcpy(first, ms_logits(c, -1), sizeof(float) * nv);
    int recurrent = strcmp(arch, "qwen3moe") != 0;
    CHECK(ms_context_resume_point(c, 10) == (recurrent ? 8 : 10), "%s: resume point %d", arch, ms_context_resume_point(c, 10));
    CHECK(ms_context_rewind(c, 8, &err) == MS_OK, "rewind: %s", err.msg);
    ms_eval(c, b, 7, 0, &err);
    CHECK(ms_context_rewind(c, 8, &err) == MS_OK, "second rewind: %s", err.msg);
    ms_eval(c, a + 8, 4, 0, &err);
    CHECK(!memcmp(first, ms_logits(c, -1), sizeof(float) * nv), "%s on the GPU: logits after rewind differ", arch);
    CHECK(ms_context_pos(c) == 12, "position %d after rewind and eval", ms_context_pos(c));
    CHECK(!strcmp(ms_context_backend(c), "cuda"), "backend is %s", ms_context_backend(c));
    free(first);
    ms_context_free(c);
    ms_model_free(m);
}

/* A budget that cannot hold the dense weights fails with a clear message. */
static void check_budget(void) {
    const char *rel = "tiny/qwen35moe/qwen35moe-f32.gguf";
    if (!have(rel)) return;
    char path[4096];
    snprintf(path, sizeof path, "%s", t_path(rel));
    ms_model *m;
    ms_error err;
    if (ms_model_load(path, NULL, &m, &err)) return;
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.gpu = 1;
    cp.gpu_mem = 1 << 20;
    ms_context *c = NULL;
    ms_status st = ms_context_new(m, &cp, &c, &err);
    CHECK(st == MS_ERR_BUDGET && strstr(err.msg, "--gpu-mem"), "a 1 MiB budget: status %d, '%s'", st, st ? err.msg : "");
    ms_context_free(c);
    ms_model_free(m);
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    char dev[256];
    if (!ms_backend_cuda()) {
        printf("test_cuda: skipped: built without CUDA (make CUDA=1)\n");
        return 0;
    }
    if (cuda_device_count(dev, sizeof dev) <= 0) {
        printf("test_cuda: skipped: no GPU (%s)\n", dev);
        return 0;
    }
    const char *pe = getenv("MS_FIXTURES_PARTIAL");
    partial = pe && *pe && strcmp(pe, "0");
    printf("test_cuda: %s\n", dev);
    check_kernels();
    const char *archs[] = {"qwen35moe", "qwen3next", "qwen3moe"};
    const char *types[] = {"f32", "bf16"};
    for (int a = 0; a < 3; a++)
        for (int t = 0; t < 2; t++) check_tiny(archs[a], types[t]);
    const char *q35[] = {"bf16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS", "MXFP4_MOE"};
    for (size_t i = 0; i < sizeof q35 / sizeof q35[0]; i++) check_small("qwen35moe", q35[i]);
    const char *q3[] = {"bf16", "Q8_0", "Q4_K_M"};
    for (size_t i = 0; i < sizeof q3 / sizeof q3[0]; i++) check_small("qwen3moe", q3[i]);
    for (int a = 0; a < 3; a++) check_rewind(archs[a]);
    check_budget();
    /* the lookahead configurations must have prefetched (their decode tokens miss in 2 * top-k
     * slots), and a prefetch never counts as used more often than it was made */
    CHECK(pf_total > 0, "the lookahead configurations prefetched no expert");
    CHECK(pf_used_total <= pf_total, "prefetches used %llu > made %llu", (unsigned long long)pf_used_total,
          (unsigned long long)pf_total);
    printf("  lookahead: %llu experts prefetched, %llu of them routed to (%.0f%%)\n", (unsigned long long)pf_total,
           (unsigned long long)pf_used_total, pf_total ? 100.0 * pf_used_total / pf_total : 0.0);
    CHECK(cpu_total > 0, "no configuration computed a missed expert on the host");
    printf("  host-computed misses: %llu experts\n", (unsigned long long)cpu_total);
    return t_done("test_cuda");
}
