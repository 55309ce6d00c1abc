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

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    const char *archs[] = {"qwen35moe", "qwen3next", "qwen3moe"};
    const char *types[] = {"f32", "bf16"};
    for (int a = 0; a < 3; a++)
        for (int t = 0; t < 2; t++) check_arch(archs[a], types[t]);
    return t_done("test_model");
}
