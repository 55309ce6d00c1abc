/* test_faults.c - faults injected where the engine meets the outside world. Each must give a clear
 * error, free what it holds, and leave the engine usable with nothing lost: evaluating on after the
 * fault clears gives the logits of a run that never saw it.
 *   - allocation failure at every allocation of model load + context creation (mmap, pagecache,
 *     direct), and at every allocation of a chat turn (render, tokenize, prefill, decode)
 *   - reads that fail with EIO, that hit the end of a file cut short, or that come back partial
 *     (util.h: MS_FAULTS), at load and while decoding, recurrent and attention-only models
 *   - the model file truncated while in use, then restored
 *   - memory budgets (--mem) too small for the dense weights or for the expert cache
 * Leaks: LeakSanitizer checks at exit in the ASan build; the TSan build runs this too (faults hit
 * while the store's I/O threads have reads in flight). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "experts.h"
#include "model.h"
#include "moestream.h"
#include "testlib.h"
#include "util.h"

#define N_STEPS 6     /* greedy steps after the prompt */
#define N_PROMPT 24   /* prompt tokens (from ref.json) */

static char dir[128], fault_file[256];
static int32_t prompt[N_PROMPT];

/* ---- the MS_FAULTS control file ---- */

static void set_fault(const char *what) {
    FILE *f = fopen(fault_file, "w");
    if (f) {
        fputs(what, f);
        fclose(f);
    }
}

/* ---- the allocation hook: counts allocations, fails number fail_at (0: none) ---- */

static long n_alloc, fail_at;
static int alloc_hook(void *ud) {
    (void)ud;
    return ++n_alloc != fail_at;
}
static void hook_on(long k) {
    n_alloc = 0;
    fail_at = k;
    ms_set_alloc_hook(alloc_hook, NULL);
}
static void hook_off(void) { ms_set_alloc_hook(NULL, NULL); }

/* ---- models ---- */

typedef struct run {
    ms_model *m;
    ms_context *c;
} run;

/* Loads path with the io mode and a context; slots > 0 shrinks the expert cache to force reads. */
static ms_status open_run(const char *path, const char *io, int slots, run *r, ms_error *err) {
    memset(r, 0, sizeof *r);
    ms_model_params mp;
    ms_model_params_default(&mp);
    mp.io = io;
    mp.io_threads = 4;
    ms_status st = ms_model_load(path, &mp, &r->m, err);
    if (st) return st;
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.n_ctx = 128;
    cp.n_threads = 2;
    st = ms_context_new(r->m, &cp, &r->c, err);
    if (st) {
        ms_model_free(r->m);
        r->m = NULL;
        return st;
    }
    if (slots) st = (ms_status)experts_set_cache(r->m->store, (uint64_t)slots * experts_slot_bytes(r->m->store), err);
    return st;
}

static void close_run(run *r) {
    ms_context_free(r->c);
    ms_model_free(r->m);
    memset(r, 0, sizeof *r);
}

/* The reference: logits after the prompt and after each greedy step, and the greedy tokens. */
typedef struct ref {
    int nv;
    float *logits; /* [N_STEPS + 1][nv] */
    int32_t seq[N_PROMPT + N_STEPS];
} ref;

static int make_ref(run *r, ref *out) {
    ms_error err;
    out->nv = ms_n_vocab(r->m);
    out->logits = malloc(sizeof(float) * (size_t)(N_STEPS + 1) * out->nv);
    memcpy(out->seq, prompt, sizeof prompt);
    ms_context_reset(r->c);
    if (ms_eval(r->c, prompt, N_PROMPT, 0, &err)) {
        CHECK(0, "reference prompt: %s", err.msg);
        return -1;
    }
    for (int s = 0; s <= N_STEPS; s++) {
        memcpy(out->logits + (size_t)s * out->nv, ms_logits(r->c, -1), sizeof(float) * out->nv);
        if (s == N_STEPS) break;
        out->seq[N_PROMPT + s] = (int32_t)t_argmax(ms_logits(r->c, -1), out->nv);
        if (ms_eval(r->c, &out->seq[N_PROMPT + s], 1, 0, &err)) {
            CHECK(0, "reference step %d: %s", s, err.msg);
            return -1;
        }
    }
    return 0;
}

