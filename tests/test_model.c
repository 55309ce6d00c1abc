/* test_model.c - the forward pass against Hugging Face transformers on the tiny fixtures:
 * max KL over prompt positions <= 1e-4 and the 24 greedy ids equal greedy_ids, for each
 * architecture in f32 and bf16. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moestream.h"
#include "testlib.h"

static void check_arch(const char *arch, const char *dtype) {
    char rel[256], path[4096];
    snprintf(rel, sizeof rel, "tiny/%s/ref.json", arch);
    char *json = t_read_file(t_path(rel), NULL);
    CHECK(json != NULL, "cannot read %s", rel);
    if (!json) return;
    int n_prompt = 0, n_greedy = 0;
    int *prompt = t_json_ints(json, "prompt_ids", &n_prompt);
    int *greedy = t_json_ints(json, "greedy_ids", &n_greedy);
    CHECK(prompt && greedy && n_prompt > 0 && n_greedy > 0, "%s: ref.json lacks ids", arch);
    snprintf(rel, sizeof rel, "tiny/%s/%s-%s.gguf", arch, arch, dtype);
    snprintf(path, sizeof path, "%s", t_path(rel));
    ms_model *m = NULL;
    ms_error err;
    ms_status st = ms_model_load(path, NULL, &m, &err);
    CHECK(st == MS_OK, "%s: load failed: %s", rel, err.msg);
    if (st) goto out;
    int nv = ms_n_vocab(m);
    size_t ref_len;
    snprintf(rel, sizeof rel, "tiny/%s/logits.f32", arch);
    float *ref = t_read_file(t_path(rel), &ref_len);
    CHECK(ref && ref_len == (size_t)n_prompt * nv * sizeof(float), "%s: logits.f32 has %zu bytes, expected %d x %d floats",
          arch, ref_len, n_prompt, nv);
    ms_context *c;
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.n_ctx = 256;
    /* a host share outside [0, 1] (and not -1, auto) is refused with a message naming it */
    const float bad_share[] = {1.5f, -0.5f, NAN};
    for (int i = 0; i < 3; i++) {
        cp.gpu_cpu_share = bad_share[i];
        st = ms_context_new(m, &cp, &c, &err);
        CHECK(st == MS_ERR_ARG && strstr(err.msg, "gpu_cpu_share"), "gpu_cpu_share %g: status %d (%s), expected MS_ERR_ARG",
              (double)bad_share[i], st, st ? err.msg : "accepted");
        if (st == MS_OK) ms_context_free(c);
    }
    cp.gpu_cpu_share = -1;
    st = ms_context_new(m, &cp, &c, &err);
    CHECK(st == MS_OK, "context: %s", err.msg);
    int32_t *ids = malloc(sizeof(int32_t) * (n_prompt + n_greedy));
    for (int i = 0; i < n_prompt; i++) ids[i] = prompt[i];
    st = ms_eval(c, ids, n_prompt, 1, &err);
    CHECK(st == MS_OK, "eval: %s", err.msg);
    double max_kl = 0;
    int agree = 0;
    for (int i = 0; i < n_prompt && ref; i++) {
        const float *got = ms_logits(c, i);
        double kl = t_kl(ref + (size_t)i * nv, got, nv);
        if (kl > max_kl) max_kl = kl;
        agree += t_argmax(ref + (size_t)i * nv, nv) == t_argmax(got, nv);
    }
    CHECK(max_kl <= 1e-4, "%s %s: max KL %.3g over %d positions > 1e-4", arch, dtype, max_kl, n_prompt);
    /* greedy continuation, token by token with the KV cache */
    int match = 0;
    for (int g = 0; g < n_greedy; g++) {
        const float *lg = ms_logits(c, -1);
        int32_t tok = (int32_t)t_argmax(lg, nv);
        if (tok != greedy[g]) break;
        match++;
        if (ms_eval(c, &tok, 1, 0, &err)) break;
    }
    CHECK(match == n_greedy, "%s %s: greedy ids match for %d of %d tokens", arch, dtype, match, n_greedy);
    printf("  %-10s %-4s max KL %.2e, argmax agreement %d/%d, greedy %d/%d\n", arch, dtype, max_kl, agree, n_prompt,
           match, n_greedy);
    free(ids);
    free(ref);
    ms_context_free(c);
out:
    ms_model_free(m);
    free(prompt);
    free(greedy);
    free(json);
}

