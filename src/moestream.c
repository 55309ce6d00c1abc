/* moestream.c - the public API (include/moestream.h) over the internal modules: it wires a
 * GGUF file, the model, tokenizer and expert store into an ms_model, and a thread pool plus a
 * forward context into an ms_context. No computation lives here. */
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>

#include "experts.h"
#include "backend.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "sampler.h"
#include "synth.h"
#include "tokenizer.h"
#include "util.h"

struct ms_context {
    ms_model *m;
    const ms_backend *be;
    void *ctx;
    int recurrent; /* the model has Gated DeltaNet layers: their state is updated in place */
};

void ms_model_params_default(ms_model_params *p) { memset(p, 0, sizeof *p); }

/* "52.0 KiB" / "12.3 MiB" / "1.50 GiB" into buf. */
static const char *fmt_bytes(char buf[32], uint64_t n) {
    if (n < (1ull << 20)) snprintf(buf, 32, "%.1f KiB", n / 1024.0);
    else if (n < (1ull << 30)) snprintf(buf, 32, "%.1f MiB", n / 1048576.0);
    else snprintf(buf, 32, "%.2f GiB", n / 1073741824.0);
    return buf;
}

/* With no --io and no budget: ram when the weights fit in the memory this process can take,
 * with room to spare, and the kernel gives huge pages (the model is then read at load into 2 MiB
 * pages: decode streams every weight once per token, and 4 KiB pages of the file mapping cut
 * that stream at every page); mmap otherwise. */
static int default_io(const ms_model *m) {
    uint64_t need = m->bytes_dense + m->bytes_experts, avail = ms_mem_available();
    return ms_thp_enabled() && avail && need + MS_MEM_MARGIN + avail / 8 <= avail ? MS_IO_RAM : MS_IO_MMAP;
}

ms_status ms_model_load(const char *path, const ms_model_params *p, ms_model **out, ms_error *err) {
    ms_model_params def;
    if (!p) ms_model_params_default(&def), p = &def;
    *out = NULL;
    quant_init();
    ms_faults_init();
    gguf_file *f = gguf_open(path, err);
    if (!f) return err ? err->status : MS_ERR_IO;
    ms_model *m = model_load(f, p->n_expert_used, err); /* owns f from here */
    if (!m) return err ? err->status : MS_ERR_FORMAT;
    m->tok = tokenizer_load(f, err);
    if (!m->tok) goto fail;
    if (tokenizer_n_vocab(m->tok) != m->hp.n_vocab) {
        /* embedding rows may be padded beyond the vocabulary, never fewer */
        if (tokenizer_n_vocab(m->tok) > m->hp.n_vocab) {
            ms_fail(err, MS_ERR_FORMAT, "%s: the tokenizer has %d tokens but token_embd has only %d rows", path,
                    tokenizer_n_vocab(m->tok), m->hp.n_vocab);
            goto fail;
        }
    }
    ms_store_params sp = {0};
    sp.io_mode = p->io ? experts_mode_from_name(p->io) : p->mem_budget ? MS_IO_DIRECT : default_io(m);
    if (sp.io_mode < 0) {
        ms_fail(err, MS_ERR_ARG, "unknown --io mode '%s' (mmap, pagecache, direct or ram)", p->io);
        goto fail;
    }
    if (p->mem_budget && experts_mode_in_place(sp.io_mode)) {
        ms_fail(err, MS_ERR_ARG, "--mem needs --io pagecache or direct (with %s)",
                sp.io_mode == MS_IO_MMAP ? "mmap the OS decides what stays in memory" : "ram the whole model is loaded");
        goto fail;
    }
    /* LFU by default: on skewed routing under a tight budget it kept 89.5% hits to LRU's 84.3%
     * and decoded 15% faster (bench/stream.sh's policy table) */
    sp.policy = MS_EVICT_LFU;
    if (p->evict && !strcmp(p->evict, "lru")) sp.policy = MS_EVICT_LRU;
    else if (p->evict && strcmp(p->evict, "lfu")) {
        ms_fail(err, MS_ERR_ARG, "unknown eviction policy '%s' (lru or lfu)", p->evict);
        goto fail;
    }
    sp.io_threads = p->io_threads;
    sp.track_residency = p->track_residency;
    m->mem_budget = p->mem_budget;
    if (sp.io_mode != MS_IO_MMAP) {
        if (model_make_resident(m, sp.io_mode == MS_IO_RAM, err)) goto fail;
        uint64_t dense = m->dense_arena_bytes + m->n_owned * sizeof(float);
        if (m->mem_budget && dense + MS_MEM_MARGIN >= m->mem_budget) {
            char b[32], d[32], mg[32], need[32];
            ms_fail(err, MS_ERR_BUDGET,
                    "the --mem budget of %s cannot hold the dense weights (%s) and the %s the process needs besides "
                    "them; raise --mem above %s",
                    fmt_bytes(b, m->mem_budget), fmt_bytes(d, dense), fmt_bytes(mg, MS_MEM_MARGIN),
                    fmt_bytes(need, dense + MS_MEM_MARGIN));
            goto fail;
        }
    }
    m->store = experts_open(m, &sp, err);
    if (!m->store) goto fail;
    *out = m;
    return MS_OK;
fail:
    ms_model_free(m);
    return err ? err->status : MS_ERR_FORMAT;
}

