/* model.c - reads hyperparameters and binds weights for the supported architectures.
 *
 * Per-architecture differences are data: which metadata keys and tensor names exist, how the
 * Gated DeltaNet heads are grouped. The forward pass (forward.c) reads only ms_hparams/ms_layer.
 */
#include "model.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quant.h"
#include "threads.h"

typedef struct arch_desc {
    const char *name;
    ms_arch arch;
    int hybrid;         /* Gated DeltaNet layers mixed with full attention */
    int gdn_interleave; /* see ms_hparams */
} arch_desc;

static const arch_desc ARCHS[] = {
    {"qwen3moe", MS_ARCH_QWEN3MOE, 0, 0},
    {"qwen3next", MS_ARCH_QWEN3NEXT, 1, 1},
    {"qwen35moe", MS_ARCH_QWEN35MOE, 1, 0},
};

const char *model_arch_name(ms_arch a) {
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (ARCHS[i].arch == a) return ARCHS[i].name;
    return "?";
}

/* Loader state: the model being built and the error sink. */
typedef struct loader {
    struct ms_model *m;
    const char *arch;
    ms_err *e;
    char key[256];
} loader;

static const char *akey(loader *L, const char *suffix) {
    snprintf(L->key, sizeof L->key, "%s.%s", L->arch, suffix);
    return L->key;
}

/* Reads a required u32 hyperparameter into *out. */
static int need_u32(loader *L, const char *suffix, int *out) {
    uint32_t v;
    const char *k = akey(L, suffix);
    if (gguf_get_u32(L->m->gguf, k, &v)) {
        const gguf_kv *kv = gguf_get(L->m->gguf, k);
        if (kv && kv->type == GGUF_ARRAY)
            return ms_fail(L->e, MS_ERR_UNSUPPORTED, "%s: per-layer values for '%s' are not supported",
                           L->m->gguf->parts[0].path, k);
        return ms_fail(L->e, MS_ERR_FORMAT, "%s: missing or invalid metadata key '%s' (expected an integer)",
                       L->m->gguf->parts[0].path, k);
    }
    if (v > (1u << 30))
        return ms_fail(L->e, MS_ERR_FORMAT, "%s: metadata '%s' = %u is out of range", L->m->gguf->parts[0].path, k, v);
    *out = (int)v;
    return MS_OK;
}

static void opt_u32(loader *L, const char *suffix, int *out) {
    uint32_t v;
    if (!gguf_get_u32(L->m->gguf, akey(L, suffix), &v) && v <= (1u << 30)) *out = (int)v;
}

static void opt_f32(loader *L, const char *suffix, float *out) {
    float v;
    if (!gguf_get_f32(L->m->gguf, akey(L, suffix), &v)) *out = v;
}

static const gguf_tensor *find(loader *L, const char *name) {
    return gguf_find_tensor(L->m->gguf, name);
}

static int check_type(loader *L, const gguf_tensor *t) {
    const ms_type_info *info = quant_info(t->type);
    if (!info || !info->supported)
        return ms_fail(L->e, MS_ERR_UNSUPPORTED, "tensor '%s' has type %s, which moestream does not support",
                       t->name, quant_name(t->type));
    return MS_OK;
}

static int shape_error(loader *L, const gguf_tensor *t, const char *expect) {
    char got[96];
    int n = snprintf(got, sizeof got, "[");
    for (int d = 0; d < t->n_dims; d++)
        n += snprintf(got + n, sizeof got - n, "%s%lld", d ? ", " : "", (long long)t->ne[d]);
    snprintf(got + n, sizeof got - n, "]");
    return ms_fail(L->e, MS_ERR_FORMAT, "tensor '%s' has shape %s, expected %s", t->name, got, expect);
}