/* 1 if logits match the reference's at step s: identical, or (exact = 0, the tokens were batched
 * differently) the same argmax and KL below 1e-6. A recurrent state gone wrong is far off. */
static int same_logits(const ref *rf, int s, const float *got, int exact, double *kl_out) {
    const float *want = rf->logits + (size_t)s * rf->nv;
    double kl = t_kl(want, got, rf->nv);
    if (kl_out) *kl_out = kl;
    if (exact) return !memcmp(want, got, sizeof(float) * rf->nv);
    return t_argmax(want, rf->nv) == t_argmax(got, rf->nv) && kl < 1e-6;
}

/* After a failed evaluation: evaluates what the context lacks of seq[0..upto) from where it
 * stands now (ms_context_pos), then checks the logits against the reference at step s. */
static int recover(run *r, const ref *rf, int upto, int s, const char *what) {
    ms_error err;
    int pos = ms_context_pos(r->c);
    const int32_t *have = ms_context_tokens(r->c);
    CHECK(pos <= upto, "%s: position %d beyond %d", what, pos, upto);
    for (int i = 0; i < pos && i < upto; i++)
        if (have[i] != rf->seq[i]) {
            CHECK(0, "%s: the context holds token %d at %d, expected %d", what, have[i], i, rf->seq[i]);
            return -1;
        }
    if (pos < upto && ms_eval(r->c, rf->seq + pos, upto - pos, 0, &err)) {
        CHECK(0, "%s: evaluating again after the fault: %s", what, err.msg);
        return -1;
    }
    double kl;
    int ok = same_logits(rf, s, ms_logits(r->c, -1), 0, &kl);
    CHECK(ok, "%s: logits after recovery differ from the reference (KL %.3g)", what, kl);
    return ok ? 0 : -1;
}

/* ---- allocation failures: load + context ---- */

static void alloc_sweep_load(const char *rel, const char *io) {
    const char *path = t_path(rel);
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    run r;
    ms_error err;
    hook_on(0);
    ms_status st = open_run(p, io, 0, &r, &err);
    long total = n_alloc;
    hook_off();
    CHECK(st == MS_OK, "%s %s: %s", rel, io, err.msg);
    if (st) return;
    close_run(&r);
    int refused = 0, tolerated = 0;
    for (long k = 1; k <= total; k++) {
        memset(&err, 0, sizeof err);
        hook_on(k);
        st = open_run(p, io, 0, &r, &err);
        hook_off();
        if (st == MS_OK) {
            tolerated++; /* this allocation had a fallback: the model must still work */
            ms_error e2;
            CHECK(ms_eval(r.c, prompt, 4, 0, &e2) == MS_OK, "%s %s: allocation %ld failed quietly, then eval: %s", rel,
                  io, k, e2.msg);
            close_run(&r);
            continue;
        }
        refused++;
        CHECK(st == MS_ERR_NOMEM && err.status == MS_ERR_NOMEM, "%s %s: allocation %ld of %ld failed, status %d: %s",
              rel, io, k, total, st, err.msg);
        CHECK(strstr(err.msg, "memory") || strstr(err.msg, "allocate") || strstr(err.msg, "cannot start"),
              "%s %s: allocation %ld: message '%s'", rel, io, k, err.msg);
    }
    /* and nothing is left broken */
    st = open_run(p, io, 0, &r, &err);
    CHECK(st == MS_OK && ms_eval(r.c, prompt, 4, 0, &err) == MS_OK, "%s %s after the sweep: %s", rel, io, err.msg);
    if (st == MS_OK) close_run(&r);
    printf("  %-36s %-9s load+context: %ld allocations, each failure refused with out of memory (%d), "
           "tolerated (%d)\n", rel, io, total, refused, tolerated);
}