void ms_model_free(ms_model *m) {
    if (!m) return;
    experts_close(m->store);
    tokenizer_free(m->tok);
    model_free(m);
}

const char *ms_type_name(int type) { return quant_name(type); }

void ms_model_get_info(const ms_model *m, ms_model_info *o) {
    const ms_hparams *hp = &m->hp;
    memset(o, 0, sizeof *o);
    o->arch = m->arch_name;
    o->name = m->name ? m->name : "";
    o->n_vocab = hp->n_vocab;
    o->n_embd = hp->n_embd;
    o->n_layer = hp->n_layer;
    o->n_ctx_train = hp->n_ctx_train;
    o->n_head = hp->n_head;
    o->n_head_kv = hp->n_head_kv;
    o->head_dim = hp->head_dim;
    o->n_rot = hp->n_rot;
    for (int il = 0; il < hp->n_layer; il++) {
        if (m->layers[il].kind == MS_LAYER_ATTN) o->n_layer_attn++;
        else o->n_layer_linear++;
    }
    o->n_expert = hp->n_expert;
    o->n_expert_used = hp->n_expert_used;
    o->n_expert_used_model = m->n_expert_used_model;
    o->n_ff_exp = hp->n_ff_exp;
    o->n_ff_shexp = hp->n_ff_shexp;
    o->n_k_heads = hp->n_k_heads;
    o->n_v_heads = hp->n_v_heads;
    o->d_state = hp->d_k;
    o->d_conv = hp->d_conv;
    o->rope_base = hp->rope_base;
    o->norm_eps = hp->norm_eps;
    o->bytes_dense = m->bytes_dense;
    o->bytes_experts = m->bytes_experts;
    o->bytes_total = m->bytes_dense + m->bytes_experts;
    const gguf_tensor *te = gguf_find_tensor(m->gguf, "token_embd.weight");
    o->bytes_embd = te ? te->nbytes : 0;
    const ms_layer *l0 = &m->layers[0];
    o->bytes_per_expert = l0->gate_exps.stride + l0->up_exps.stride + l0->down_exps.stride;
    o->n_tensors = m->gguf->n_tensors;
    o->n_parts = m->gguf->n_parts;
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) {
        const gguf_tensor *t = &m->gguf->tensors[i];
        if (t->type >= 0 && t->type < MS_N_TYPES) {
            o->type_bytes[t->type] += t->nbytes;
            o->type_count[t->type]++;
        }
    }
}

static void on_sigbus(int sig) {
    (void)sig;
    static const char msg[] =
        "moestream: the model file was truncated or became unreadable while in use (SIGBUS reading its mapping)\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(1);
}