/* Binds a 2-D weight [n_out][n_in]. required=0 leaves *out zeroed when absent. */
static int get_mat(loader *L, const char *name, int64_t n_in, int64_t n_out, int required, ms_mat *out) {
    memset(out, 0, sizeof *out);
    const gguf_tensor *t = find(L, name);
    if (!t) {
        if (!required) return MS_OK;
        return ms_fail(L->e, MS_ERR_FORMAT, "missing tensor '%s'", name);
    }
    char expect[64];
    snprintf(expect, sizeof expect, "[%lld, %lld]", (long long)n_in, (long long)n_out);
    if (t->ne[0] != n_in || t->ne[1] != n_out || t->ne[2] != 1 || t->ne[3] != 1) return shape_error(L, t, expect);
    if (check_type(L, t)) return L->e ? L->e->status : MS_ERR_UNSUPPORTED;
    out->type = t->type;
    out->n_in = n_in;
    out->n_out = n_out;
    out->row_bytes = quant_row_bytes(t->type, n_in);
    out->data = t->data;
    return MS_OK;
}

static int get_mat3(loader *L, const char *name, int64_t n_in, int64_t n_out, int64_t n_expert, ms_mat3 *out) {
    memset(out, 0, sizeof *out);
    const gguf_tensor *t = find(L, name);
    if (!t) return ms_fail(L->e, MS_ERR_FORMAT, "missing tensor '%s'", name);
    char expect[96];
    snprintf(expect, sizeof expect, "[%lld, %lld, %lld]", (long long)n_in, (long long)n_out, (long long)n_expert);
    if (t->ne[0] != n_in || t->ne[1] != n_out || t->ne[2] != n_expert || t->ne[3] != 1) return shape_error(L, t, expect);
    if (check_type(L, t)) return L->e ? L->e->status : MS_ERR_UNSUPPORTED;
    out->type = t->type;
    out->n_in = n_in;
    out->n_out = n_out;
    out->n_expert = n_expert;
    out->row_bytes = quant_row_bytes(t->type, n_in);
    out->stride = out->row_bytes * (size_t)n_out;
    out->data = t->data;
    out->src = t;
    return MS_OK;
}

/* Appends n floats to the model's owned storage; returns the offset or -1. */
static int64_t own_floats(loader *L, size_t n) {
    struct ms_model *m = L->m;
    if (m->n_owned + n > m->cap_owned) {
        size_t cap = m->cap_owned ? m->cap_owned : 4096;
        while (cap < m->n_owned + n) cap *= 2;
        float *p = ms_realloc(m->owned, cap * sizeof(float));
        if (!p) return -1;
        m->owned = p;
        m->cap_owned = cap;
    }
    int64_t off = (int64_t)m->n_owned;
    m->n_owned += n;
    return off;
}

/* Binds a small f32 tensor of n elements (any shape with that many); F16/BF16/quantized ones are
 * converted once into owned storage. The returned pointer is fixed up after loading (owned
 * storage may move while it grows), so it is recorded as an offset tagged in *fix. */
typedef struct vec_fix {
    const float **dst;
    int64_t off;
} vec_fix;

typedef struct fixups {
    vec_fix *v;
    int n, cap;
} fixups;

static int get_vec(loader *L, fixups *fx, const char *name, int64_t n, int required, const float **out) {
    *out = NULL;
    const gguf_tensor *t = find(L, name);
    if (!t) {
        if (!required) return MS_OK;
        return ms_fail(L->e, MS_ERR_FORMAT, "missing tensor '%s'", name);
    }
    int64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    if (nel != n) {
        char expect[48];
        snprintf(expect, sizeof expect, "%lld values", (long long)n);
        return shape_error(L, t, expect);
    }
    if (check_type(L, t)) return L->e ? L->e->status : MS_ERR_UNSUPPORTED;
    if (t->type == MS_TYPE_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = (const float *)t->data;
        return MS_OK;
    }
    int64_t off = own_floats(L, (size_t)n);
    if (off < 0) return ms_fail(L->e, MS_ERR_NOMEM, "out of memory converting '%s'", name);
    quant_dequant_ref(t->type, t->data, L->m->owned + off, n);
    if (fx->n == fx->cap) {
        int cap = fx->cap ? fx->cap * 2 : 64;
        vec_fix *v = ms_realloc(fx->v, sizeof(vec_fix) * cap);
        if (!v) return ms_fail(L->e, MS_ERR_NOMEM, "out of memory");
        fx->v = v;
        fx->cap = cap;
    }
    fx->v[fx->n++] = (vec_fix){out, off};
    return MS_OK;
}