/* ---- allocation failures: a chat turn ---- */

/* Renders a conversation, tokenizes it, prefills (with prefix reuse and checkpoints) and decodes
 * n_gen greedy tokens; the logits of the last are copied to out. */
static ms_status chat_turn(run *r, ms_chat *chat, int n_gen, float *out, int32_t *gen, ms_error *err) {
    ms_chat_msg msgs[2] = {{"system", "Be brief.", NULL, NULL, 0}, {"user", "Why is the sky blue? Answer in one line.", NULL, NULL, 0}};
    char *text = NULL;
    int32_t *ids = NULL;
    int n = 0;
    ms_status st = ms_chat_render(chat, msgs, 2, NULL, &text, NULL, err);
    if (!st) st = ms_tokenize(r->m, text, strlen(text), 1, &ids, &n, err);
    int ck = n - 1;
    if (!st) st = ms_chat_prefill(r->c, ids, n, &ck, 1, NULL, NULL, NULL, err);
    for (int i = 0; !st && i < n_gen; i++) {
        int32_t t = (int32_t)t_argmax(ms_logits(r->c, -1), ms_n_vocab(r->m));
        if (gen) gen[i] = t;
        st = ms_eval(r->c, &t, 1, 0, err);
    }
    if (!st) st = ms_context_checkpoint(r->c, err);
    if (!st) memcpy(out, ms_logits(r->c, -1), sizeof(float) * (size_t)ms_n_vocab(r->m));
    ms_chat_text_free(text);
    ms_free_ids(ids);
    return st;
}

static void alloc_sweep_turn(const char *rel, const char *io, int slots) {
    char p[4096];
    snprintf(p, sizeof p, "%s", t_path(rel));
    run r;
    ms_error err;
    if (open_run(p, io, slots, &r, &err)) {
        CHECK(0, "%s: %s", rel, err.msg);
        return;
    }
    ms_chat *chat;
    CHECK(ms_chat_new(r.m, NULL, &chat, &err) == MS_OK, "chat: %s", err.msg);
    int nv = ms_n_vocab(r.m);
    float *want = malloc(sizeof(float) * nv), *got = malloc(sizeof(float) * nv);
    int32_t gen_ref[4], gen[4];
    CHECK(chat_turn(&r, chat, 4, want, gen_ref, &err) == MS_OK, "%s: reference turn: %s", rel, err.msg);
    ms_context_reset(r.c);
    hook_on(0);
    chat_turn(&r, chat, 4, got, NULL, &err);
    long total = n_alloc;
    hook_off();
    int refused = 0, recovered = 0;
    for (long k = 1; k <= total; k++) {
        ms_context_reset(r.c);
        hook_on(k);
        ms_status st = chat_turn(&r, chat, 4, got, gen, &err);
        hook_off();
        if (st) {
            refused++;
            CHECK(st == MS_ERR_NOMEM, "%s turn: allocation %ld failed, status %d: %s", rel, k, st, err.msg);
        } /* else: the context kept buffers from an earlier turn, so fewer allocations happened */
        /* the same turn again, reusing whatever the context kept: the same reply */
        st = chat_turn(&r, chat, 4, got, gen, &err);
        double kl = 0;
        int same = st == MS_OK && !memcmp(gen, gen_ref, sizeof gen) && (kl = t_kl(want, got, nv)) < 1e-6;
        CHECK(same, "%s turn: after allocation %ld failed, the turn again gives status %d, KL %.3g", rel, k, st, kl);
        recovered += same;
    }
    printf("  %-36s %-9s chat turn: %ld allocations, %d failures refused with out of memory, the turn again "
           "identical %d/%ld\n", rel, io, total, refused, recovered, total);
    free(want);
    free(got);
    ms_chat_free(chat);
    close_run(&r);
}