void ms_install_sigbus_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigbus;
    sigaction(SIGBUS, &sa, NULL);
}

/* ---- tokens ---- */

int ms_n_vocab(const ms_model *m) { return m->hp.n_vocab; }

ms_status ms_tokenize(const ms_model *m, const char *text, size_t len, int parse_special, int32_t **ids, int *n_ids,
                      ms_error *err) {
    return (ms_status)tokenizer_encode(m->tok, text, len, parse_special, ids, n_ids, err);
}

void ms_free_ids(int32_t *ids) { ms_free(ids); }

int ms_token_bytes(const ms_model *m, int32_t id, char *buf, int cap) {
    return tokenizer_token_bytes(m->tok, id, 1, buf, cap);
}

int ms_token_is_eog(const ms_model *m, int32_t id) { return tokenizer_is_eog(m->tok, id); }
int32_t ms_token_find(const ms_model *m, const char *text) { return tokenizer_find(m->tok, text); }

ms_detok *ms_detok_new(const ms_model *m, int render_special) {
    ms_detok *d = ms_calloc(1, sizeof *d);
    if (!d) return NULL;
    if (detok_init(d, m->tok, render_special, NULL)) {
        ms_free(d);
        return NULL;
    }
    return d;
}

const char *ms_detok_push(ms_detok *d, int32_t id, size_t *len) { return detok_push(d, id, len); }
const char *ms_detok_flush(ms_detok *d, size_t *len) { return detok_flush(d, len); }

void ms_detok_free(ms_detok *d) {
    if (!d) return;
    detok_free(d);
    ms_free(d);
}

/* ---- contexts ---- */

void ms_context_params_default(ms_context_params *p) {
    memset(p, 0, sizeof *p);
    p->n_ctx = 4096;
    p->n_batch = 512;
    p->lookahead = -1;
    p->gpu_cpu_share = -1;
}

ms_status ms_context_new(ms_model *m, const ms_context_params *p, ms_context **out, ms_error *err) {
    ms_context_params def;
    if (!p) ms_context_params_default(&def), p = &def;
    *out = NULL;
    ms_backend_params bp = {0};
    bp.n_ctx = p->n_ctx > 0 ? p->n_ctx : 4096;
    bp.n_batch = p->n_batch > 0 ? p->n_batch : 512;
    bp.n_threads = p->n_threads;
    /* the GPU backend has its own default (on) for -1 */
    const int cached = !experts_mode_in_place(experts_io_mode(m->store)); /* pagecache, direct */
    bp.lookahead = p->lookahead >= 0 ? p->lookahead : !p->gpu && cached;
    bp.gpu_mem = p->gpu_mem;
    bp.gpu_device = p->gpu_device;
    bp.gpu_cpu_share = p->gpu_cpu_share;
    if (p->gpu_cpu_share != -1 && !(p->gpu_cpu_share >= 0 && p->gpu_cpu_share <= 1))
        return ms_fail(err, MS_ERR_ARG, "gpu_cpu_share %g: expected a share from 0 to 1, or -1 to tune it", (double)p->gpu_cpu_share);
    const ms_backend *be = &ms_backend_cpu;
    if (p->gpu) {
        be = ms_backend_cuda();
        if (!be) return ms_fail(err, MS_ERR_UNSUPPORTED, "this moestream was built without CUDA (rebuild with make CUDA=1)");
    }
    ms_context *c = ms_calloc(1, sizeof *c);
    if (!c) return ms_fail(err, MS_ERR_NOMEM, "out of memory");
    c->m = m;
    c->be = be;
    for (int il = 0; il < m->hp.n_layer; il++)
        if (m->layers[il].kind == MS_LAYER_GDN) c->recurrent = 1;
    c->ctx = be->create(m, m->store, &bp, err);
    if (!c->ctx) {
        ms_free(c);
        return err ? err->status : MS_ERR_NOMEM;
    }
    if (cached) {
        /* the expert cache gets what the budget leaves after dense weights and this context */
        uint64_t used = m->dense_arena_bytes + m->n_owned * sizeof(float) + MS_MEM_MARGIN;
        used += be->host_bytes ? be->host_bytes(c->ctx) : 0;
        uint64_t cache = m->mem_budget ? (m->mem_budget > used ? m->mem_budget - used : 0)
                                       : experts_slot_bytes(m->store) * (uint64_t)m->hp.n_layer * m->hp.n_expert;
        if (experts_set_cache(m->store, cache, err)) {
            if (err && err->status == MS_ERR_BUDGET && m->mem_budget) {
                /* name the budget and what would do */
                uint64_t slot = experts_slot_bytes(m->store), need = 2 * (uint64_t)m->hp.n_expert_used;
                char b[32], cb[32], ub[32], sb[32], nb[32];
                ms_fail(err, MS_ERR_BUDGET,
                        "the --mem budget of %s leaves %s for the expert cache after the dense weights, this "
                        "context and the process (%s): %llu experts of %s fit, decoding needs %llu; raise --mem "
                        "to at least %s",
                        fmt_bytes(b, m->mem_budget), fmt_bytes(cb, cache), fmt_bytes(ub, used),
                        (unsigned long long)(cache / slot), fmt_bytes(sb, slot), (unsigned long long)need,
                        fmt_bytes(nb, used + need * slot));
            }
            ms_context_free(c);
            return err ? err->status : MS_ERR_BUDGET;
        }
    }
    *out = c;
    return MS_OK;
}

