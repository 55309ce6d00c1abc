/* test_experts.c - the expert store: every residency mode and eviction policy gives logits
 * identical (max abs diff 0) to the all-resident path with a cache small enough to force
 * evictions, prefill included; a model file truncated after load gives a clear error in every
 * mode (SIGBUS caught for mmap); the process stays under --mem (peak RSS). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "experts.h"
#include "model.h"
#include "moestream.h"
#include "testlib.h"

#define N_DECODE 8

static char dir[128];

/* Prompt logits (all positions) followed by N_DECODE greedy steps' logits. NULL on failure. */
static float *run(const char *path, const char *io, const char *evict, int cache_slots, const int *prompt, int n_prompt,
                  int *nv_out) {
    ms_model_params mp;
    ms_model_params_default(&mp);
    mp.io = io;
    mp.evict = evict;
    ms_model *m;
    ms_error err;
    if (ms_model_load(path, &mp, &m, &err)) {
        CHECK(0, "%s (%s): %s", path, io, err.msg);
        return NULL;
    }
    ms_context *c;
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.n_ctx = 256;
    if (ms_context_new(m, &cp, &c, &err)) {
        CHECK(0, "context: %s", err.msg);
        ms_model_free(m);
        return NULL;
    }
    if (cache_slots) {
        /* shrink the cache to force evictions (internal: the budget path sizes it normally) */
        ms_err e2;
        int rc = experts_set_cache(m->store, (uint64_t)cache_slots * experts_slot_bytes(m->store), &e2);
        CHECK(rc == MS_OK, "set cache: %s", e2.msg);
    }
    int nv = ms_n_vocab(m);
    float *out = malloc(sizeof(float) * (size_t)(n_prompt + N_DECODE) * nv);
    int32_t *ids = malloc(sizeof(int32_t) * n_prompt);
    for (int i = 0; i < n_prompt; i++) ids[i] = prompt[i];
    int ok = ms_eval(c, ids, n_prompt, 1, &err) == MS_OK;
    CHECK(ok, "%s eval: %s", io, err.msg);
    for (int i = 0; ok && i < n_prompt; i++) memcpy(out + (size_t)i * nv, ms_logits(c, i), sizeof(float) * nv);
    for (int g = 0; ok && g < N_DECODE; g++) {
        int32_t tok = (int32_t)t_argmax(ms_logits(c, -1), nv);
        ok = ms_eval(c, &tok, 1, 0, &err) == MS_OK;
        CHECK(ok, "%s decode: %s", io, err.msg);
        if (ok) memcpy(out + (size_t)(n_prompt + g) * nv, ms_logits(c, -1), sizeof(float) * nv);
    }
    ms_stats st;
    ms_context_stats(c, &st);
    if (cache_slots)
        CHECK(st.expert_hits < st.expert_requests && st.bytes_read > 0, "%s: no misses with %d slots (%llu/%llu)", io,
              cache_slots, (unsigned long long)st.expert_hits, (unsigned long long)st.expert_requests);
    free(ids);
    ms_context_free(c);
    ms_model_free(m);
    *nv_out = nv;
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

static void check_modes(const char *rel, const char *refjson) {
    char path[4096];
    snprintf(path, sizeof path, "%s", t_path(rel));
    char *json = t_read_file(t_path(refjson), NULL);
    int n_prompt = 0;
    int *prompt = json ? t_json_ints(json, "prompt_ids", &n_prompt) : NULL;
    CHECK(prompt != NULL, "%s: no prompt_ids", refjson);
    if (!prompt) {
        free(json);
        return;
    }
    int nv = 0;
    float *ref = run(path, "mmap", NULL, 0, prompt, n_prompt, &nv);
    const char *modes[] = {"pagecache", "direct"};
    const char *policies[] = {"lru", "lfu"};
    for (int mi = 0; mi < 2 && ref; mi++)
        for (int pi = 0; pi < 2; pi++) {
            int nv2 = 0;
            /* 2 x top-k slots: the minimum the store accepts */
            float *got = run(path, modes[mi], policies[pi], 0 + 2 * 4, prompt, n_prompt, &nv2);
            size_t n = (size_t)(n_prompt + N_DECODE) * nv;
            int same = got && nv2 == nv && !memcmp(ref, got, n * sizeof(float));
            CHECK(same, "%s: %s/%s logits differ from mmap", rel, modes[mi], policies[pi]);
            if (same) printf("  %-40s %-9s %-3s identical to mmap over %d prompt + %d decode positions\n", rel, modes[mi],
                             policies[pi], n_prompt, N_DECODE);
            free(got);
        }
    /* the whole model read into memory at load: the same bytes, read in place */
    int nv2 = 0;
    float *got = ref ? run(path, "ram", NULL, 0, prompt, n_prompt, &nv2) : NULL;
    int same = got && nv2 == nv && !memcmp(ref, got, (size_t)(n_prompt + N_DECODE) * nv * sizeof(float));
    CHECK(same, "%s: ram logits differ from mmap", rel);
    if (same) printf("  %-40s %-13s identical to mmap over %d prompt + %d decode positions\n", rel, "ram", n_prompt, N_DECODE);
    free(got);
    free(ref);
    free(prompt);
    free(json);
}

static int copy_file(const char *src, const char *dst) {
    size_t n;
    char *b = t_read_file(src, &n);
    if (!b) return -1;
    FILE *f = fopen(dst, "wb");
    int ok = f && fwrite(b, 1, n, f) == n;
    if (f) fclose(f);
    free(b);
    return ok ? 0 : -1;
}

/* Load, evaluate, truncate the file, evaluate tokens whose experts must be read again. */
static void check_truncation(const char *io) {
    char path[256];
    snprintf(path, sizeof path, "%s/trunc-%s.gguf", dir, io);
    CHECK(copy_file(t_path("tiny/qwen35moe/qwen35moe-f32.gguf"), path) == 0, "copy");
    ms_model_params mp;
    ms_model_params_default(&mp);
    mp.io = io;
    ms_model *m;
    ms_error err;
    if (ms_model_load(path, &mp, &m, &err)) {
        CHECK(0, "load: %s", err.msg);
        return;
    }
    ms_context *c;
    ms_context_new(m, NULL, &c, &err);
    ms_err e2;
    experts_set_cache(m->store, 8 * experts_slot_bytes(m->store), &e2);
    int32_t ids[4] = {60, 279, 229, 456};
    CHECK(ms_eval(c, ids, 4, 0, &err) == MS_OK, "eval before truncation: %s", err.msg);
    CHECK(truncate(path, 1 << 20) == 0, "truncate");
    ms_status st = MS_OK;
    for (int i = 0; i < 40 && st == MS_OK; i++) {
        int32_t t = (int32_t)((i * 37 + 11) % 512);
        st = ms_eval(c, &t, 1, 0, &err);
    }
    CHECK(st == MS_ERR_IO, "%s: truncated file gave status %d (%s), expected an I/O error", io, st, st ? err.msg : "");
    CHECK(st != MS_ERR_IO || strstr(err.msg, "truncated") || strstr(err.msg, "end of file"), "%s: message '%s'", io, err.msg);
    if (st == MS_ERR_IO) printf("  truncated after load (%s): %s\n", io, err.msg);
    ms_context_free(c);
    ms_model_free(m);
}

/* mmap mode cannot return an error from a page fault: the SIGBUS handler must turn it into one
 * line and exit status 1. Runs in a child process. */
static void check_sigbus(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/trunc-mmap.gguf", dir);
    CHECK(copy_file(t_path("tiny/qwen35moe/qwen35moe-f32.gguf"), path) == 0, "copy");
    char errpath[256];
    snprintf(errpath, sizeof errpath, "%s/sigbus.err", dir);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        ms_install_sigbus_handler();
        ms_model_params mp;
        ms_model_params_default(&mp);
        mp.io = "mmap"; /* the default would read this small model into memory at load */
        ms_model *m;
        ms_error err;
        if (ms_model_load(path, &mp, &m, &err)) _exit(3);
        ms_context *c;
        if (ms_context_new(m, NULL, &c, &err)) _exit(3);
        if (truncate(path, 1 << 20)) _exit(3);
        for (int i = 0; i < 64; i++) {
            int32_t t = (int32_t)((i * 37 + 11) % 512);
            ms_eval(c, &t, 1, 0, &err);
        }
        _exit(0); /* no fault: the experts touched were all below the cut */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    char *msg = t_read_file(errpath, NULL);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "mmap truncation: child status %d", status);
    CHECK(msg && strstr(msg, "truncated"), "mmap truncation message: %s", msg ? msg : "(none)");
    if (msg && WIFEXITED(status)) printf("  truncated after load (mmap): %s", msg);
    free(msg);
}