static int is_recurrent_layer(loader *L, int il, int *out) {
    const gguf_kv *kv = gguf_get(L->m->gguf, akey(L, "attention.recurrent_layers"));
    if (kv) {
        uint64_t v;
        if (kv->type != GGUF_ARRAY || gguf_arr_u64(kv, (uint64_t)il, &v))
            return ms_fail(L->e, MS_ERR_FORMAT, "metadata '%s' is not an array covering layer %d", L->key, il);
        *out = v != 0;
        return MS_OK;
    }
    int interval = 4;
    opt_u32(L, "full_attention_interval", &interval);
    if (interval <= 0) return ms_fail(L->e, MS_ERR_FORMAT, "full_attention_interval must be positive");
    *out = (il + 1) % interval != 0;
    return MS_OK;
}

#define TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

static int load_hparams(loader *L, const arch_desc *ad) {
    ms_hparams *hp = &L->m->hp;
    memset(hp, 0, sizeof *hp);
    hp->arch = ad->arch;
    hp->gdn_interleave = ad->gdn_interleave;
    TRY(need_u32(L, "block_count", &hp->n_layer));
    if ((int64_t)hp->n_layer > L->m->gguf->n_tensors) /* each layer has tensors: bound it before allocating */
        return ms_fail(L->e, MS_ERR_FORMAT, "%s: metadata '%s' says %d layers but the file holds only %lld tensors",
                       L->m->gguf->parts[0].path, L->key, hp->n_layer, (long long)L->m->gguf->n_tensors);
    TRY(need_u32(L, "embedding_length", &hp->n_embd));
    TRY(need_u32(L, "attention.head_count", &hp->n_head));
    hp->n_head_kv = hp->n_head;
    opt_u32(L, "attention.head_count_kv", &hp->n_head_kv);
    hp->n_ctx_train = 4096;
    opt_u32(L, "context_length", &hp->n_ctx_train);
    hp->head_dim = hp->n_head ? hp->n_embd / hp->n_head : 0;
    opt_u32(L, "attention.key_length", &hp->head_dim);
    int v_len = hp->head_dim;
    opt_u32(L, "attention.value_length", &v_len);
    if (v_len != hp->head_dim)
        return ms_fail(L->e, MS_ERR_UNSUPPORTED, "key_length %d != value_length %d is not supported", hp->head_dim, v_len);
    hp->n_rot = hp->head_dim;
    opt_u32(L, "rope.dimension_count", &hp->n_rot);
    hp->rope_base = 10000.0f;
    opt_f32(L, "rope.freq_base", &hp->rope_base);
    hp->norm_eps = 1e-6f;
    opt_f32(L, "attention.layer_norm_rms_epsilon", &hp->norm_eps);
    TRY(need_u32(L, "expert_count", &hp->n_expert));
    TRY(need_u32(L, "expert_used_count", &hp->n_expert_used));
    opt_u32(L, "expert_feed_forward_length", &hp->n_ff_exp);
    opt_u32(L, "expert_shared_feed_forward_length", &hp->n_ff_shexp);
    opt_f32(L, "expert_weights_scale", &hp->expert_weights_scale);
    hp->norm_topk = 1;
    if (ad->hybrid) {
        TRY(need_u32(L, "ssm.conv_kernel", &hp->d_conv));
        TRY(need_u32(L, "ssm.state_size", &hp->d_k));
        TRY(need_u32(L, "ssm.group_count", &hp->n_k_heads));
        TRY(need_u32(L, "ssm.time_step_rank", &hp->n_v_heads));
        int d_inner;
        TRY(need_u32(L, "ssm.inner_size", &d_inner));
        if (!hp->n_v_heads || !hp->n_k_heads || d_inner % hp->n_v_heads || hp->n_v_heads % hp->n_k_heads)
            return ms_fail(L->e, MS_ERR_FORMAT, "inconsistent Gated DeltaNet sizes: inner %d, %d value heads, %d key heads",
                           d_inner, hp->n_v_heads, hp->n_k_heads);
        hp->d_v = d_inner / hp->n_v_heads;
        if (hp->d_v != hp->d_k)
            return ms_fail(L->e, MS_ERR_UNSUPPORTED, "Gated DeltaNet with key dim %d != value dim %d is not supported",
                           hp->d_k, hp->d_v);
        hp->conv_dim = 2 * hp->n_k_heads * hp->d_k + hp->n_v_heads * hp->d_v;
    }
    if (hp->n_layer <= 0 || hp->n_embd <= 0 || hp->n_head <= 0 || hp->n_head_kv <= 0 || hp->head_dim <= 0 ||
        hp->n_head % hp->n_head_kv || hp->n_rot > hp->head_dim || hp->n_rot % 2 || hp->n_expert <= 0 ||
        hp->n_expert_used <= 0 || hp->n_expert_used > hp->n_expert)
        return ms_fail(L->e, MS_ERR_FORMAT,
                       "inconsistent hyperparameters: %d layers, n_embd %d, %d heads / %d kv heads of %d (rot %d), %d experts / %d used",
                       hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_rot, hp->n_expert,
                       hp->n_expert_used);
    return MS_OK;
}

