/* front.c - what the chat and server front ends share: options, model loading, and one turn of
 * generation over the public API (prefix reuse, sampling, stop strings, a reasoning budget, a
 * planned tool call with constrained values, cancellation). It prints nothing but fatal errors. */
#include "front.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void front_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("moestream: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

void fbuf_add(fbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) front_die("out of memory");
        b->s = p;
        b->cap = cap;
    }
    if (n) memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

void fbuf_adds(fbuf *b, const char *s) { fbuf_add(b, s, strlen(s)); }

void fbuf_addf(fbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    char *tmp = malloc((size_t)n + 1);
    if (!tmp) front_die("out of memory");
    va_start(ap, fmt);
    vsnprintf(tmp, (size_t)n + 1, fmt, ap);
    va_end(ap);
    fbuf_add(b, tmp, (size_t)n);
    free(tmp);
}

void fbuf_free(fbuf *b) {
    free(b->s);
    memset(b, 0, sizeof *b);
}

void front_opts_default(front_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_batch = 512;
    o->lookahead = -1; /* the library's default: on where experts are read */
    o->cpu_share = -1; /* tuned while decoding */
    ms_sampler_params_default(&o->sp);
}

const char *front_arg(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) front_die("%s needs a value", argv[*i]);
    return argv[++*i];
}

long front_int(const char *flag, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) front_die("%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, v);
    return x;
}

float front_float(const char *flag, const char *v) {
    char *end;
    float x = strtof(v, &end);
    if (end == v || *end || !isfinite(x)) front_die("%s expects a number, got '%s'", flag, v);
    return x;
}

uint64_t front_size(const char *flag, const char *v) {
    uint64_t b;
    if (ms_parse_size(v, &b) || !b) front_die("%s expects a size like 8G, got '%s'", flag, v);
    return b;
}

int front_parse_common(int argc, char **argv, int *i, front_opts *o) {
    const char *a = argv[*i];
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = front_arg(argc, argv, i);
    else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) o->n_ctx = (int)front_int(a, front_arg(argc, argv, i), 1, 1 << 24);
    else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) o->n_batch = (int)front_int(a, front_arg(argc, argv, i), 1, 1 << 16);
    else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) o->threads = (int)front_int(a, front_arg(argc, argv, i), 1, 1024);
    else if (!strcmp(a, "--temp")) o->sp.temperature = front_float(a, front_arg(argc, argv, i));
    else if (!strcmp(a, "--top-k")) o->sp.top_k = (int)front_int(a, front_arg(argc, argv, i), 0, 1 << 30);
    else if (!strcmp(a, "--top-p")) o->sp.top_p = front_float(a, front_arg(argc, argv, i));
    else if (!strcmp(a, "--min-p")) o->sp.min_p = front_float(a, front_arg(argc, argv, i));
    else if (!strcmp(a, "--repeat-penalty")) o->sp.repeat_penalty = front_float(a, front_arg(argc, argv, i));
    else if (!strcmp(a, "--repeat-last-n")) o->sp.repeat_last_n = (int)front_int(a, front_arg(argc, argv, i), 0, 1 << 20);
    else if (!strcmp(a, "--seed") || !strcmp(a, "-s")) {
        long long s = front_int(a, front_arg(argc, argv, i), -1, 0x7fffffffffffffffLL);
        o->sp.seed = s < 0 ? MS_SEED_RANDOM : (uint64_t)s;
    } else if (!strcmp(a, "--experts-per-token")) o->experts = (int)front_int(a, front_arg(argc, argv, i), 1, 1 << 16);
    else if (!strcmp(a, "--chat-template")) o->chat_template = front_arg(argc, argv, i);
    else if (!strcmp(a, "--io")) o->io = front_arg(argc, argv, i);
    else if (!strcmp(a, "--evict")) o->evict = front_arg(argc, argv, i);
    else if (!strcmp(a, "--mem")) o->mem = front_size(a, front_arg(argc, argv, i));
    else if (!strcmp(a, "--io-threads")) o->io_threads = (int)front_int(a, front_arg(argc, argv, i), 1, 1024);
    else if (!strcmp(a, "--lookahead")) o->lookahead = 1;
    else if (!strcmp(a, "--no-lookahead")) o->lookahead = 0;
    else if (!strcmp(a, "--gpu")) o->gpu = 1;
    else if (!strcmp(a, "--gpu-device")) o->gpu_device = (int)front_int(a, front_arg(argc, argv, i), 0, 64);
    else if (!strcmp(a, "--gpu-mem")) o->gpu_mem = front_size(a, front_arg(argc, argv, i)), o->gpu = 1;
    else if (!strcmp(a, "--cpu-share")) {
        const char *v = front_arg(argc, argv, i);
        o->cpu_share = !strcmp(v, "auto") ? -1 : front_float(a, v);
        if (o->cpu_share != -1 && !(o->cpu_share >= 0 && o->cpu_share <= 1)) front_die("--cpu-share: '%s' is not auto or a share from 0 to 1", v);
    }
    else return 0;
    return 1;
}