/* The whole process under --mem, measured as peak RSS by the CLI, on a model larger than it. */
static void check_budget(const char *bin) {
    char model[256], cmd[1024], out[256];
    snprintf(model, sizeof model, "%s/stream.gguf", dir);
    snprintf(out, sizeof out, "%s/budget.txt", dir);
    snprintf(cmd, sizeof cmd, "%s synth --preset test-stream -o %s 2>/dev/null", bin, model);
    CHECK(system(cmd) == 0, "synth failed: %s", cmd);
    uint64_t budget = 200ull << 20;
    snprintf(cmd, sizeof cmd, "%s run -m %s --io direct --mem 200M -p hello -n 24 --ignore-eos --stats -t 2 >/dev/null 2>%s",
             bin, model, out);
    CHECK(system(cmd) == 0, "run under --mem failed: %s", cmd);
    char *txt = t_read_file(out, NULL);
    const char *p = txt ? strstr(txt, "peak RSS ") : NULL;
    double gib = p ? strtod(p + 9, NULL) : -1;
    CHECK(p && gib > 0 && gib * 1073741824.0 <= (double)budget, "peak RSS %.3f GiB over the 200 MiB budget", gib);
    const char *hr = txt ? strstr(txt, "hit rate ") : NULL;
    double hit = hr ? strtod(hr + 9, NULL) : 100;
    CHECK(hit < 100.0, "the budget forced no misses (hit rate %.1f%%)", hit);
    printf("  test-stream (%.0f MiB of experts) under --mem 200M: peak RSS %.0f MiB, hit rate %.1f%%\n", 450.0,
           gib * 1024, hit);
    free(txt);
    /* big enough that ram mode reads it in many pieces on several threads */
    int prompt[4] = {1, 17, 300, 42}, nv = 0, nv2 = 0;
    float *ref = run(model, "mmap", NULL, 0, prompt, 4, &nv), *got = ref ? run(model, "ram", NULL, 0, prompt, 4, &nv2) : NULL;
    int same = got && nv2 == nv && !memcmp(ref, got, (size_t)(4 + N_DECODE) * nv * sizeof(float));
    CHECK(same, "test-stream: ram logits differ from mmap");
    if (same) printf("  test-stream (%.0f MiB, read in 8 MiB pieces) ram identical to mmap\n", 450.0);
    free(ref);
    free(got);
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    snprintf(dir, sizeof dir, "/tmp/ms_test_experts_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    check_modes("tiny/qwen35moe/qwen35moe-f32.gguf", "tiny/qwen35moe/ref.json");
    check_modes("tiny/qwen3next/qwen3next-f32.gguf", "tiny/qwen3next/ref.json");
    check_modes("tiny/qwen3moe/qwen3moe-f32.gguf", "tiny/qwen3moe/ref.json");
    check_modes("small/qwen35moe/qwen35moe-Q4_K_M.gguf", "small/qwen35moe/ref.json");
    check_truncation("pagecache");
    check_truncation("direct");
    check_sigbus();
    const char *bin = getenv("MS_BIN"), *san = getenv("MS_SANITIZED");
    if (san && !strcmp(san, "thread")) printf("  (TSan build: its shadow memory is RSS too, so the --mem check runs in the others)\n");
    else if (bin) check_budget(bin);
    else printf("  (MS_BIN not set: the --mem check runs from tests/run.sh)\n");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", dir);
    return t_done("test_experts");
}