static int load_layer(loader *L, fixups *fx, int il, const arch_desc *ad) {
    struct ms_model *m = L->m;
    ms_hparams *hp = &m->hp;
    ms_layer *ly = &m->layers[il];
    char n[128];
#define NAME(suffix) (snprintf(n, sizeof n, "blk.%d.%s", il, suffix), n)
    int recurrent = 0;
    if (ad->hybrid) TRY(is_recurrent_layer(L, il, &recurrent));
    ly->kind = recurrent ? MS_LAYER_GDN : MS_LAYER_ATTN;
    int64_t E = hp->n_embd;
    TRY(get_vec(L, fx, NAME("attn_norm.weight"), E, 1, &ly->attn_norm));
    if (find(L, NAME("post_attention_norm.weight")))
        TRY(get_vec(L, fx, n, E, 1, &ly->ffn_norm));
    else
        TRY(get_vec(L, fx, NAME("ffn_norm.weight"), E, 1, &ly->ffn_norm));

    if (ly->kind == MS_LAYER_ATTN) {
        int64_t q_out = (int64_t)hp->n_head * hp->head_dim, kv_out = (int64_t)hp->n_head_kv * hp->head_dim;
        ly->attn_gated = ad->hybrid;
        TRY(get_mat(L, NAME("attn_q.weight"), E, q_out * (ly->attn_gated ? 2 : 1), 1, &ly->wq));
        TRY(get_mat(L, NAME("attn_k.weight"), E, kv_out, 1, &ly->wk));
        TRY(get_mat(L, NAME("attn_v.weight"), E, kv_out, 1, &ly->wv));
        TRY(get_mat(L, NAME("attn_output.weight"), q_out, E, 1, &ly->wo));
        TRY(get_vec(L, fx, NAME("attn_q_norm.weight"), hp->head_dim, ad->hybrid, &ly->q_norm));
        TRY(get_vec(L, fx, NAME("attn_k_norm.weight"), hp->head_dim, ad->hybrid, &ly->k_norm));
        if (find(L, NAME("attn_q.bias")) || find(L, NAME("attn_qkv.weight")))
            return ms_fail(L->e, MS_ERR_UNSUPPORTED, "layer %d: attention biases / fused qkv in attention layers are not supported", il);
    } else {
        int64_t value_dim = (int64_t)hp->n_v_heads * hp->d_v;
        if (!find(L, NAME("attn_qkv.weight")) && find(L, NAME("ssm_in.weight")))
            return ms_fail(L->e, MS_ERR_UNSUPPORTED,
                           "layer %d uses the legacy fused 'ssm_in' layout; convert the model again with a current llama.cpp", il);
        TRY(get_mat(L, NAME("attn_qkv.weight"), E, hp->conv_dim, 1, &ly->wqkv));
        TRY(get_mat(L, NAME("attn_gate.weight"), E, value_dim, 1, &ly->wz));
        if (find(L, NAME("ssm_ba.weight"))) {
            TRY(get_mat(L, n, E, 2 * hp->n_v_heads, 1, &ly->wba));
        } else {
            TRY(get_mat(L, NAME("ssm_beta.weight"), E, hp->n_v_heads, 1, &ly->wbeta));
            TRY(get_mat(L, NAME("ssm_alpha.weight"), E, hp->n_v_heads, 1, &ly->walpha));
        }
        const gguf_tensor *conv = find(L, NAME("ssm_conv1d.weight"));
        if (conv && (conv->ne[0] != hp->d_conv || conv->ne[1] != hp->conv_dim)) {
            char expect[64];
            snprintf(expect, sizeof expect, "[%d, %d]", hp->d_conv, hp->conv_dim);
            return shape_error(L, conv, expect);
        }
        TRY(get_vec(L, fx, n, (int64_t)hp->d_conv * hp->conv_dim, 1, &ly->conv1d));
        TRY(get_vec(L, fx, NAME("ssm_dt.bias"), hp->n_v_heads, 1, &ly->dt_bias));
        TRY(get_vec(L, fx, NAME("ssm_a"), hp->n_v_heads, 1, &ly->ssm_a));
        TRY(get_vec(L, fx, NAME("ssm_norm.weight"), hp->d_v, 1, &ly->ssm_norm));
        TRY(get_mat(L, NAME("ssm_out.weight"), value_dim, E, 1, &ly->ssm_out));
    }

    TRY(get_mat(L, NAME("ffn_gate_inp.weight"), E, hp->n_expert, 1, &ly->router));
    const gguf_tensor *g = find(L, NAME("ffn_gate_exps.weight"));
    if (!g) {
        if (find(L, NAME("ffn_gate_up_exps.weight")))
            return ms_fail(L->e, MS_ERR_UNSUPPORTED, "layer %d: fused gate_up expert tensors are not supported", il);
        return ms_fail(L->e, MS_ERR_FORMAT, "missing tensor '%s'", NAME("ffn_gate_exps.weight"));
    }
    if (!hp->n_ff_exp) hp->n_ff_exp = (int)g->ne[1];
    TRY(get_mat3(L, NAME("ffn_gate_exps.weight"), E, hp->n_ff_exp, hp->n_expert, &ly->gate_exps));
    TRY(get_mat3(L, NAME("ffn_up_exps.weight"), E, hp->n_ff_exp, hp->n_expert, &ly->up_exps));
    TRY(get_mat3(L, NAME("ffn_down_exps.weight"), hp->n_ff_exp, E, hp->n_expert, &ly->down_exps));
    if (ly->gate_exps.type != ly->up_exps.type)
        return ms_fail(L->e, MS_ERR_UNSUPPORTED, "layer %d: gate and up experts have different types (%s, %s)", il,
                       quant_name(ly->gate_exps.type), quant_name(ly->up_exps.type));

    const gguf_tensor *su = find(L, NAME("ffn_up_shexp.weight"));
    if (su) {
        if (!hp->n_ff_shexp) hp->n_ff_shexp = (int)su->ne[1];
        TRY(get_mat(L, NAME("ffn_gate_shexp.weight"), E, hp->n_ff_shexp, 1, &ly->sh_gate));
        TRY(get_mat(L, NAME("ffn_up_shexp.weight"), E, hp->n_ff_shexp, 1, &ly->sh_up));
        TRY(get_mat(L, NAME("ffn_down_shexp.weight"), hp->n_ff_shexp, E, 1, &ly->sh_down));
        const gguf_tensor *sg = find(L, NAME("ffn_gate_inp_shexp.weight"));
        if (sg) {
            if (sg->ne[0] != E || sg->ne[1] * sg->ne[2] * sg->ne[3] != 1) return shape_error(L, sg, "[n_embd] or [n_embd, 1]");
            TRY(check_type(L, sg));
            ly->sh_router = (ms_mat){sg->type, E, 1, quant_row_bytes(sg->type, E), sg->data};
        }
    }
#undef NAME
    return MS_OK;
}