/* ---- read faults ---- */

/* At load the dense weights are read (io pagecache, direct), or all of them (ram): a failed read
 * is MS_ERR_IO naming the tensor, and the next load works. */
static void load_faults(const char *rel, const char *io) {
    char p[4096];
    snprintf(p, sizeof p, "%s", t_path(rel));
    static const char *faults[] = {"read-eio", "read-eof", "read-eio 12", "read-eof 12"};
    run r;
    ms_error err;
    for (int f = 0; f < 4; f++) {
        set_fault(faults[f]);
        ms_status st = open_run(p, io, 0, &r, &err);
        set_fault("");
        CHECK(st == MS_ERR_IO && strstr(err.msg, "reading tensor"), "%s %s: load under %s: status %d '%s'", rel, io,
              faults[f], st, st ? err.msg : "");
        if (st == MS_OK) close_run(&r);
    }
    ms_status st = open_run(p, io, 0, &r, &err);
    CHECK(st == MS_OK, "%s %s: load after the faults: %s", rel, io, err.msg);
    if (st == MS_OK) close_run(&r);
    if (st == MS_OK) printf("  %-36s %-9s read-eio/read-eof at load (first read, 13th): MS_ERR_IO naming the tensor\n", rel, io);
}

static void read_faults(const char *rel, const char *io) {
    char p[4096];
    snprintf(p, sizeof p, "%s", t_path(rel));
    run r;
    ms_error err;
    int k_used = 0;
    if (open_run(p, io, 0, &r, &err)) {
        CHECK(0, "%s %s: %s", rel, io, err.msg);
        return;
    }
    k_used = r.m->hp.n_expert_used;
    close_run(&r);
    if (open_run(p, io, 2 * k_used, &r, &err)) { /* the smallest cache: every step reads */
        CHECK(0, "%s %s: %s", rel, io, err.msg);
        return;
    }
    ref rf;
    if (make_ref(&r, &rf)) {
        close_run(&r);
        return;
    }
    static const struct {
        const char *fault, *needle;
    } faults[] = {{"read-eio", "Input/output error"}, {"read-eof", "truncated"}};
    /* reads let through before the fault: 0 fails the first (a token's embedding row), the others
     * fail expert reads in the first, a middle and a late layer, after earlier layers have
     * advanced their state */
    static const int skips[] = {0, 30, 60, 90};
    int cases = 0;
    for (int f = 0; f < 2; f++)
        for (int at = 0; at < N_STEPS; at += 2) /* the fault hits at step `at` (0: the prompt) */
        for (int sk = 0; sk < 4; sk++) {
            char what[256], fault[64];
            snprintf(what, sizeof what, "%s %s %s after %d reads at step %d", rel, io, faults[f].fault, skips[sk], at);
            snprintf(fault, sizeof fault, "%s %d", faults[f].fault, at ? skips[sk] : N_PROMPT + skips[sk]);
            ms_context_reset(r.c);
            int upto = N_PROMPT + at;
            ms_status st = at ? ms_eval(r.c, rf.seq, upto - 1, 0, &err) : MS_OK;
            CHECK(st == MS_OK, "%s: before the fault: %s", what, err.msg);
            set_fault(fault);
            st = at ? ms_eval(r.c, rf.seq + upto - 1, 1, 0, &err) : ms_eval(r.c, rf.seq, upto, 0, &err);
            set_fault("");
            if (st == MS_OK) continue; /* everything was cached: no read to fail */
            cases++;
            CHECK(st == MS_ERR_IO && strstr(err.msg, faults[f].needle) && strstr(err.msg, "failed"),
                  "%s: status %d, message '%s'", what, st, st ? err.msg : "");
            if (recover(&r, &rf, upto, at, what)) continue;
            /* and decoding goes on as if nothing happened */
            for (int s = at; s < N_STEPS; s++) {
                st = ms_eval(r.c, &rf.seq[N_PROMPT + s], 1, 0, &err);
                double kl;
                CHECK(st == MS_OK && same_logits(&rf, s + 1, ms_logits(r.c, -1), 0, &kl), "%s: step %d after recovery", what, s + 1);
            }
            if (f == 0 && at == 2 && sk == 2) printf("  %-36s %-9s %s\n", rel, io, err.msg);
        }
    CHECK(cases >= 16, "%s %s: only %d of 24 read faults hit a read", rel, io, cases);
    /* partial reads are no error: the same logits, bit for bit */
    set_fault("read-partial");
    ms_context_reset(r.c);
    ms_status st = ms_eval(r.c, rf.seq, N_PROMPT, 0, &err);
    int same = st == MS_OK && same_logits(&rf, 0, ms_logits(r.c, -1), 1, NULL);
    for (int s = 0; same && s < N_STEPS; s++)
        same = ms_eval(r.c, &rf.seq[N_PROMPT + s], 1, 0, &err) == MS_OK && same_logits(&rf, s + 1, ms_logits(r.c, -1), 1, NULL);
    set_fault("");
    CHECK(same, "%s %s: partial reads changed the logits (%s)", rel, io, st ? err.msg : "");
    printf("  %-36s %-9s read-eio/read-eof in %d places (prompt, decode; embedding, early/middle/late layer): "
           "MS_ERR_IO, then the same logits; read-partial: identical\n", rel, io, cases);
    free(rf.logits);
    close_run(&r);

    if (strcmp(io, "mmap")) load_faults(rel, io);
}