void ms_context_free(ms_context *c) {
    if (!c) return;
    c->be->destroy(c->ctx);
    ms_free(c);
}

ms_status ms_eval(ms_context *c, const int32_t *tokens, int n, int all_logits, ms_error *err) {
    ms_status st = (ms_status)c->be->eval(c->ctx, tokens, n, all_logits, err);
    if (st != MS_OK && st != MS_ERR_ARG && st != MS_ERR_CONTEXT && c->recurrent) {
        /* A batch that failed part way (a read error, no memory) has advanced the recurrent state
         * of the layers before the failure while the position stayed: that state belongs to no
         * position. Go back to the last checkpoint before it (or the start), whose state is whole,
         * so the next evaluation continues from a true state. (Attention layers only wrote KV
         * rows past the position, which the next evaluation overwrites.) */
        int pos = ms_context_pos(c);
        int rp = pos > 0 ? c->be->resume_point(c->ctx, pos - 1) : 0;
        if (rp <= 0 || c->be->truncate(c->ctx, rp, NULL) != MS_OK) c->be->reset(c->ctx);
    }
    return st;
}

const float *ms_logits(const ms_context *c, int i) {
    if (i < 0) i = c->be->n_logits(c->ctx) - 1;
    return c->be->logits(c->ctx, i);
}

int ms_context_pos(const ms_context *c) { return c->be->pos(c->ctx); }
int ms_context_n_ctx(const ms_context *c) { return c->be->n_ctx(c->ctx); }
void ms_context_reset(ms_context *c) { c->be->reset(c->ctx); }
const int32_t *ms_context_tokens(const ms_context *c) { return c->be->history(c->ctx); }
ms_status ms_context_checkpoint(ms_context *c, ms_error *err) { return (ms_status)c->be->checkpoint(c->ctx, err); }
int ms_context_resume_point(const ms_context *c, int n) { return c->be->resume_point(c->ctx, n); }
ms_status ms_context_rewind(ms_context *c, int pos, ms_error *err) { return (ms_status)c->be->truncate(c->ctx, pos, err); }
const char *ms_context_backend(const ms_context *c) { return c->be->name; }

int ms_context_layer_timing(const ms_context *c, int il, double out[4]) {
    const double *t = c->be->layer_timing ? c->be->layer_timing(c->ctx, il) : NULL;
    if (!t) return -1;
    memcpy(out, t, 4 * sizeof(double));
    return 0;
}