static void count_bytes(struct ms_model *m) {
    const gguf_file *f = m->gguf;
    for (int64_t i = 0; i < f->n_tensors; i++) {
        const char *nm = f->tensors[i].name;
        if (strstr(nm, "_exps.")) m->bytes_experts += f->tensors[i].nbytes;
        else m->bytes_dense += f->tensors[i].nbytes;
    }
}

struct ms_model *model_load(gguf_file *f, int n_expert_used_override, ms_err *e) {
    struct ms_model *m = ms_calloc(1, sizeof *m);
    if (!m) {
        ms_fail(e, MS_ERR_NOMEM, "out of memory");
        gguf_close(f);
        return NULL;
    }
    m->gguf = f;
    loader L = {m, NULL, e, {0}};
    fixups fx = {0};
    m->arch_name = gguf_get_str(f, "general.architecture");
    m->name = gguf_get_str(f, "general.name");
    const gguf_kv *ak = gguf_get(f, "general.architecture"), *nk = gguf_get(f, "general.name");
    if ((ak && ak->type == GGUF_STRING && !m->arch_name) || (nk && nk->type == GGUF_STRING && !m->name)) {
        ms_fail(e, MS_ERR_NOMEM, "out of memory reading the metadata"); /* not a missing key */
        goto fail;
    }
    if (!m->arch_name) {
        ms_fail(e, MS_ERR_FORMAT, "%s: no 'general.architecture' in the metadata", f->parts[0].path);
        goto fail;
    }
    const arch_desc *ad = NULL;
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (!strcmp(ARCHS[i].name, m->arch_name)) ad = &ARCHS[i];
    if (!ad) {
        ms_fail(e, MS_ERR_UNSUPPORTED, "%s: unknown architecture '%s' (supported: qwen3moe, qwen3next, qwen35moe)",
                f->parts[0].path, m->arch_name);
        goto fail;
    }
    L.arch = ad->name;
    if (load_hparams(&L, ad)) goto fail;
    ms_hparams *hp = &m->hp;
    m->n_expert_used_model = hp->n_expert_used;
    if (n_expert_used_override > 0) {
        if (n_expert_used_override > hp->n_expert) {
            ms_fail(e, MS_ERR_ARG, "--experts-per-token %d exceeds the model's %d experts", n_expert_used_override, hp->n_expert);
            goto fail;
        }
        hp->n_expert_used = n_expert_used_override;
    }