ms_model *front_load_model(const front_opts *o) {
    if (!o->model) front_die("no model given (use -m FILE)");
    ms_model_params mp;
    ms_model_params_default(&mp);
    mp.n_expert_used = o->experts;
    /* the GPU backend copies experts from the file mapping, page-locked in place */
    mp.io = o->io ? o->io : o->gpu && !o->mem ? "mmap" : NULL;
    mp.mem_budget = o->mem;
    mp.evict = o->evict;
    mp.io_threads = o->io_threads;
    mp.track_residency = o->track_residency;
    ms_model *m;
    ms_error err;
    if (ms_model_load(o->model, &mp, &m, &err)) front_die("%s", err.msg);
    if (o->experts) {
        ms_model_info info;
        ms_model_get_info(m, &info);
        if (info.n_expert_used != info.n_expert_used_model)
            fprintf(stderr, "moestream: note: routing each token to %d experts instead of the model's %d changes the output\n",
                    info.n_expert_used, info.n_expert_used_model);
    }
    return m;
}

ms_context *front_new_context(ms_model *m, const front_opts *o) {
    ms_context_params cp;
    ms_context_params_default(&cp);
    if (o->n_ctx) cp.n_ctx = o->n_ctx;
    cp.n_batch = o->n_batch;
    cp.n_threads = o->threads;
    cp.lookahead = o->lookahead;
    cp.gpu = o->gpu;
    cp.gpu_device = o->gpu_device;
    cp.gpu_mem = o->gpu_mem;
    cp.gpu_cpu_share = o->cpu_share;
    ms_context *c;
    ms_error err;
    if (ms_context_new(m, &cp, &c, &err)) front_die("%s", err.msg);
    return c;
}

char *front_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) front_die("%s: cannot open: %s", path, strerror(errno));
    fbuf b = {0};
    char tmp[65536];
    size_t r;
    fbuf_add(&b, "", 0);
    while ((r = fread(tmp, 1, sizeof tmp, f)) > 0) fbuf_add(&b, tmp, r);
    if (ferror(f)) front_die("%s: read error", path);
    fclose(f);
    if (len) *len = b.len;
    return b.s;
}

/* ---- one turn ---- */

typedef struct gen {
    const gen_req *r;
    ms_model *m;
    ms_context *c;
    ms_chat_stream *split;
    fbuf text;      /* everything generated */
    size_t emitted; /* bytes of text passed to the splitter */
    int stopped;    /* a stop string matched */
} gen;

static void gen_emit(gen *g, const char *p, size_t n) {
    if (g->r->raw) {
        if (g->r->on_text) g->r->on_text(g->r->ud, MS_CHAT_CONTENT, p, n);
    } else ms_chat_stream_push(g->split, p, n, g->r->on_text, g->r->ud);
}