void ms_context_stats(const ms_context *c, ms_stats *o) {
    const ms_timing *t = c->be->timing(c->ctx);
    ms_store_stats st;
    experts_stats(c->m->store, &st);
    memset(o, 0, sizeof *o);
    o->tokens = t->tokens;
    o->t_attn = t->attn;
    o->t_route = t->route;
    o->t_expert_wait = t->expert_wait;
    o->t_expert_compute = t->expert_compute;
    o->t_other = t->other;
    o->expert_requests = st.requests;
    o->expert_hits = st.hits;
    o->bytes_read = st.bytes_read;
    o->reads = st.reads;
    o->read_seconds = st.read_seconds;
    o->prefetches = st.prefetches;
    o->prefetch_used = st.prefetch_used;
    o->cache_slots = st.cache_slots;
    o->cache_bytes = st.cache_bytes;
    o->bytes_dense = c->m->dense_arena_bytes + c->m->n_owned * sizeof(float);
    if (experts_io_mode(c->m->store) == MS_IO_RAM) o->cache_bytes = c->m->arena_bytes - c->m->dense_arena_bytes;
    o->bytes_context = c->be->host_bytes ? c->be->host_bytes(c->ctx) : 0;
    o->io = experts_mode_name(experts_io_mode(c->m->store));
    o->gpu_requests = t->cache_requests;
    o->gpu_hits = t->cache_hits;
    o->gpu_bytes_in = t->cache_bytes_in;
    o->gpu_prefetches = t->cache_prefetches;
    o->gpu_prefetch_used = t->cache_prefetch_used;
    o->gpu_cpu_experts = t->cache_cpu;
}

void ms_roofline_of(const ms_model *m, const ms_stats *a, const ms_stats *b, double tokens, double disk_bw,
                    double mem_bw, ms_roofline *o) {
    memset(o, 0, sizeof *o);
    if (tokens <= 0) return;
    ms_model_info in;
    ms_model_get_info(m, &in);
    double req = (double)(b->expert_requests - a->expert_requests), hit = (double)(b->expert_hits - a->expert_hits);
    double per_expert = (double)in.bytes_per_expert;
    o->experts_needed = req / tokens;
    o->hit_rate = req > 0 ? hit / req : 0;
    o->missed_bytes = (req - hit) * per_expert / tokens;
    o->resident_bytes = (double)(in.bytes_dense - in.bytes_embd) + (double)in.bytes_embd / in.n_vocab + hit * per_expert / tokens;
    o->read_bytes = (double)(b->bytes_read - a->bytes_read) / tokens;
    o->seconds = o->missed_bytes / disk_bw + o->resident_bytes / mem_bw;
}

/* ---- sampling ---- */

void ms_sampler_params_default(ms_sampler_params *p) {
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = MS_SEED_RANDOM;
}

ms_sampler *ms_sampler_new(const ms_model *m, const ms_sampler_params *p) {
    ms_sampler_params def;
    if (!p) ms_sampler_params_default(&def), p = &def;
    return sampler_new(p, m->hp.n_vocab);
}

void ms_sampler_free(ms_sampler *s) { sampler_free(s); }
int32_t ms_sample(ms_sampler *s, const float *logits) { return sampler_sample(s, logits); }
void ms_sampler_accept(ms_sampler *s, int32_t token) { sampler_accept(s, token); }
void ms_sampler_reset(ms_sampler *s) { sampler_reset(s); }

/* ---- synthetic models ---- */

ms_status ms_synth(const ms_synth_params *p, const char *path, uint64_t *bytes_out, ms_error *err) {
    quant_init();
    return (ms_status)synth_write(p, path, bytes_out, err);
}

uint64_t ms_synth_size(const ms_synth_params *p) { return synth_size(p); }
const char *ms_synth_presets(void) { return synth_presets(); }

int ms_type_from_name(const char *name) {
    for (int t = 0; t < MS_TYPE_COUNT; t++) {
        const ms_type_info *info = quant_info(t);
        if (info && !strcasecmp(info->name, name)) return t;
    }
    return -1;
}