/* Waits (10 s at most) until the reads of experts 0 and 1 of layer il are over, then clears the
 * fault; with wait, also waits for both as a caller that requested them (MS_OK or the status). */
static ms_status settle(ms_store *s, int il, int wait, ms_expert_ref refs[2], ms_error *err) {
    for (int spins = 0; spins < 100000 && !(experts_ready(s, il, 0) && experts_ready(s, il, 1)); spins++)
        usleep(100);
    set_fault("");
    ms_status st = MS_OK;
    for (int x = 0; wait && x < 2 && st == MS_OK; x++) st = experts_wait(s, il, x, &refs[x], err);
    return st;
}

/* A read that fails after its callers let go of it (a failed layer releases the experts still
 * loading) must not hand its old error to the next request for that expert. Found by the server
 * fault test: the request after a cleared read fault failed. */
static void stale_read_error(const char *rel) {
    char p[4096];
    snprintf(p, sizeof p, "%s", t_path(rel));
    run r;
    ms_error err;
    if (open_run(p, "pagecache", 8, &r, &err)) {
        CHECK(0, "%s: %s", rel, err.msg);
        return;
    }
    int ids[2] = {0, 1};
    ms_expert_ref refs[2];
    set_fault("read-eio");
    CHECK(experts_request(r.m->store, 0, ids, 2, &err) == MS_OK, "request: %s", err.msg);
    experts_release(r.m->store, 0, ids, 2); /* let go while the reads are in flight */
    settle(r.m->store, 0, 0, refs, &err);
    ms_status st = experts_acquire(r.m->store, 0, ids, 2, refs, &err);
    CHECK(st == MS_OK, "%s: the request after a read failed unattended: status %d '%s'", rel, st, st ? err.msg : "");
    if (st == MS_OK) {
        experts_release(r.m->store, 0, ids, 2);
        printf("  %-36s pagecache a read that failed after its callers let go is read again on the next request\n", rel);
    }
    /* the same when the next request joins the read while it is still in flight (found by CI:
     * a lookahead prefetch that failed under a fault handed its error to the recovery) */
    set_fault("read-eio-slow");
    CHECK(experts_request(r.m->store, 1, ids, 2, &err) == MS_OK, "request: %s", err.msg);
    experts_release(r.m->store, 1, ids, 2);
    CHECK(experts_request(r.m->store, 1, ids, 2, &err) == MS_OK, "request again: %s", err.msg);
    int joined = !experts_ready(r.m->store, 1, 0);
    st = settle(r.m->store, 1, 1, refs, &err);
    CHECK(joined, "%s: the slow read was over before the second request", rel);
    CHECK(st == MS_OK, "%s: a request that joined a read which then failed unattended: status %d '%s'", rel, st,
          st ? err.msg : "");
    experts_release(r.m->store, 1, ids, 2);
    /* a prefetch that fails the same way */
    set_fault("read-eio-slow");
    experts_prefetch(r.m->store, 2, ids, 2);
    CHECK(experts_request(r.m->store, 2, ids, 2, &err) == MS_OK, "request after prefetch: %s", err.msg);
    st = settle(r.m->store, 2, 1, refs, &err);
    CHECK(st == MS_OK, "%s: a request that joined a prefetch which then failed: status %d '%s'", rel, st,
          st ? err.msg : "");
    experts_release(r.m->store, 2, ids, 2);
    if (st == MS_OK) printf("  %-36s pagecache a failed read joined in flight (after a release, or a prefetch) is read again\n", rel);
    /* every slot still reading for no one (a failed layer let go of them all): a request waits for
     * a slot to free up instead of failing as if the cache were too small (found by CI: the
     * recovery after a fault in a prefill wave, under ASan) */
    int all[8];
    for (int x = 0; x < 8; x++) all[x] = x;
    set_fault("read-eio-slow");
    CHECK(experts_request(r.m->store, 3, all, 8, &err) == MS_OK, "request 8: %s", err.msg);
    experts_release(r.m->store, 3, all, 8);
    usleep(20000); /* the reads are under way, each failing after 50 ms */
    set_fault("");
    int busy = !experts_ready(r.m->store, 3, 0);
    st = experts_acquire(r.m->store, 4, ids, 2, refs, &err);
    CHECK(busy, "%s: the slow reads were over before the request", rel);
    CHECK(st == MS_OK, "%s: a request while every slot was still loading for no one: status %d '%s'", rel, st,
          st ? err.msg : "");
    if (st == MS_OK) {
        experts_release(r.m->store, 4, ids, 2);
        printf("  %-36s pagecache a request while every slot is loading for no one waits for a slot\n", rel);
    }
    close_run(&r);
}