/* Adds generated bytes: cuts at a stop string, holds back what may begin one, passes the rest on. */
static void gen_add(gen *g, const char *p, size_t n) {
    const gen_req *r = g->r;
    size_t old = g->text.len;
    fbuf_add(&g->text, p, n);
    size_t hold = 0;
    for (int k = 0; k < r->n_stop && !g->stopped; k++) {
        const char *s = r->stop[k];
        size_t sl = strlen(s);
        if (!sl) continue;
        size_t from = old >= sl ? old - sl + 1 : 0;
        for (size_t i = from; i + sl <= g->text.len; i++)
            if (!memcmp(g->text.s + i, s, sl)) {
                g->text.len = i;
                g->text.s[i] = 0;
                g->stopped = 1;
                break;
            }
    }
    if (!g->stopped)
        for (int k = 0; k < r->n_stop; k++) {
            const char *s = r->stop[k];
            size_t sl = strlen(s);
            for (size_t l = sl > 0 ? sl - 1 : 0; l > hold; l--)
                if (l <= g->text.len && !memcmp(g->text.s + g->text.len - l, s, l)) {
                    hold = l;
                    break;
                }
        }
    if (g->text.len - hold > g->emitted) {
        gen_emit(g, g->text.s + g->emitted, g->text.len - hold - g->emitted);
        g->emitted = g->text.len - hold;
    }
}

/* Evaluates fixed text (special tokens parsed). */
static ms_status eval_text(gen *g, const char *text, ms_error *err) {
    int32_t *ids = NULL;
    int n = 0;
    ms_status st = ms_tokenize(g->m, text, strlen(text), 1, &ids, &n, err);
    if (st == MS_OK && n) st = ms_eval(g->c, ids, n, 0, err);
    ms_free_ids(ids);
    return st;
}

static int cancelled(const gen_req *r) { return r->cancel && r->cancel(r->ud); }

/* The planned tool call: fixed text from the plan, values sampled under constraints. */
static ms_status gen_plan(gen *g, ms_sampler *s, gen_result *out, ms_error *err) {
    const gen_req *r = g->r;
    int nv = ms_n_vocab(g->m);
    float *lg = malloc(sizeof(float) * (size_t)nv);
    if (!lg) front_die("out of memory");
    ms_chat_step st;
    fbuf val = {0};
    const char *value = NULL;
    ms_status rc = MS_OK;
    out->finish = "tool_calls";
    while (ms_chat_plan_next(r->plan, value, &st)) {
        value = NULL;
        if (st.text) {
            if ((rc = eval_text(g, st.text, err))) break;
            gen_add(g, st.text, strlen(st.text));
            continue;
        }
        ms_constraint *k = ms_constraint_new(g->m, st.kind, st.choices, st.n_choices);
        if (!k) {
            rc = MS_ERR_NOMEM;
            snprintf(err->msg, sizeof err->msg, "out of memory for a constrained value");
            err->status = rc;
            break;
        }
        int cap = st.kind == MS_VALUE_OBJECT || st.kind == MS_VALUE_ARRAY || st.kind == MS_VALUE_JSON ? 256
                  : st.kind == MS_VALUE_NUMBER || st.kind == MS_VALUE_INTEGER || st.kind == MS_VALUE_BOOLEAN ? 24
                                                                                                              : 48;
        if (r->max_tokens > 0 && cap > r->max_tokens - out->n_gen) cap = r->max_tokens - out->n_gen;
        for (int i = 0; i < cap; i++) {
            if (cancelled(r)) {
                out->finish = "cancelled";
                break;
            }
            memcpy(lg, ms_logits(g->c, -1), sizeof(float) * (size_t)nv);
            if (!ms_constraint_apply(k, lg)) break;
            int32_t tok = ms_sample(s, lg);
            int a = ms_constraint_accept(k, tok);
            if (a == 2) break;
            ms_sampler_accept(s, tok);
            out->n_gen++;
            if ((rc = ms_eval(g->c, &tok, 1, 0, err))) break;
            if (a == 1) break;
        }
        const char *close = ms_constraint_closing(k);
        if (rc == MS_OK && *close) rc = eval_text(g, close, err);
        val.len = 0;
        fbuf_adds(&val, ms_constraint_text(k));
        fbuf_adds(&val, close);
        gen_add(g, val.s, val.len);
        value = val.s;
        ms_constraint_free(k);
        if (rc || !strcmp(out->finish, "cancelled")) break;
    }
    if (rc == MS_ERR_CONTEXT) out->finish = "length", rc = MS_OK;
    fbuf_free(&val);
    free(lg);
    return rc;
}