    const gguf_tensor *te = gguf_find_tensor(f, "token_embd.weight");
    if (!te) { ms_fail(e, MS_ERR_FORMAT, "missing tensor 'token_embd.weight'"); goto fail; }
    hp->n_vocab = (int)te->ne[1];
    if (get_mat(&L, "token_embd.weight", hp->n_embd, hp->n_vocab, 1, &m->tok_embd)) goto fail;
    if (get_mat(&L, "output.weight", hp->n_embd, hp->n_vocab, 0, &m->output)) goto fail;
    if (!m->output.data) m->output = m->tok_embd;
    if (get_vec(&L, &fx, "output_norm.weight", hp->n_embd, 1, &m->output_norm)) goto fail;

    m->layers = ms_calloc((size_t)hp->n_layer, sizeof(ms_layer));
    if (!m->layers) { ms_fail(e, MS_ERR_NOMEM, "out of memory"); goto fail; }
    int shared = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        if (load_layer(&L, &fx, il, ad)) goto fail;
        shared |= m->layers[il].sh_up.data != NULL;
    }
    /* the shared expert's width counts only where its tensors are (and checked their shapes):
     * metadata alone must not size the context's buffers */
    if (!shared) hp->n_ff_shexp = 0;
    for (int i = 0; i < fx.n; i++) *fx.v[i].dst = m->owned + fx.v[i].off;
    ms_free(fx.v);
    count_bytes(m);
    return m;
fail:
    ms_free(fx.v);
    model_free(m);
    return NULL;
}