/* Logits of every prompt position of a model file, [n_prompt][n_vocab] (malloc'd), or NULL. */
static float *eval_prompt(const char *path, const int *prompt, int n_prompt, int *nv_out) {
    ms_model *m = NULL;
    ms_error err;
    if (ms_model_load(path, NULL, &m, &err)) {
        CHECK(0, "%s: load failed: %s", path, err.msg);
        return NULL;
    }
    int nv = ms_n_vocab(m);
    ms_context *c;
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.n_ctx = 256;
    if (ms_context_new(m, &cp, &c, &err)) {
        CHECK(0, "context: %s", err.msg);
        ms_model_free(m);
        return NULL;
    }
    int32_t *ids = malloc(sizeof(int32_t) * n_prompt);
    for (int i = 0; i < n_prompt; i++) ids[i] = prompt[i];
    float *out = NULL;
    if (ms_eval(c, ids, n_prompt, 1, &err) == MS_OK) {
        out = malloc(sizeof(float) * (size_t)n_prompt * nv);
        for (int i = 0; i < n_prompt; i++) memcpy(out + (size_t)i * nv, ms_logits(c, i), sizeof(float) * nv);
    } else {
        CHECK(0, "eval: %s", err.msg);
    }
    free(ids);
    ms_context_free(c);
    ms_model_free(m);
    *nv_out = nv;
    return out;
}

typedef struct agreement {
    double max_kl;
    int argmax;
} agreement;

static agreement compare(const float *ref, const float *got, int n, int nv) {
    agreement a = {0, 0};
    for (int i = 0; i < n; i++) {
        double kl = t_kl(ref + (size_t)i * nv, got + (size_t)i * nv, nv);
        if (kl > a.max_kl) a.max_kl = kl;
        a.argmax += t_argmax(ref + (size_t)i * nv, nv) == t_argmax(got + (size_t)i * nv, nv);
    }
    return a;
}

/* A quantized file: ours against its exact reference must be no worse than llama.cpp's. */
static void check_quant(const char *arch, const char *quant, const int *prompt, int n_prompt) {
    char rel[256], path[4096];
    snprintf(rel, sizeof rel, "small/%s/%s-%s.gguf", arch, arch, quant);
    snprintf(path, sizeof path, "%s", t_path(rel));
    int nv = 0;
    float *got = eval_prompt(path, prompt, n_prompt, &nv);
    if (!got) return;
    size_t len_exact = 0, len_llama = 0;
    const char *exact_name = strcmp(quant, "bf16") ? "exact-logits" : NULL;
    float *exact;
    if (exact_name) {
        snprintf(rel, sizeof rel, "small/%s/%s-%s.exact-logits.f32", arch, arch, quant);
        exact = t_read_file(t_path(rel), &len_exact);
    } else {
        snprintf(rel, sizeof rel, "small/%s/logits.f32", arch);
        exact = t_read_file(t_path(rel), &len_exact);
    }
    snprintf(rel, sizeof rel, "small/%s/%s-%s.llamacpp-logits.f32", arch, arch, quant);
    float *llama = t_read_file(t_path(rel), &len_llama);
    size_t want = (size_t)n_prompt * nv * sizeof(float);
    CHECK(exact && len_exact == want && llama && len_llama == want, "%s %s: reference files missing or of the wrong size",
          arch, quant);
    if (exact && llama && len_exact == want && len_llama == want) {
        agreement ours = compare(exact, got, n_prompt, nv), theirs = compare(exact, llama, n_prompt, nv);
        CHECK(ours.max_kl <= theirs.max_kl, "%s %s: max KL %.3g is above llama.cpp's %.3g", arch, quant, ours.max_kl,
              theirs.max_kl);
        CHECK(ours.argmax >= theirs.argmax, "%s %s: argmax agreement %d below llama.cpp's %d", arch, quant, ours.argmax,
              theirs.argmax);
        printf("  %-10s %-11s max KL %.2e (llama.cpp %.2e), argmax %d/%d (llama.cpp %d)\n", arch, quant, ours.max_kl,
               theirs.max_kl, ours.argmax, n_prompt, theirs.argmax);
    }
    free(exact);
    free(llama);
    free(got);
}

static void check_small(const char *arch, const char **quants, int n) {
    char rel[256];
    snprintf(rel, sizeof rel, "small/%s/ref.json", arch);
    char *json = t_read_file(t_path(rel), NULL);
    CHECK(json != NULL, "cannot read %s", rel);
    if (!json) return;
    int n_prompt = 0;
    int *prompt = t_json_ints(json, "prompt_ids", &n_prompt);
    CHECK(prompt && n_prompt > 0, "%s lacks prompt_ids", rel);
    for (int i = 0; i < n && prompt; i++) check_quant(arch, quants[i], prompt, n_prompt);
    free(prompt);
    free(json);
}

/* Every prefill path (batched projections, experts grouped by token, chunked Gated DeltaNet,
 * batched attention) gives the logits of token-by-token decode within KL 1e-5. */