/* ---- the file truncated while in use, then restored ---- */

static void truncated_then_restored(const char *rel) {
    size_t n;
    char *bytes = t_read_file(t_path(rel), &n);
    char path[256];
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    FILE *f = fopen(path, "wb");
    CHECK(bytes && f && fwrite(bytes, 1, n, f) == n, "copy %s", rel);
    if (f) fclose(f);
    run r;
    ms_error err;
    ref rf;
    if (!bytes || open_run(path, "pagecache", 8, &r, &err)) {
        CHECK(0, "%s: %s", rel, err.msg);
        free(bytes);
        return;
    }
    if (make_ref(&r, &rf) == 0) {
        ms_context_reset(r.c);
        CHECK(ms_eval(r.c, rf.seq, N_PROMPT, 0, &err) == MS_OK, "prompt: %s", err.msg);
        CHECK(truncate(path, 1 << 20) == 0, "truncate");
        ms_status st = MS_OK;
        int s;
        for (s = 0; s < N_STEPS && st == MS_OK; s++) st = ms_eval(r.c, &rf.seq[N_PROMPT + s], 1, 0, &err);
        CHECK(st == MS_ERR_IO && strstr(err.msg, "truncated"), "truncated in use: status %d '%s'", st, st ? err.msg : "");
        f = fopen(path, "r+b"); /* the file comes back: the same inode, as after a remount */
        CHECK(f && fwrite(bytes, 1, n, f) == n, "restore");
        if (f) fclose(f);
        if (st == MS_ERR_IO && recover(&r, &rf, N_PROMPT + s, s, "truncated, then restored") == 0)
            printf("  %-36s pagecache truncated in use: '%s'; restored: the same logits\n", rel, err.msg);
        free(rf.logits);
    }
    close_run(&r);
    free(bytes);
}