ms_status front_generate(ms_model *m, ms_context *c, const gen_req *r, gen_result *out, ms_error *err) {
    memset(out, 0, sizeof *out);
    out->n_prompt = r->n;
    out->finish = "stop";
    gen g = {r, m, c, ms_chat_stream_new(r->think_open, r->tools), {0}, 0, 0};
    if (!g.split) {
        snprintf(err->msg, sizeof err->msg, "out of memory starting a reply");
        return err->status = MS_ERR_NOMEM;
    }
    fbuf_add(&g.text, "", 0);
    int ck[2], nck = 0;
    if (r->hist_end > 0 && r->hist_end < r->n) ck[nck++] = r->hist_end;
    ck[nck++] = r->n - 1; /* the same prompt again re-evaluates only its last token */
    double t0 = now();
    ms_status st = ms_chat_prefill(c, r->ids, r->n, ck, nck, r->cancel, r->ud, &out->n_reused, err);
    out->t_prefill = now() - t0;
    ms_sampler *s = NULL;
    ms_detok *d = NULL;
    if (st) goto done;
    if (ms_context_pos(c) < r->n) {
        out->finish = "cancelled";
        goto done;
    }
    s = ms_sampler_new(m, &r->sp);
    d = ms_detok_new(m, 0);
    if (!s || !d) {
        snprintf(err->msg, sizeof err->msg, "out of memory starting a reply");
        err->status = st = MS_ERR_NOMEM;
        goto done;
    }
    int first = r->n > r->sp.repeat_last_n ? r->n - r->sp.repeat_last_n : 0;
    for (int i = first; i < r->n; i++) ms_sampler_accept(s, r->ids[i]);
    double t1 = now();
    if (r->plan) {
        st = gen_plan(&g, s, out, err);
        out->t_decode = now() - t1;
        goto done;
    }
    int n_think = 0, budget_used = 0;
    for (;;) {
        if (g.stopped) break;
        if (r->max_tokens > 0 && out->n_gen >= r->max_tokens) {
            out->finish = "length";
            break;
        }
        if (cancelled(r)) {
            out->finish = "cancelled";
            break;
        }
        if (r->think_budget >= 0 && !budget_used && ms_chat_stream_part(g.split) == MS_CHAT_REASONING &&
            n_think >= r->think_budget) {
            /* close the reasoning the way the model would, then let it answer */
            budget_used = 1;
            const char *close = "\n</think>\n\n";
            if ((st = eval_text(&g, close, err))) break;
            gen_add(&g, close, strlen(close));
            continue;
        }
        if (ms_context_pos(c) >= ms_context_n_ctx(c)) {
            out->finish = "length";
            break;
        }
        int32_t tok = ms_sample(s, ms_logits(c, -1));
        if (ms_token_is_eog(m, tok) && !r->ignore_eos) break;
        ms_sampler_accept(s, tok);
        out->n_gen++;
        if (ms_chat_stream_part(g.split) == MS_CHAT_REASONING) n_think++;
        size_t k;
        const char *piece = ms_detok_push(d, tok, &k);
        gen_add(&g, piece, k);
        if (g.stopped) break;
        if ((st = ms_eval(c, &tok, 1, 0, err))) {
            if (st == MS_ERR_CONTEXT) {
                st = MS_OK;
                out->finish = "length";
            }
            break;
        }
    }
    out->t_decode = now() - t1;
done:
    if (d) {
        size_t k;
        const char *rest = ms_detok_flush(d, &k);
        if (!g.stopped && k) gen_add(&g, rest, k);
    }
    if (g.text.len > g.emitted) gen_emit(&g, g.text.s + g.emitted, g.text.len - g.emitted);
    if (!r->raw) ms_chat_stream_flush(g.split, r->on_text, r->ud);
    ms_chat_stream_free(g.split);
    ms_detok_free(d);
    ms_sampler_free(s);
    if (st == MS_OK) {
        ms_error e2;
        ms_context_checkpoint(c, &e2); /* the next turn may resume after this reply */
        out->text = g.text.s;
        out->len = g.text.len;
    } else fbuf_free(&g.text);
    return st;
}