/* Every weight pointer of the model, for relocation. */
static void visit_pointers(struct ms_model *m, void (*fn)(void *ud, void *field), void *ud) {
    fn(ud, &m->tok_embd.data);
    fn(ud, &m->output.data);
    fn(ud, &m->output_norm);
    for (int il = 0; il < m->hp.n_layer; il++) {
        ms_layer *l = &m->layers[il];
        void *fields[] = {&l->attn_norm, &l->ffn_norm, &l->wq.data, &l->wk.data, &l->wv.data, &l->wo.data, &l->q_norm,
                          &l->k_norm, &l->wqkv.data, &l->wz.data, &l->wbeta.data, &l->walpha.data, &l->wba.data,
                          &l->conv1d, &l->dt_bias, &l->ssm_a, &l->ssm_norm, &l->ssm_out.data, &l->router.data,
                          &l->sh_gate.data, &l->sh_up.data, &l->sh_down.data, &l->sh_router.data,
                          &l->gate_exps.data, &l->up_exps.data, &l->down_exps.data};
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) fn(ud, fields[i]);
    }
}

typedef struct reloc {
    const gguf_file *f;
    uint8_t *arena;
    uint64_t *arena_off; /* per tensor, or UINT64_MAX when not copied */
    pthread_mutex_t mu;  /* read_tensors: guards bad and err */
    int64_t bad;         /* the first tensor whose read failed, or -1 */
    int err;             /* its errno, or -1 for a short file */
} reloc;

/* If the pointer stored at field is the start of a copied tensor, points it at the copy. */
static void relocate_one(void *ud, void *field) {
    reloc *r = ud;
    const uint8_t *p;
    memcpy(&p, field, sizeof p);
    if (!p) return;
    for (int64_t i = 0; i < r->f->n_tensors; i++) {
        if (r->f->tensors[i].data != p || r->arena_off[i] == UINT64_MAX) continue;
        const uint8_t *q = r->arena + r->arena_off[i];
        memcpy(field, &q, sizeof q);
        return;
    }
}