/* ---- budgets ---- */

static void budgets(const char *rel) {
    char p[4096];
    snprintf(p, sizeof p, "%s", t_path(rel));
    ms_model_params mp;
    ms_model_params_default(&mp);
    mp.io = "pagecache";
    mp.mem_budget = 10u << 20;
    ms_model *m = NULL;
    ms_error err;
    ms_status st = ms_model_load(p, &mp, &m, &err);
    CHECK(st == MS_ERR_BUDGET && strstr(err.msg, "--mem budget of 10.0 MiB") && strstr(err.msg, "raise --mem"),
          "a 10 MiB budget: status %d '%s'", st, st ? err.msg : "");
    if (st == MS_ERR_BUDGET) printf("  %s\n", err.msg);
    if (!st) ms_model_free(m);
    /* enough for the dense weights, not for the expert cache */
    int fits = 0;
    for (uint64_t b = 64u << 20; b < (80u << 20) && !fits; b += 256u << 10) {
        mp.mem_budget = b;
        if (ms_model_load(p, &mp, &m, &err)) continue;
        ms_context_params cp;
        ms_context_params_default(&cp);
        cp.n_ctx = 128;
        cp.n_threads = 1;
        ms_context *c = NULL;
        st = ms_context_new(m, &cp, &c, &err);
        if (st == MS_ERR_BUDGET) {
            CHECK(strstr(err.msg, "leaves") && strstr(err.msg, "raise --mem to at least"), "cache budget: '%s'", err.msg);
            if (!fits++) printf("  %s\n", err.msg);
            /* the model stays usable: a budget that holds the cache works */
        }
        ms_context_free(c);
        ms_model_free(m);
    }
    CHECK(fits, "no budget between 64 and 80 MiB left too little for the expert cache");
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    snprintf(dir, sizeof dir, "/tmp/ms_test_faults_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    snprintf(fault_file, sizeof fault_file, "%s/faults", dir);
    setenv("MS_FAULTS", fault_file, 1); /* before the first model is loaded */
    ms_faults_init();
    char *json = t_read_file(t_path("tiny/qwen35moe/ref.json"), NULL);
    int n = 0;
    int *ids = json ? t_json_ints(json, "prompt_ids", &n) : NULL;
    CHECK(ids && n >= N_PROMPT, "prompt_ids");
    for (int i = 0; ids && i < N_PROMPT && i < n; i++) prompt[i] = ids[i];
    free(ids);
    free(json);

    const char *qwen35 = "tiny/qwen35moe/qwen35moe-f32.gguf", *qwen3 = "tiny/qwen3moe/qwen3moe-f32.gguf";
    const char *san = getenv("MS_SANITIZED");
    if (san && !strcmp(san, "thread")) {
        /* TSan: the load sweeps run one thread at a time (the plain and ASan builds run them) */
        printf("  (TSan build: the load+context allocation sweeps run in the other builds)\n");
    } else {
        alloc_sweep_load(qwen35, "mmap");
        alloc_sweep_load(qwen35, "pagecache");
        alloc_sweep_load(qwen35, "direct");
        alloc_sweep_load(qwen35, "ram");
    }
    alloc_sweep_turn(qwen35, "pagecache", 8);
    alloc_sweep_turn(qwen3, "mmap", 0);
    read_faults(qwen35, "pagecache");
    read_faults(qwen35, "direct");
    read_faults(qwen3, "pagecache");
    load_faults(qwen35, "ram");
    stale_read_error(qwen35);
    truncated_then_restored(qwen35);
    budgets(qwen35);

    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", dir);
    return t_done("test_faults");
}