static void check_prefill(const char *rel, const char *refjson) {
    char *json = t_read_file(t_path(refjson), NULL);
    int n = 0;
    int *prompt = json ? t_json_ints(json, "prompt_ids", &n) : NULL;
    CHECK(prompt && n >= 64, "%s: need a prompt of >= 64 tokens to reach the chunked path", refjson);
    char path[4096];
    snprintf(path, sizeof path, "%s", t_path(rel));
    ms_model *m;
    ms_error err;
    if (!prompt || ms_model_load(path, NULL, &m, &err)) {
        CHECK(prompt == NULL, "%s: %s", rel, err.msg);
        free(prompt);
        free(json);
        return;
    }
    int nv = ms_n_vocab(m);
    ms_context *batch, *step;
    ms_context_new(m, NULL, &batch, &err);
    ms_context_new(m, NULL, &step, &err);
    int32_t *ids = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) ids[i] = prompt[i];
    CHECK(ms_eval(batch, ids, n, 1, &err) == MS_OK, "batch eval: %s", err.msg);
    double max_kl = 0;
    for (int i = 0; i < n; i++) {
        CHECK(ms_eval(step, ids + i, 1, 0, &err) == MS_OK, "step eval: %s", err.msg);
        double kl = t_kl(ms_logits(step, -1), ms_logits(batch, i), nv);
        if (kl > max_kl) max_kl = kl;
    }
    CHECK(max_kl <= 1e-5, "%s: prefill vs decode max KL %.3g > 1e-5", rel, max_kl);
    printf("  %-40s prefill of %d tokens vs token-by-token decode: max KL %.2e\n", rel, n, max_kl);
    free(ids);
    ms_context_free(batch);
    ms_context_free(step);
    ms_model_free(m);
    free(prompt);
    free(json);
}

/* Prefix reuse: after a checkpoint at k and a different continuation, rewinding to k and
 * evaluating the original continuation reproduces its logits exactly. */
static void check_rewind(const char *arch) {
    char rel[256], path[4096];
    snprintf(rel, sizeof rel, "tiny/%s/%s-f32.gguf", arch, arch);
    snprintf(path, sizeof path, "%s", t_path(rel));
    ms_model *m;
    ms_error err;
    if (ms_model_load(path, NULL, &m, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    int nv = ms_n_vocab(m);
    ms_context *c;
    ms_context_new(m, NULL, &c, &err);
    int32_t a[12], b[7];
    for (int i = 0; i < 12; i++) a[i] = (int32_t)(17 + 31 * i) % nv;
    for (int i = 0; i < 7; i++) b[i] = (int32_t)(5 + 13 * i) % nv;
    ms_eval(c, a, 8, 0, &err);
    CHECK(ms_context_checkpoint(c, &err) == MS_OK, "checkpoint: %s", err.msg);
    ms_eval(c, a + 8, 4, 0, &err);
    float *first = malloc(sizeof(float) * nv);
    memcpy(first, ms_logits(c, -1), sizeof(float) * nv);
    int recurrent = strcmp(arch, "qwen3moe") != 0; /* attention-only models cut their KV cache anywhere */
    int want = recurrent ? 8 : 10;
    CHECK(ms_context_resume_point(c, 10) == want, "%s: resume point for 10 is %d, expected %d", arch,
          ms_context_resume_point(c, 10), want);
    CHECK(ms_context_rewind(c, 8, &err) == MS_OK, "rewind: %s", err.msg);
    ms_eval(c, b, 7, 0, &err);
    CHECK(ms_context_tokens(c)[8] == b[0], "token history follows the rewind");
    CHECK(ms_context_rewind(c, 8, &err) == MS_OK, "second rewind: %s", err.msg);
    ms_eval(c, a + 8, 4, 0, &err);
    CHECK(!memcmp(first, ms_logits(c, -1), sizeof(float) * nv), "%s: logits after rewind differ", arch);
    CHECK(ms_context_pos(c) == 12, "position %d after rewind and eval", ms_context_pos(c));
    free(first);
    ms_context_free(c);
    ms_model_free(m);
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    const char *archs[] = {"qwen35moe", "qwen3next", "qwen3moe"};
    const char *types[] = {"f32", "bf16"};
    for (int a = 0; a < 3; a++)
        for (int t = 0; t < 2; t++) check_arch(archs[a], types[t]);
    const char *q35[] = {"bf16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS", "MXFP4_MOE"};
    check_small("qwen35moe", q35, (int)(sizeof q35 / sizeof q35[0]));
    const char *q3[] = {"bf16", "Q8_0", "Q4_K_M"};
    check_small("qwen3moe", q3, (int)(sizeof q3 / sizeof q3[0]));
    for (int a = 0; a < 3; a++) check_rewind(archs[a]);
    check_prefill("tiny/qwen35moe/qwen35moe-f32.gguf", "tiny/qwen35moe/ref.json");
    check_prefill("tiny/qwen3next/qwen3next-f32.gguf", "tiny/qwen3next/ref.json");
    check_prefill("tiny/qwen3moe/qwen3moe-f32.gguf", "tiny/qwen3moe/ref.json");
    check_prefill("small/qwen35moe/qwen35moe-Q4_K_M.gguf", "small/qwen35moe/ref.json");
    check_prefill("small/qwen3moe/qwen3moe-Q4_K_M.gguf", "small/qwen3moe/ref.json");
    return t_done("test_model");
}