static int pread_all(int fd, uint8_t *dst, uint64_t n, uint64_t off) {
    while (n) {
        long r = ms_pread(fd, dst, (size_t)MS_MIN(n, (uint64_t)1 << 30), off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return r < 0 ? errno : -1;
        dst += r;
        off += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return 0;
}

#define READ_PIECE ((uint64_t)8 << 20)

/* Item i: piece i of the copied tensors cut into READ_PIECE bytes; records the first failure. */
static void read_piece(void *ctx, int item, int thread) {
    (void)thread;
    reloc *r = ctx;
    int64_t k = item;
    for (int64_t i = 0; i < r->f->n_tensors; i++) {
        const gguf_tensor *t = &r->f->tensors[i];
        if (r->arena_off[i] == UINT64_MAX) continue;
        int64_t n = (int64_t)((t->nbytes + READ_PIECE - 1) / READ_PIECE);
        if (k >= n) {
            k -= n;
            continue;
        }
        uint64_t off = (uint64_t)k * READ_PIECE, len = MS_MIN(READ_PIECE, t->nbytes - off);
        int err = pread_all(r->f->parts[t->part].fd, r->arena + r->arena_off[i] + off, len, t->file_offset + off);
        pthread_mutex_lock(&r->mu);
        if (err && (r->bad < 0 || i < r->bad)) r->bad = i, r->err = err;
        pthread_mutex_unlock(&r->mu);
        return;
    }
}

/* Reads every tensor with an arena offset into the arena, on all cores: the copy (and the
 * kernel zeroing the new pages) runs at memory speed, not one core's. Returns the index of a
 * tensor that failed (r->err says how), or -1. */
static int64_t read_tensors(reloc *r, uint64_t total) {
    int64_t pieces = 0;
    for (int64_t i = 0; i < r->f->n_tensors; i++)
        if (r->arena_off[i] != UINT64_MAX) pieces += (int64_t)((r->f->tensors[i].nbytes + READ_PIECE - 1) / READ_PIECE);
    int nth = (int)MS_MIN((uint64_t)MS_MIN(ms_cpu_count(), 16), total / READ_PIECE + 1);
    ms_pool *pool = nth > 1 ? pool_new(nth) : NULL;
    r->bad = -1;
    pthread_mutex_init(&r->mu, NULL);
    pool_run(pool, read_piece, r, (int)pieces);
    pool_free(pool);
    pthread_mutex_destroy(&r->mu);
    return r->bad;
}

int model_make_resident(struct ms_model *m, int experts, ms_err *e) {
    if (m->arena) return MS_OK;
    const gguf_file *f = m->gguf;
    const gguf_tensor *te = gguf_find_tensor(f, "token_embd.weight");
    int tied = m->output.data == m->tok_embd.data;
    reloc r = {.f = f, .arena_off = ms_malloc(sizeof(uint64_t) * (size_t)(f->n_tensors ? f->n_tensors : 1))};
    if (!r.arena_off) return ms_fail(e, MS_ERR_NOMEM, "out of memory");
    uint64_t total = 0, dense = 0;
    for (int64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        int expert = strstr(t->name, "_exps.") != NULL;
        r.arena_off[i] = UINT64_MAX;
        if ((expert && !experts) || (t == te && !tied)) continue;
        r.arena_off[i] = total;
        total += (t->nbytes + 63) / 64 * 64;
        if (!expert) dense += (t->nbytes + 63) / 64 * 64;
    }
    r.arena = ms_alloc_huge(total);
    if (!r.arena) {
        ms_free(r.arena_off);
        return ms_fail(e, MS_ERR_NOMEM, "cannot allocate %.1f MiB for the %s", total / 1048576.0,
                       experts ? "weights" : "dense weights");
    }
    int64_t bad = read_tensors(&r, total);
    if (bad >= 0) {
        const gguf_tensor *t = &f->tensors[bad];
        int err = (int)r.err;
        ms_free_huge(r.arena, total);
        ms_free(r.arena_off);
        return ms_fail(e, MS_ERR_IO, "%s: reading tensor '%s' failed: %s", f->parts[t->part].path, t->name,
                       err < 0 ? "unexpected end of file" : strerror(err));
    }
    /* the small vectors converted at load already live in m->owned; everything copied moves */
    visit_pointers(m, relocate_one, &r);
    if (!tied) {
        m->embd_on_disk = 1;
        m->embd_fd = f->parts[te->part].fd;
        m->embd_offset = te->file_offset;
        m->tok_embd.data = NULL;
    }
    m->arena = r.arena;
    m->arena_bytes = total;
    m->dense_arena_bytes = dense;
    ms_free(r.arena_off);
    return MS_OK;
}

int model_read_embd(const struct ms_model *m, uint64_t off, void *dst, uint64_t n) {
    return pread_all(m->embd_fd, dst, n, m->embd_offset + off);
}

int model_embed_row(const struct ms_model *m, int32_t tok, float *out, ms_err *e) {
    const ms_mat *te = &m->tok_embd;
    if (!m->embd_on_disk) {
        quant_dequant(te->type, te->data + (size_t)tok * te->row_bytes, out, te->n_in);
        return MS_OK;
    }
    uint8_t tmp[16384];
    uint8_t *buf = te->row_bytes <= sizeof tmp ? tmp : ms_malloc(te->row_bytes);
    if (!buf) return ms_fail(e, MS_ERR_NOMEM, "out of memory");
    int err = model_read_embd(m, (uint64_t)tok * te->row_bytes, buf, te->row_bytes);
    if (!err) quant_dequant(te->type, buf, out, te->n_in);
    if (buf != tmp) ms_free(buf);
    if (err)
        return ms_fail(e, MS_ERR_IO, "%s: reading the embedding of token %d failed: %s", m->gguf->parts[0].path, tok,
                       err < 0 ? "unexpected end of file (was the file truncated?)" : strerror(err));
    return MS_OK;
}

void model_free(struct ms_model *m) {
    if (!m) return;
    ms_free_huge(m->arena, m->arena_bytes);
    gguf_close(m->gguf);
    ms_free(m->layers);
    ms_free(m->owned);
    ms_free(m->arch_name);
    ms_free(m->name);
    ms_free(m);
}
