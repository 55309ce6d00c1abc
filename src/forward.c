/* forward.c - the CPU forward pass for the hybrid/attention MoE decoders (see forward.h).
 *
 * Every step is written for a batch of T tokens: projections are matrix products over the
 * batch, attention is causal over the KV cache, the Gated DeltaNet recurrence runs token by
 * token per head, and the MoE groups the batch's tokens by expert so that each expert's bytes
 * are fetched once per batch. All arithmetic is fp32 (weights are dequantized exactly).
 */
#include "forward.h"

#include <math.h>
#include <string.h>

#include "attn.h"
#include "quant.h"

#define MAX_MM_OPS 8

struct ms_fwd {
    const struct ms_model *m;
    ms_store *store;
    ms_pool *pool;
    int n_ctx, n_batch, pos, nth;
    /* per layer state */
    float **k_cache, **v_cache;  /* attention layers: [n_ctx][n_head_kv * head_dim] */
    float **conv_state;          /* GDN layers: [d_conv - 1][conv_dim] */
    float **ssm_state;           /* GDN layers: [n_v_heads][d_v][d_k] */
    /* scratch, sized for n_batch tokens */
    float *x, *h, *a;            /* [T][n_embd] */
    float *q, *k, *v, *att;      /* attention */
    float *qkv, *z, *beta, *alpha, *gdn_o; /* Gated DeltaNet */
    float *router;               /* [T][n_expert] */
    int *sel;                    /* [T][n_expert_used] */
    float *sel_w;                /* [T][n_expert_used] */
    int *exp_fill;               /* [n_expert]: next free slot per compact expert */
    int *exp_ids, *exp_first, *exp_count, *exp_index, *slot_tok; /* grouping by expert */
    float *slot_w;
    ms_expert_ref *refs;
    float *act_g, *act_u;        /* [T * n_expert_used][n_ff_exp] */
    float *sh_g, *sh_u, *sh_gate;/* shared expert */
    float *moe;                  /* [T][n_embd] */
    float *thread_buf;           /* [nth][thread_buf_len] */
    size_t thread_buf_len;
    float *logits;               /* [logits_cap][n_vocab]: one row until all-position logits are asked for */
    int n_logits, logits_cap;
    ms_timing timing;
    int32_t *history;            /* [n_ctx]: the token at each position */
    uint64_t host_bytes;         /* everything allocated for this context */
    int lookahead;               /* prefetch the next layer's likely experts (decode) */
    double *layer_time;          /* [n_layer][4]: attention, routing, expert wait, expert compute */
    float *look;                 /* [n_embd] the lookahead's normed hidden state */
    float *rope_cs;              /* [n_batch][n_rot/2][2]: the batch's RoPE cos, sin (rope_table) */
    float *gdn_scratch;          /* [nth][gdn_scratch_len]: chunked Gated DeltaNet (prefill) */
    /* 16-bit activations for the integer kernels (quant.h: q16): the inputs of one mm_run, the
     * MoE input rows, and the SwiGLU rows of each expert slot */
    uint8_t *xq;                 /* MAX_MM_OPS inputs of [n_batch] rows of the widest input */
    size_t xq_op_bytes;          /* bytes one op's input may take */
    uint8_t *hq;                 /* [n_batch] rows of quant_q16_bytes(n_embd) */
    uint8_t *actq;               /* [n_batch * n_expert_used] rows of quant_q16_bytes(n_ff_exp) */
    const void **xq_rows;        /* [n_batch * n_expert_used]: each slot's quantized token row */
    float *down_tmp;             /* [nth][n_batch * rows_per_chunk_max]: expert down outputs */
    size_t down_tmp_len;
    int64_t down_rows;           /* output rows per item of the expert down product */
    size_t gdn_scratch_len;
    /* recurrent-state snapshots, so a shared prefix can be resumed (see fwd_checkpoint) */
    struct {
        int pos;                 /* -1: empty */
        float *state;            /* every GDN layer's conv then ssm state, concatenated */
        uint64_t used;           /* for replacing the least recently used */
    } ckpt[MS_N_CHECKPOINTS];
    size_t state_floats;         /* floats in one snapshot */
    uint64_t ckpt_clock;
};

/* ------------------------------------------------------------------ small math */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float s = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * s * (w ? w[i] : 1.0f);
}

static float silu(float x) { return x / (1.0f + expf(-x)); }
static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* Indices of the k largest of v[0..n) into out[0..k), largest first (ties: lower index first). */
static void topk(const float *v, int n, int k, int *out) {
    int m = 0;
    for (int x = 0; x < n; x++) {
        if (m == k && v[x] <= v[out[k - 1]]) continue;
        int p = m < k ? m++ : k - 1;
        while (p > 0 && v[x] > v[out[p - 1]]) {
            out[p] = out[p - 1];
            p--;
        }
        out[p] = x;
    }
}

/* ------------------------------------------------------------------ matrix products */

/* y[t][r] = W_r . x[t] for t < n_tok, r < n_out; x and y rows ldx / ldy floats apart. */
typedef struct mm_op {
    int type;
    const uint8_t *w;
    size_t row_bytes;
    int64_t n_in, n_out;
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
    int n_tok;
    const uint8_t *xq;    /* the inputs as q16 rows (set by mm_run for integer-kernel types) */
} mm_op;

typedef struct mm_job {
    ms_fwd *f;
    const mm_op *ops;
    int n_ops;
    int64_t rows_per_chunk[MAX_MM_OPS];
    int first_chunk[MAX_MM_OPS + 1];
} mm_job;

static void mm_rows(ms_fwd *f, const mm_op *op, int64_t r0, int64_t r1, int thread) {
    if (op->xq) { /* 16-bit activations, integer dot products (quant.h) */
        if (op->n_tok == 1) quant_matvec_q16(op->type, op->w, op->row_bytes, op->xq, op->y, op->n_in, r0, r1);
        else quant_matmul_q16(op->type, op->w, op->row_bytes, op->n_in, r0, r1, op->xq, op->n_tok, op->y, op->ldy);
        return;
    }
    if (op->n_tok == 1) {
        quant_matvec(op->type, op->w, op->row_bytes, op->x, op->y, op->n_in, r0, r1);
        return;
    }
    /* several tokens: dequantize each row once, then dot it with every token */
    float *row = f->thread_buf + (size_t)thread * f->thread_buf_len;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = op->w + (size_t)r * op->row_bytes;
        if (op->type == MS_TYPE_F32) {
            for (int t = 0; t < op->n_tok; t++)
                op->y[t * op->ldy + r] = quant_dot(MS_TYPE_F32, wr, op->x + t * op->ldx, op->n_in);
        } else {
            quant_dequant(op->type, wr, row, op->n_in);
            for (int t = 0; t < op->n_tok; t++)
                op->y[t * op->ldy + r] = quant_dot(MS_TYPE_F32, row, op->x + t * op->ldx, op->n_in);
        }
    }
}

/* Quantizes n_tok rows of x (ldx apart, n values each) into q16 rows laid end to end. */
static void q16_rows(const float *x, int64_t ldx, int64_t n, int n_tok, uint8_t *out) {
    size_t rb = quant_q16_bytes(n);
    for (int t = 0; t < n_tok; t++) quant_q16_quantize(x + (size_t)t * ldx, n, out + (size_t)t * rb);
}

static void mm_task(void *ctx, int i, int thread) {
    mm_job *j = ctx;
    int o = 0;
    while (i >= j->first_chunk[o + 1]) o++;
    const mm_op *op = &j->ops[o];
    int64_t r0 = (int64_t)(i - j->first_chunk[o]) * j->rows_per_chunk[o];
    int64_t r1 = MS_MIN(op->n_out, r0 + j->rows_per_chunk[o]);
    mm_rows(j->f, op, r0, r1, thread);
}

/* Runs independent products in one parallel job (one wake-up of the pool for all of them).
 * Inputs of integer-kernel types are quantized to q16 first, once per distinct input. */
static void mm_run(ms_fwd *f, const mm_op *ops_in, int n_ops) {
    mm_op ops[MAX_MM_OPS];
    int n_q = 0;
    for (int o = 0; o < n_ops; o++) {
        ops[o] = ops_in[o];
        ops[o].xq = NULL;
        if (!quant_has_q16(ops[o].type)) continue;
        for (int p = 0; p < o; p++)
            if (ops[p].xq && ops[p].x == ops[o].x && ops[p].ldx == ops[o].ldx && ops[p].n_in == ops[o].n_in &&
                ops[p].n_tok == ops[o].n_tok)
                ops[o].xq = ops[p].xq;
        if (ops[o].xq) continue;
        uint8_t *dst = f->xq + (size_t)n_q++ * f->xq_op_bytes;
        q16_rows(ops[o].x, ops[o].ldx, ops[o].n_in, ops[o].n_tok, dst);
        ops[o].xq = dst;
    }
    mm_job j = {f, ops, n_ops, {0}, {0}};
    int chunks = 0;
    for (int o = 0; o < n_ops; o++) {
        int64_t want = (int64_t)f->nth * 2;
        int64_t rpc = (ops[o].n_out + want - 1) / want;
        if (rpc < 4) rpc = 4;
        j.rows_per_chunk[o] = rpc;
        j.first_chunk[o] = chunks;
        chunks += (int)((ops[o].n_out + rpc - 1) / rpc);
    }
    j.first_chunk[n_ops] = chunks;
    pool_run(f->pool, mm_task, &j, chunks);
}

static mm_op mm(const ms_mat *w, const float *x, int64_t ldx, float *y, int64_t ldy, int n_tok) {
    return (mm_op){w->type, w->data, w->row_bytes, w->n_in, w->n_out, x, ldx, y, ldy, n_tok, NULL};
}

/* ------------------------------------------------------------------ attention */

/* Rotates pairs (i, i + n_rot/2) of the first n_rot dims. The angle is formed in float32 as
 * transformers does (inv_freq = 1 / base^(2i/n_rot), angle = pos * inv_freq), so long prompts
 * see the same rounding as the reference. */
static void rope_table(float *cs, int n_rot, int pos, float base) {
    for (int i = 0; i < n_rot / 2; i++) {
        float inv_freq = 1.0f / powf(base, (float)(2 * i) / (float)n_rot);
        float theta = (float)pos * inv_freq;
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
    }
}

/* cs: rope_table's row for the position (made once a batch, for every layer and head). */
static void rope_neox(float *v, int n_rot, const float *cs) {
    int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = a * s + b * c;
    }
}

/* The attention of a layer runs in items of up to ATTN_ROWS query rows that share a key/value
 * head: hpi heads of one GQA group times tpi tokens (attn.h computes them). */
typedef struct attn_job {
    ms_fwd *f;
    const ms_layer *ly;
    int il, T, pos0;
    int hpi, tpi, n_sub, n_tb; /* heads and tokens per item; items per group and per token run */
} attn_job;

static void attn_task(void *ctx, int item, int thread) {
    attn_job *j = ctx;
    ms_fwd *f = j->f;
    const ms_hparams *hp = &f->m->hp;
    int hd = hp->head_dim, kvd = hp->n_head_kv * hd, G = hp->n_head / hp->n_head_kv;
    int tb = item % j->n_tb, sub = item / j->n_tb % j->n_sub, kvh = item / j->n_tb / j->n_sub;
    int h0 = kvh * G + sub * j->hpi, h1 = MS_MIN(h0 + j->hpi, (kvh + 1) * G);
    int t0 = tb * j->tpi, t1 = MS_MIN(t0 + j->tpi, j->T);
    attn_rows_args a = {.hd = hd, .ld = (size_t)kvd, .scale = 1.0f / sqrtf((float)hd),
                        .k = f->k_cache[j->il] + (size_t)kvh * hd, .v = f->v_cache[j->il] + (size_t)kvh * hd,
                        .scratch = f->thread_buf + (size_t)thread * f->thread_buf_len};
    for (int t = t0; t < t1; t++)
        for (int hh = h0; hh < h1; hh++, a.n++) {
            a.q[a.n] = f->q + ((size_t)t * hp->n_head + hh) * hd;
            a.out[a.n] = f->att + ((size_t)t * hp->n_head + hh) * hd;
            a.lim[a.n] = j->pos0 + t + 1; /* causal: positions 0..pos */
        }
    attn_rows(&a);
    if (!j->ly->attn_gated) return;
    /* the gate sits after each head's query in the q projection: [n_head][2][head_dim] */
    for (int t = t0; t < t1; t++)
        for (int hh = h0; hh < h1; hh++) {
            float *out = f->att + ((size_t)t * hp->n_head + hh) * hd;
            const float *gate = f->a + ((size_t)t * hp->n_head + hh) * 2 * hd + hd;
            for (int d = 0; d < hd; d++) out[d] *= sigmoid(gate[d]);
        }
}

static void attention(ms_fwd *f, const ms_layer *ly, int il, int T) {
    const ms_hparams *hp = &f->m->hp;
    int hd = hp->head_dim, qd = hp->n_head * hd, kvd = hp->n_head_kv * hd;
    int E = hp->n_embd;
    /* the (gated) query projection goes to f->a, keys and values straight into the cache */
    float *kc = f->k_cache[il] + (size_t)f->pos * kvd, *vc = f->v_cache[il] + (size_t)f->pos * kvd;
    int qw = (int)ly->wq.n_out;
    mm_op ops[3] = {mm(&ly->wq, f->h, E, f->a, qw, T), mm(&ly->wk, f->h, E, kc, kvd, T),
                    mm(&ly->wv, f->h, E, vc, kvd, T)};
    mm_run(f, ops, 3);
    for (int t = 0; t < T; t++) {
        for (int hh = 0; hh < hp->n_head; hh++) {
            const float *src = f->a + (size_t)t * qw + (size_t)hh * hd * (ly->attn_gated ? 2 : 1);
            float *q = f->q + ((size_t)t * hp->n_head + hh) * hd;
            if (ly->q_norm) rmsnorm(q, src, ly->q_norm, hd, hp->norm_eps);
            else memcpy(q, src, sizeof(float) * hd);
            rope_neox(q, hp->n_rot, f->rope_cs + (size_t)t * hp->n_rot);
        }
        for (int hh = 0; hh < hp->n_head_kv; hh++) {
            float *k = kc + (size_t)t * kvd + (size_t)hh * hd;
            if (ly->k_norm) rmsnorm(k, k, ly->k_norm, hd, hp->norm_eps);
            rope_neox(k, hp->n_rot, f->rope_cs + (size_t)t * hp->n_rot);
        }
    }
    /* heads of a group per item: all of them (up to a vector of rows) unless the groups would
     * leave threads idle (decode), tokens to fill the rest */
    int G = hp->n_head / hp->n_head_kv;
    int hpi = MS_MAX(1, MS_MIN(MS_MIN(G, ATTN_ROWS), G * hp->n_head_kv / f->nth));
    attn_job j = {f, ly, il, T, f->pos, hpi, ATTN_ROWS / hpi, (G + hpi - 1) / hpi, 0};
    j.n_tb = (T + j.tpi - 1) / j.tpi;
    pool_run(f->pool, attn_task, &j, hp->n_head_kv * j.n_sub * j.n_tb);
    mm_op o = mm(&ly->wo, f->att, qd, f->h, E, T);
    mm_run(f, &o, 1);
}

/* ------------------------------------------------------------------ Gated DeltaNet */

typedef struct gdn_job {
    ms_fwd *f;
    const ms_layer *ly;
    int il, T;
} gdn_job;

/* The head's output for token t: RMS-normed, times the norm weight and silu(z). */
static void gdn_gate(ms_fwd *f, const ms_layer *ly, int t, int h) {
    const ms_hparams *hp = &f->m->hp;
    int nv = hp->n_v_heads, dv = hp->d_v;
    float *o = f->gdn_o + (size_t)t * nv * dv + (size_t)h * dv;
    const float *z = f->z + (size_t)t * nv * dv + (size_t)h * dv;
    rmsnorm(o, o, ly->ssm_norm, dv, hp->norm_eps);
    for (int jj = 0; jj < dv; jj++) o[jj] *= silu(z[jj]);
}

#define GDN_CHUNK 64

/* Chunked form of the same recurrence for one value head (prefill of >= GDN_CHUNK tokens).
 * Per chunk of L tokens with cumulative log-decays G: the within-chunk interactions become
 * L x L matrices (A = -(beta_i k_i.k_j) e^(G_i - G_j) for j < i, made (I - A)^-1 by forward
 * substitution), and the state is touched once per chunk instead of once per token:
 *   U = T (beta v),  W = T (beta e^G k),  v_new = U - W S,
 *   o_i = e^(G_i) S q_i + sum_{j<=i} (q_i.k_j) e^(G_i - G_j) v_new_j,
 *   S <- e^(G_L) S + sum_j e^(G_L - G_j) v_new_j k_j^T.
 * Same result as the token-by-token form up to float rounding (tested to KL 1e-5). */
static void gdn_chunk_task(void *ctx, int h, int thread) {
    gdn_job *j = ctx;
    ms_fwd *f = j->f;
    const ms_hparams *hp = &f->m->hp;
    int dk = hp->d_k, dv = hp->d_v, nk = hp->n_k_heads, nv = hp->n_v_heads, C = GDN_CHUNK;
    int kh = hp->gdn_interleave ? h / (nv / nk) : h % nk;
    float *S = f->ssm_state[j->il] + (size_t)h * dv * dk;
    float scale = 1.0f / sqrtf((float)dk);
    float *A = f->gdn_scratch + (size_t)thread * f->gdn_scratch_len; /* [C][C] */
    float *G = A + C * C, *U = G + C, *W = U + (size_t)C * dv, *qs = W + (size_t)C * dk;
    for (int c0 = 0; c0 < j->T; c0 += C) {
        int L = MS_MIN(C, j->T - c0);
#define QK(i) (f->qkv + (size_t)(c0 + (i)) * hp->conv_dim)
#define KV(i) (QK(i) + (size_t)nk * dk + (size_t)kh * dk)
#define VV(i) (QK(i) + (size_t)2 * nk * dk + (size_t)h * dv)
#define BETA(i) (f->beta[(size_t)(c0 + (i)) * nv + h])
        for (int i = 0; i < L; i++) {
            G[i] = (i ? G[i - 1] : 0.0f) + f->alpha[(size_t)(c0 + i) * nv + h];
            const float *q = QK(i) + (size_t)kh * dk;
            for (int d = 0; d < dk; d++) qs[(size_t)i * dk + d] = q[d] * scale;
        }
        for (int i = 0; i < L; i++)
            for (int m = 0; m < i; m++)
                A[i * C + m] = -BETA(i) * quant_dot(MS_TYPE_F32, KV(i), KV(m), dk) * expf(G[i] - G[m]);
        /* forward substitution, ascending columns so row i's later entries are still raw */
        for (int i = 1; i < L; i++)
            for (int c = 0; c < i; c++) {
                float acc = A[i * C + c];
                for (int m = c + 1; m < i; m++) acc += A[i * C + m] * A[m * C + c];
                A[i * C + c] = acc;
            }
        /* U and W with T = A + I, lower triangular */
        for (int i = 0; i < L; i++) {
            float *u = U + (size_t)i * dv, *w = W + (size_t)i * dk;
            for (int d = 0; d < dv; d++) u[d] = BETA(i) * VV(i)[d];
            for (int d = 0; d < dk; d++) w[d] = BETA(i) * expf(G[i]) * KV(i)[d];
            for (int m = 0; m < i; m++) {
                float tu = A[i * C + m] * BETA(m), tw = tu * expf(G[m]);
                for (int d = 0; d < dv; d++) u[d] += tu * VV(m)[d];
                for (int d = 0; d < dk; d++) w[d] += tw * KV(m)[d];
            }
        }
        /* v_new = U - W S (in U), and the outputs */
        for (int i = 0; i < L; i++) {
            float *u = U + (size_t)i * dv, *w = W + (size_t)i * dk;
            for (int v = 0; v < dv; v++) u[v] -= quant_dot(MS_TYPE_F32, S + (size_t)v * dk, w, dk);
        }
        for (int i = 0; i < L; i++) {
            float *o = f->gdn_o + (size_t)(c0 + i) * nv * dv + (size_t)h * dv;
            const float *q = qs + (size_t)i * dk;
            float eg = expf(G[i]);
            for (int v = 0; v < dv; v++) o[v] = eg * quant_dot(MS_TYPE_F32, S + (size_t)v * dk, q, dk);
            for (int m = 0; m <= i; m++) {
                float a = quant_dot(MS_TYPE_F32, q, KV(m), dk) * expf(G[i] - G[m]);
                const float *u = U + (size_t)m * dv;
                for (int v = 0; v < dv; v++) o[v] += a * u[v];
            }
        }
        /* state: decay to the chunk's end, add each token's key against its new value */
        float egl = expf(G[L - 1]);
        for (int i = 0; i < L; i++) W[i] = expf(G[L - 1] - G[i]); /* W is free again: reuse */
        for (int v = 0; v < dv; v++) {
            float *row = S + (size_t)v * dk;
            for (int d = 0; d < dk; d++) row[d] *= egl;
            for (int i = 0; i < L; i++) {
                float c = W[i] * U[(size_t)i * dv + v];
                const float *k = KV(i);
                for (int d = 0; d < dk; d++) row[d] += c * k[d];
            }
        }
        for (int i = 0; i < L; i++) gdn_gate(f, j->ly, c0 + i, h);
#undef QK
#undef KV
#undef VV
#undef BETA
    }
}

/* item = value head h: runs the delta rule over the batch's tokens in order. */
static void gdn_task(void *ctx, int h, int thread) {
    (void)thread;
    gdn_job *j = ctx;
    ms_fwd *f = j->f;
    const ms_hparams *hp = &f->m->hp;
    int dk = hp->d_k, dv = hp->d_v, nk = hp->n_k_heads, nv = hp->n_v_heads;
    int kh = hp->gdn_interleave ? h / (nv / nk) : h % nk;
    float *S = f->ssm_state[j->il] + (size_t)h * dv * dk; /* S[j][i]: row j = value dim */
    float scale = 1.0f / sqrtf((float)dk);
    for (int t = 0; t < j->T; t++) {
        const float *conv = f->qkv + (size_t)t * hp->conv_dim;
        const float *q = conv + (size_t)kh * dk;
        const float *k = conv + (size_t)nk * dk + (size_t)kh * dk;
        const float *v = conv + (size_t)2 * nk * dk + (size_t)h * dv;
        float decay = expf(f->alpha[(size_t)t * nv + h]); /* alpha holds the gate g here */
        float beta = f->beta[(size_t)t * nv + h];
        float *o = f->gdn_o + (size_t)t * nv * dv + (size_t)h * dv;
        /* per value row j of the state: kv = (decay S_j) . k, delta = (v_j - kv) beta,
         * S_j = decay S_j + delta k, o_j = S_j . q / sqrt(d_k); the dots use the SIMD kernel */
        for (int jj = 0; jj < dv; jj++) {
            float *row = S + (size_t)jj * dk;
            float kv = decay * quant_dot(MS_TYPE_F32, row, k, dk);
            float delta = (v[jj] - kv) * beta;
            for (int i = 0; i < dk; i++) row[i] = decay * row[i] + delta * k[i];
            o[jj] = quant_dot(MS_TYPE_F32, row, q, dk) * scale;
        }
        gdn_gate(f, j->ly, t, h);
    }
}

static void l2norm(float *x, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float s = (float)(1.0 / sqrt(ss + eps));
    for (int i = 0; i < n; i++) x[i] *= s;
}

static void gated_deltanet(ms_fwd *f, const ms_layer *ly, int il, int T) {
    const ms_hparams *hp = &f->m->hp;
    int E = hp->n_embd, nv = hp->n_v_heads, nk = hp->n_k_heads, cd = hp->conv_dim, K = hp->d_conv;
    int vd = nv * hp->d_v;
    /* projections: qkv (pre-conv) into f->a (as scratch), z, beta, alpha */
    float *pre = f->a;
    mm_op ops[4];
    int n = 0;
    ops[n++] = mm(&ly->wqkv, f->h, E, pre, cd, T);
    ops[n++] = mm(&ly->wz, f->h, E, f->z, vd, T);
    if (ly->wba.data) {
        ops[n++] = mm(&ly->wba, f->h, E, f->gdn_o, 2 * nv, T); /* gdn_o is free until the recurrence */
    } else {
        ops[n++] = mm(&ly->wbeta, f->h, E, f->beta, nv, T);
        ops[n++] = mm(&ly->walpha, f->h, E, f->alpha, nv, T);
    }
    mm_run(f, ops, n);
    if (ly->wba.data) {
        /* [n_k_heads][beta x r | alpha x r]: v head g*r+j takes beta/alpha j of group g */
        int r = nv / nk;
        for (int t = 0; t < T; t++) {
            const float *ba = f->gdn_o + (size_t)t * 2 * nv;
            for (int g = 0; g < nk; g++)
                for (int jj = 0; jj < r; jj++) {
                    f->beta[(size_t)t * nv + g * r + jj] = ba[g * 2 * r + jj];
                    f->alpha[(size_t)t * nv + g * r + jj] = ba[g * 2 * r + r + jj];
                }
        }
    }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nv; h++) {
            float *b = &f->beta[(size_t)t * nv + h], *a = &f->alpha[(size_t)t * nv + h];
            *b = sigmoid(*b);
            *a = softplus(*a + ly->dt_bias[h]) * ly->ssm_a[h]; /* log of the decay */
        }
    /* causal depthwise conv over [state (K-1 rows) | new rows], then SiLU */
    float *st = f->conv_state[il];
    for (int c = 0; c < cd; c++) {
        const float *w = ly->conv1d + (size_t)c * K;
        for (int t = 0; t < T; t++) {
            float s = 0;
            for (int k = 0; k < K; k++) {
                int src = t + k - (K - 1); /* < 0: from the saved state */
                float xv = src < 0 ? st[(size_t)(K - 1 + src) * cd + c] : pre[(size_t)src * cd + c];
                s += w[k] * xv;
            }
            f->qkv[(size_t)t * cd + c] = silu(s);
        }
        /* keep the last K-1 inputs; ascending k reads only rows not yet overwritten */
        for (int k = 0; k < K - 1; k++) {
            int src = T - (K - 1) + k;
            st[(size_t)k * cd + c] = src < 0 ? st[(size_t)(K - 1 + src) * cd + c] : pre[(size_t)src * cd + c];
        }
    }
    for (int t = 0; t < T; t++) {
        float *row = f->qkv + (size_t)t * cd;
        for (int hh = 0; hh < 2 * nk; hh++) l2norm(row + (size_t)hh * hp->d_k, hp->d_k, hp->norm_eps);
    }
    gdn_job j = {f, ly, il, T};
    pool_run(f->pool, T >= GDN_CHUNK && f->gdn_scratch ? gdn_chunk_task : gdn_task, &j, nv);
    mm_op o = mm(&ly->ssm_out, f->gdn_o, vd, f->h, E, T);
    mm_run(f, &o, 1);
}

/* ------------------------------------------------------------------ mixture of experts */

typedef struct moe_job {
    ms_fwd *f;
    const ms_layer *ly;
    int x0, x1;           /* the compact experts [x0, x1) computed by this job */
    int64_t rows_per_chunk;
    int chunks_per_exp;
} moe_job;

/* gate/up: item = (expert, chunk of n_ff_exp rows), for all tokens routed to that expert */
static void moe_up_task(void *ctx, int i, int thread) {
    moe_job *j = ctx;
    ms_fwd *f = j->f;
    const ms_layer *ly = j->ly;
    int x = j->x0 + i / j->chunks_per_exp, c = i % j->chunks_per_exp;
    int64_t ff = ly->gate_exps.n_out, E = ly->gate_exps.n_in;
    int64_t r0 = c * j->rows_per_chunk, r1 = MS_MIN(ff, r0 + j->rows_per_chunk);
    if (r0 >= r1) return;
    int first = f->exp_first[x], cnt = f->exp_count[x];
    const ms_expert_ref *ref = &f->refs[x];
    float *row = f->thread_buf + (size_t)thread * f->thread_buf_len;
    for (int which = 0; which < 2; which++) {
        const ms_mat3 *w = which ? &ly->up_exps : &ly->gate_exps;
        const uint8_t *base = which ? ref->up : ref->gate;
        float *out = which ? f->act_u : f->act_g;
        if (f->hq && quant_has_q16(w->type)) {
            if (cnt == 1)
                quant_matvec_q16(w->type, base, w->row_bytes, f->xq_rows[first], out + (size_t)first * ff, E, r0, r1);
            else
                quant_matmul_q16_rows(w->type, base, w->row_bytes, E, r0, r1, f->xq_rows + first, cnt,
                                      out + (size_t)first * ff, ff);
            continue;
        }
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *wr = base + (size_t)r * w->row_bytes;
            if (cnt == 1) {
                out[(size_t)first * ff + r] = quant_dot(w->type, wr, f->h + (size_t)f->slot_tok[first] * E, E);
                continue;
            }
            quant_dequant(w->type, wr, row, E);
            for (int s = first; s < first + cnt; s++)
                out[(size_t)s * ff + r] = quant_dot(MS_TYPE_F32, row, f->h + (size_t)f->slot_tok[s] * E, E);
        }
    }
    /* SwiGLU of this chunk, for every token of the expert */
    for (int s = first; s < first + cnt; s++)
        for (int64_t r = r0; r < r1; r++) {
            size_t k = (size_t)s * ff + r;
            f->act_g[k] = silu(f->act_g[k]) * f->act_u[k];
        }
}

/* down: item = chunk of n_embd output rows across the job's experts, so each output element
 * has one writer; moe[t][r] += w(t, x) * down_x[r] . act[slot] */
static void moe_down_task(void *ctx, int i, int thread) {
    moe_job *j = ctx;
    ms_fwd *f = j->f;
    const ms_mat3 *w = &j->ly->down_exps;
    int64_t E = w->n_out, ff = w->n_in;
    int64_t r0 = (int64_t)i * j->rows_per_chunk, r1 = MS_MIN(E, r0 + j->rows_per_chunk), rc = r1 - r0;
    float *row = f->thread_buf + (size_t)thread * f->thread_buf_len;
    int q16 = f->actq && quant_has_q16(w->type);
    size_t aqb = quant_q16_bytes(ff);
    for (int x = j->x0; x < j->x1; x++) {
        int first = f->exp_first[x], cnt = f->exp_count[x];
        if (q16) {
            /* the expert's outputs for this chunk, [cnt][rc], then their weighted add */
            float *tmp = f->down_tmp + (size_t)thread * f->down_tmp_len;
            const uint8_t *aq = f->actq + (size_t)first * aqb;
            if (cnt == 1) quant_matvec_q16(w->type, f->refs[x].down, w->row_bytes, aq, tmp - r0, ff, r0, r1);
            else quant_matmul_q16(w->type, f->refs[x].down, w->row_bytes, ff, r0, r1, aq, cnt, tmp - r0, rc);
            for (int s = 0; s < cnt; s++) {
                float sw = f->slot_w[first + s], *dst = f->moe + (size_t)f->slot_tok[first + s] * E;
                for (int64_t r = r0; r < r1; r++) dst[r] += sw * tmp[(size_t)s * rc + (r - r0)];
            }
            continue;
        }
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *wr = f->refs[x].down + (size_t)r * w->row_bytes;
            if (cnt == 1) {
                f->moe[(size_t)f->slot_tok[first] * E + r] +=
                    f->slot_w[first] * quant_dot(w->type, wr, f->act_g + (size_t)first * ff, ff);
                continue;
            }
            quant_dequant(w->type, wr, row, ff);
            for (int s = first; s < first + cnt; s++)
                f->moe[(size_t)f->slot_tok[s] * E + r] +=
                    f->slot_w[s] * quant_dot(MS_TYPE_F32, row, f->act_g + (size_t)s * ff, ff);
        }
    }
}

/* Quantizes the SwiGLU rows of the slots of compact experts [x0, x1) for the down product. */
static void moe_quant_act(void *ctx, int i, int thread) {
    (void)thread;
    moe_job *j = ctx;
    ms_fwd *f = j->f;
    int64_t ff = j->ly->down_exps.n_in;
    int s = f->exp_first[j->x0] + i;
    quant_q16_quantize(f->act_g + (size_t)s * ff, ff, f->actq + (size_t)s * quant_q16_bytes(ff));
}

/* Computes compact experts [x0, x1), whose bytes are in f->refs. */
static void moe_compute(ms_fwd *f, const ms_layer *ly, int x0, int x1) {
    int64_t ff = ly->gate_exps.n_out, E = ly->down_exps.n_out;
    int n = x1 - x0;
    moe_job j = {f, ly, x0, x1, 0, 0};
    j.chunks_per_exp = (int)MS_MAX(1, MS_MIN(ff / 16, (int64_t)f->nth * 2 / n + 1));
    j.rows_per_chunk = (ff + j.chunks_per_exp - 1) / j.chunks_per_exp;
    pool_run(f->pool, moe_up_task, &j, n * j.chunks_per_exp);
    if (f->actq && quant_has_q16(ly->down_exps.type)) {
        int slots = f->exp_first[x1 - 1] + f->exp_count[x1 - 1] - f->exp_first[x0];
        pool_run(f->pool, moe_quant_act, &j, slots);
    }
    j.rows_per_chunk = f->down_rows;
    pool_run(f->pool, moe_down_task, &j, (int)((E + j.rows_per_chunk - 1) / j.rows_per_chunk));
}

/* Router -> top-k -> the batch's (token, k) pairs grouped by expert: exp_ids[0..n_exp) with
 * their slots exp_first/exp_count into slot_tok/slot_w. Returns n_exp. */
static int route(ms_fwd *f, int T) {
    const ms_hparams *hp = &f->m->hp;
    int NE = hp->n_expert, K = hp->n_expert_used;
    memset(f->exp_count, 0, sizeof(int) * NE);
    for (int t = 0; t < T; t++) {
        float *lg = f->router + (size_t)t * NE;
        float mx = -INFINITY;
        for (int x = 0; x < NE; x++) mx = fmaxf(mx, lg[x]);
        double sum = 0;
        for (int x = 0; x < NE; x++) sum += (lg[x] = expf(lg[x] - mx));
        for (int x = 0; x < NE; x++) lg[x] = (float)(lg[x] / sum);
        int *sel = f->sel + (size_t)t * K;
        float *sw = f->sel_w + (size_t)t * K, wsum = 0;
        topk(lg, NE, K, sel);
        for (int kk = 0; kk < K; kk++) {
            sw[kk] = lg[sel[kk]];
            wsum += sw[kk];
            f->exp_count[sel[kk]]++;
        }
        for (int kk = 0; kk < K; kk++) {
            if (hp->norm_topk) sw[kk] /= wsum;
            if (hp->expert_weights_scale != 0.0f) sw[kk] *= hp->expert_weights_scale;
        }
    }
    int n_exp = 0, slots = 0;
    for (int x = 0; x < NE; x++) {
        if (!f->exp_count[x]) continue;
        f->exp_ids[n_exp] = x;
        f->exp_first[n_exp] = slots;
        f->exp_index[x] = n_exp;
        slots += f->exp_count[x];
        n_exp++;
    }
    int *fill = f->exp_fill;
    for (int x = 0; x < n_exp; x++) fill[x] = f->exp_first[x];
    for (int t = 0; t < T; t++)
        for (int kk = 0; kk < K; kk++) {
            int cx = f->exp_index[f->sel[(size_t)t * K + kk]];
            int s = fill[cx]++;
            f->slot_tok[s] = t;
            f->slot_w[s] = f->sel_w[(size_t)t * K + kk];
        }
    for (int x = 0; x < n_exp; x++) f->exp_count[x] = fill[x] - f->exp_first[x];
    return n_exp;
}

/* Router lookahead: runs layer il's router on the current residual (what layer il will see,
 * minus the updates still to come) and prefetches the top-k experts of every token of the
 * batch, so the disk works on the next layer while this one computes. Its reads queue behind
 * this layer's. */
static void lookahead(ms_fwd *f, int il, int T) {
    const ms_hparams *hp = &f->m->hp;
    const ms_layer *nx = &f->m->layers[il];
    int E = hp->n_embd, NE = hp->n_expert, K = hp->n_expert_used;
    float *hn = f->look, *lg = f->look + (size_t)T * E;
    for (int t = 0; t < T; t++) rmsnorm(hn + (size_t)t * E, f->x + (size_t)t * E, nx->ffn_norm, E, hp->norm_eps);
    mm_op o = mm(&nx->router, hn, E, lg, NE, T);
    mm_run(f, &o, 1);
    /* mark each token's top-k; the prefetch list goes in expert order */
    int *want = f->exp_fill; /* [n_expert] scratch; route() has finished with it */
    memset(want, 0, sizeof(int) * NE);
    for (int t = 0; t < T; t++) {
        int sel[64];
        topk(lg + (size_t)t * NE, NE, MS_MIN(K, 64), sel);
        for (int kk = 0; kk < MS_MIN(K, 64); kk++) want[sel[kk]] = 1;
    }
    int *ids = f->exp_index; /* route()'s expert -> compact map is no longer needed either */
    int n = 0;
    for (int x = 0; x < NE; x++)
        if (want[x]) ids[n++] = x;
    experts_prefetch(f->store, il, ids, n);
}

static int moe(ms_fwd *f, const ms_layer *ly, int il, int T, ms_err *e) {
    const ms_hparams *hp = &f->m->hp;
    int E = hp->n_embd, NE = hp->n_expert;
    double t0 = ms_time();
    /* router, and the shared expert's projections (they need no expert bytes) */
    mm_op ops[4];
    int n = 0;
    ops[n++] = mm(&ly->router, f->h, E, f->router, NE, T);
    if (ly->sh_up.data) {
        ops[n++] = mm(&ly->sh_gate, f->h, E, f->sh_g, hp->n_ff_shexp, T);
        ops[n++] = mm(&ly->sh_up, f->h, E, f->sh_u, hp->n_ff_shexp, T);
        if (ly->sh_router.data) ops[n++] = mm(&ly->sh_router, f->h, E, f->sh_gate, 1, T);
    }
    mm_run(f, ops, n);
    int n_exp = route(f, T);
    if (f->hq && quant_has_q16(ly->gate_exps.type)) {
        size_t hb = quant_q16_bytes(E);
        q16_rows(f->h, E, E, T, f->hq);
        int slots = f->exp_first[n_exp - 1] + f->exp_count[n_exp - 1];
        for (int s = 0; s < slots; s++) f->xq_rows[s] = f->hq + (size_t)f->slot_tok[s] * hb;
    }
    f->timing.route += ms_time() - t0;

    /* Ask for the experts in waves the cache can hold: the reads of a wave's misses all go out
     * now, the shared expert computes meanwhile, then each expert is computed as it arrives
     * (experts already resident are grouped into one job). */
    memset(f->moe, 0, sizeof(float) * (size_t)T * E);
    int cap = MS_MAX(1, experts_capacity(f->store) - hp->n_expert_used);
    for (int w0 = 0; w0 < n_exp; w0 += cap) {
        int w1 = MS_MIN(n_exp, w0 + cap);
        if (experts_request(f->store, il, f->exp_ids + w0, w1 - w0, e)) return e ? e->status : MS_ERR_IO;
        if (w0 == 0 && f->lookahead && il + 1 < hp->n_layer) lookahead(f, il + 1, T);
        if (w0 == 0 && ly->sh_up.data) {
            double ts = ms_time();
            int sf = hp->n_ff_shexp;
            for (int64_t i = 0; i < (int64_t)T * sf; i++) f->sh_g[i] = silu(f->sh_g[i]) * f->sh_u[i];
            mm_op o = mm(&ly->sh_down, f->sh_g, sf, f->a, E, T);
            mm_run(f, &o, 1);
            for (int t = 0; t < T; t++) {
                float g = ly->sh_router.data ? sigmoid(f->sh_gate[t]) : 1.0f;
                for (int i = 0; i < E; i++) f->moe[(size_t)t * E + i] = g * f->a[(size_t)t * E + i];
            }
            f->timing.expert_compute += ms_time() - ts;
        }
        for (int x = w0; x < w1;) {
            double tw = ms_time();
            int rc = experts_wait(f->store, il, f->exp_ids[x], &f->refs[x], e);
            int y = x + 1;
            while (!rc && y < w1 && experts_ready(f->store, il, f->exp_ids[y]))
                rc = experts_wait(f->store, il, f->exp_ids[y], &f->refs[y], e), y++;
            double tc = ms_time();
            f->timing.expert_wait += tc - tw;
            if (rc) {
                experts_release(f->store, il, f->exp_ids + w0, w1 - w0);
                return rc;
            }
            moe_compute(f, ly, x, y);
            f->timing.expert_compute += ms_time() - tc;
            x = y;
        }
        experts_release(f->store, il, f->exp_ids + w0, w1 - w0);
    }
    return MS_OK;
}

/* ------------------------------------------------------------------ driver */

static int embed(ms_fwd *f, const int32_t *tokens, int T, ms_err *e) {
    int E = f->m->hp.n_embd;
    for (int t = 0; t < T; t++)
        if (model_embed_row(f->m, tokens[t], f->x + (size_t)t * E, e)) return e ? e->status : MS_ERR_IO;
    return MS_OK;
}

static int eval_batch(ms_fwd *f, const int32_t *tokens, int T, int all_logits, ms_err *e) {
    const struct ms_model *m = f->m;
    const ms_hparams *hp = &m->hp;
    int E = hp->n_embd;
    if (embed(f, tokens, T, e)) return e ? e->status : MS_ERR_IO;
    if (hp->n_head) /* attention layers rotate by the same angles in every layer */
        for (int t = 0; t < T; t++) rope_table(f->rope_cs + (size_t)t * hp->n_rot, hp->n_rot, f->pos + t, hp->rope_base);
    for (int il = 0; il < hp->n_layer; il++) {
        const ms_layer *ly = &m->layers[il];
        ms_timing before = f->timing;
        double t0 = ms_time();
        for (int t = 0; t < T; t++) rmsnorm(f->h + (size_t)t * E, f->x + (size_t)t * E, ly->attn_norm, E, hp->norm_eps);
        if (ly->kind == MS_LAYER_ATTN) attention(f, ly, il, T);
        else gated_deltanet(f, ly, il, T);
        for (int64_t i = 0; i < (int64_t)T * E; i++) f->x[i] += f->h[i];
        for (int t = 0; t < T; t++) rmsnorm(f->h + (size_t)t * E, f->x + (size_t)t * E, ly->ffn_norm, E, hp->norm_eps);
        f->timing.attn += ms_time() - t0;
        int rc = moe(f, ly, il, T, e);
        if (rc) return rc;
        double *lt = f->layer_time + (size_t)il * 4;
        lt[0] += f->timing.attn - before.attn;
        lt[1] += f->timing.route - before.route;
        lt[2] += f->timing.expert_wait - before.expert_wait;
        lt[3] += f->timing.expert_compute - before.expert_compute;
        for (int64_t i = 0; i < (int64_t)T * E; i++) f->x[i] += f->moe[i];
    }
    double t0 = ms_time();
    int first = all_logits ? 0 : T - 1, rows = T - first;
    for (int t = first; t < T; t++) rmsnorm(f->h + (size_t)(t - first) * E, f->x + (size_t)t * E, m->output_norm, E, hp->norm_eps);
    mm_op o = mm(&m->output, f->h, E, f->logits, hp->n_vocab, rows);
    mm_run(f, &o, 1);
    f->n_logits = rows;
    f->pos += T;
    f->timing.other += ms_time() - t0;
    f->timing.tokens += (uint64_t)T;
    return MS_OK;
}

int fwd_eval(ms_fwd *f, const int32_t *tokens, int n, int all_logits, ms_err *e) {
    const ms_hparams *hp = &f->m->hp;
    if (n <= 0) return ms_fail(e, MS_ERR_ARG, "nothing to evaluate");
    if (f->pos + n > f->n_ctx)
        return ms_fail(e, MS_ERR_CONTEXT, "context full: %d positions used + %d new tokens > context size %d (use -c to enlarge)",
                       f->pos, n, f->n_ctx);
    if (all_logits && n > f->n_batch)
        return ms_fail(e, MS_ERR_ARG, "all-position logits need n <= batch size (%d > %d)", n, f->n_batch);
    if (all_logits && n > f->logits_cap) {
        /* grown on first use (verification tools): a [n_batch][n_vocab] block is large */
        float *p = ms_malloc_aligned(sizeof(float) * (size_t)f->n_batch * hp->n_vocab);
        if (!p) return ms_fail(e, MS_ERR_NOMEM, "out of memory for %d rows of logits", f->n_batch);
        ms_free_aligned(f->logits);
        f->logits = p;
        f->logits_cap = f->n_batch;
        f->host_bytes += sizeof(float) * (size_t)(f->n_batch - 1) * hp->n_vocab;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return ms_fail(e, MS_ERR_ARG, "token id %d out of range [0, %d)", tokens[i], hp->n_vocab);
    memcpy(f->history + f->pos, tokens, sizeof(int32_t) * (size_t)n);
    f->n_logits = 0;
    for (int done = 0; done < n;) {
        int T = MS_MIN(f->n_batch, n - done);
        int rc = eval_batch(f, tokens + done, T, all_logits, e);
        if (rc) return rc;
        done += T;
    }
    return MS_OK;
}

const float *fwd_logits(const ms_fwd *f, int i) {
    if (i < 0 || i >= f->n_logits) return NULL;
    return f->logits + (size_t)i * f->m->hp.n_vocab;
}
int fwd_n_logits(const ms_fwd *f) { return f->n_logits; }
int fwd_pos(const ms_fwd *f) { return f->pos; }
int fwd_n_ctx(const ms_fwd *f) { return f->n_ctx; }
const ms_timing *fwd_timing(const ms_fwd *f) { return &f->timing; }
const double *fwd_layer_timing(const ms_fwd *f, int il) {
    return il >= 0 && il < f->m->hp.n_layer ? f->layer_time + (size_t)il * 4 : NULL;
}

const int32_t *fwd_history(const ms_fwd *f) { return f->history; }

/* Copies every GDN layer's state into (save) or out of (!save) buf. */
static void state_copy(ms_fwd *f, float *buf, int save) {
    const ms_hparams *hp = &f->m->hp;
    size_t conv = (size_t)(hp->d_conv - 1) * hp->conv_dim, ssm = (size_t)hp->n_v_heads * hp->d_v * hp->d_k;
    for (int il = 0; il < hp->n_layer; il++) {
        if (!f->conv_state[il]) continue;
        if (save) {
            memcpy(buf, f->conv_state[il], sizeof(float) * conv);
            memcpy(buf + conv, f->ssm_state[il], sizeof(float) * ssm);
        } else {
            memcpy(f->conv_state[il], buf, sizeof(float) * conv);
            memcpy(f->ssm_state[il], buf + conv, sizeof(float) * ssm);
        }
        buf += conv + ssm;
    }
}

int fwd_checkpoint(ms_fwd *f, ms_err *e) {
    if (!f->state_floats || f->pos == 0) return MS_OK; /* nothing recurrent to remember */
    int slot = 0;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++) {
        if (f->ckpt[i].pos == f->pos) { slot = i; break; }
        if (f->ckpt[i].used < f->ckpt[slot].used) slot = i;
    }
    if (!f->ckpt[slot].state) {
        f->ckpt[slot].state = ms_malloc_aligned(sizeof(float) * f->state_floats);
        if (!f->ckpt[slot].state) return ms_fail(e, MS_ERR_NOMEM, "out of memory saving a state checkpoint");
    }
    state_copy(f, f->ckpt[slot].state, 1);
    f->ckpt[slot].pos = f->pos;
    f->ckpt[slot].used = ++f->ckpt_clock;
    return MS_OK;
}

int fwd_resume_point(const ms_fwd *f, int pos) {
    if (pos >= f->pos) return f->pos;
    if (!f->state_floats) return pos; /* attention only: the KV cache is simply cut */
    int best = 0;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++)
        if (f->ckpt[i].pos <= pos && f->ckpt[i].pos > best) best = f->ckpt[i].pos;
    return best;
}

int fwd_truncate(ms_fwd *f, int pos, ms_err *e) {
    if (pos < 0 || pos > f->pos) return ms_fail(e, MS_ERR_ARG, "cannot move to position %d (at %d)", pos, f->pos);
    if (pos == f->pos) return MS_OK;
    if (pos == 0) {
        fwd_reset(f);
        return MS_OK;
    }
    if (f->state_floats) {
        int i;
        for (i = 0; i < MS_N_CHECKPOINTS; i++)
            if (f->ckpt[i].pos == pos) break;
        if (i == MS_N_CHECKPOINTS)
            return ms_fail(e, MS_ERR_ARG, "no recurrent-state checkpoint at position %d", pos);
        state_copy(f, f->ckpt[i].state, 0);
        f->ckpt[i].used = ++f->ckpt_clock;
    }
    /* checkpoints beyond the new end describe another continuation */
    for (int i = 0; i < MS_N_CHECKPOINTS; i++)
        if (f->ckpt[i].pos > pos) f->ckpt[i].pos = -1;
    f->pos = pos;
    f->n_logits = 0;
    return MS_OK;
}

void fwd_reset(ms_fwd *f) {
    const ms_hparams *hp = &f->m->hp;
    f->pos = 0;
    f->n_logits = 0;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++) f->ckpt[i].pos = -1;
    for (int il = 0; il < hp->n_layer; il++) {
        if (f->conv_state[il]) memset(f->conv_state[il], 0, sizeof(float) * (size_t)(hp->d_conv - 1) * hp->conv_dim);
        if (f->ssm_state[il]) memset(f->ssm_state[il], 0, sizeof(float) * (size_t)hp->n_v_heads * hp->d_v * hp->d_k);
    }
}

/* ------------------------------------------------------------------ lifetime */

static float *alloc_f(ms_fwd *f, size_t n, int *fail) {
    f->host_bytes += sizeof(float) * (n ? n : 1);
    float *p = ms_malloc_aligned(sizeof(float) * (n ? n : 1));
    if (!p) *fail = 1;
    else memset(p, 0, sizeof(float) * (n ? n : 1));
    return p;
}

static int *alloc_i(ms_fwd *f, size_t n, int *fail) {
    f->host_bytes += sizeof(int) * (n ? n : 1);
    int *p = ms_calloc(n ? n : 1, sizeof(int));
    if (!p) *fail = 1;
    return p;
}

ms_fwd *fwd_new(const struct ms_model *m, ms_store *store, ms_pool *pool, int n_ctx, int n_batch, int lookahead,
                ms_err *e) {
    const ms_hparams *hp = &m->hp;
    if (n_ctx <= 0 || n_batch <= 0) {
        ms_fail(e, MS_ERR_ARG, "context size and batch size must be positive");
        return NULL;
    }
    if (n_batch > n_ctx) n_batch = n_ctx;
    ms_fwd *f = ms_calloc(1, sizeof *f);
    if (!f) {
        ms_fail(e, MS_ERR_NOMEM, "out of memory");
        return NULL;
    }
    f->m = m;
    f->store = store;
    f->pool = pool;
    f->nth = pool_size(pool);
    f->n_ctx = n_ctx;
    f->n_batch = n_batch;
    f->lookahead = lookahead;
    int fail = 0;
    size_t L = (size_t)hp->n_layer, T = (size_t)n_batch, E = (size_t)hp->n_embd;
    f->k_cache = ms_calloc(L, sizeof(float *));
    f->v_cache = ms_calloc(L, sizeof(float *));
    f->conv_state = ms_calloc(L, sizeof(float *));
    f->ssm_state = ms_calloc(L, sizeof(float *));
    if (!f->k_cache || !f->v_cache || !f->conv_state || !f->ssm_state) fail = 1;
    size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
    for (size_t il = 0; il < L && !fail; il++) {
        if (m->layers[il].kind == MS_LAYER_ATTN) {
            f->k_cache[il] = alloc_f(f, (size_t)n_ctx * kvd, &fail);
            f->v_cache[il] = alloc_f(f, (size_t)n_ctx * kvd, &fail);
        } else {
            f->conv_state[il] = alloc_f(f, (size_t)(hp->d_conv - 1) * hp->conv_dim, &fail);
            f->ssm_state[il] = alloc_f(f, (size_t)hp->n_v_heads * hp->d_v * hp->d_k, &fail);
        }
    }
    size_t qw = (size_t)hp->n_head * hp->head_dim * 2;
    size_t vd = (size_t)hp->n_v_heads * hp->d_v;
    size_t a_w = MS_MAX(E, MS_MAX(qw, (size_t)hp->conv_dim));
    size_t K = (size_t)hp->n_expert_used, NE = (size_t)hp->n_expert;
    f->x = alloc_f(f, T * E, &fail);
    f->h = alloc_f(f, T * E, &fail);
    f->a = alloc_f(f, T * a_w, &fail);
    f->q = alloc_f(f, T * (size_t)hp->n_head * hp->head_dim, &fail);
    f->att = alloc_f(f, T * (size_t)hp->n_head * hp->head_dim, &fail);
    f->qkv = alloc_f(f, T * (size_t)hp->conv_dim, &fail);
    f->z = alloc_f(f, T * vd, &fail);
    f->beta = alloc_f(f, T * (size_t)hp->n_v_heads, &fail);
    f->alpha = alloc_f(f, T * (size_t)hp->n_v_heads, &fail);
    f->gdn_o = alloc_f(f, T * MS_MAX(vd, 2 * (size_t)hp->n_v_heads), &fail);
    f->router = alloc_f(f, T * NE, &fail);
    f->sel = alloc_i(f, T * K, &fail);
    f->sel_w = alloc_f(f, T * K, &fail);
    f->exp_fill = alloc_i(f, NE, &fail);
    f->layer_time = ms_calloc(L * 4, sizeof(double));
    if (!f->layer_time) fail = 1;
    f->exp_ids = alloc_i(f, NE, &fail);
    f->exp_first = alloc_i(f, NE, &fail);
    f->exp_count = alloc_i(f, NE, &fail);
    f->exp_index = alloc_i(f, NE, &fail);
    f->slot_tok = alloc_i(f, T * K, &fail);
    f->slot_w = alloc_f(f, T * K, &fail);
    f->refs = ms_calloc(NE, sizeof(ms_expert_ref));
    if (!f->refs) fail = 1;
    f->act_g = alloc_f(f, T * K * (size_t)hp->n_ff_exp, &fail);
    f->act_u = alloc_f(f, T * K * (size_t)hp->n_ff_exp, &fail);
    f->sh_g = alloc_f(f, T * (size_t)hp->n_ff_shexp, &fail);
    f->sh_u = alloc_f(f, T * (size_t)hp->n_ff_shexp, &fail);
    f->sh_gate = alloc_f(f, T, &fail);
    f->moe = alloc_f(f, T * E, &fail);
    f->look = alloc_f(f, T * (E + NE), &fail);
    f->rope_cs = alloc_f(f, T * (size_t)MS_MAX(hp->n_rot, 1), &fail);
    /* q16 scratch: every matrix input, the MoE rows, the SwiGLU rows, the down products */
    size_t widest = MS_MAX(MS_MAX(E, qw), MS_MAX(vd, (size_t)MS_MAX(hp->n_ff_exp, hp->n_ff_shexp)));
    widest = (widest + 31) / 32 * 32;
    f->xq_op_bytes = T * quant_q16_bytes((int64_t)widest);
    f->xq = (uint8_t *)alloc_f(f, MAX_MM_OPS * f->xq_op_bytes / sizeof(float), &fail);
    f->hq = (uint8_t *)alloc_f(f, T * quant_q16_bytes((int64_t)(E + 31) / 32 * 32) / sizeof(float), &fail);
    f->actq = (uint8_t *)alloc_f(f, T * K * quant_q16_bytes(hp->n_ff_exp) / sizeof(float), &fail);
    f->xq_rows = ms_calloc(T * K, sizeof(void *));
    if (!f->xq_rows) fail = 1;
    f->down_rows = (int64_t)MS_MAX(4, (E + (size_t)f->nth * 2 - 1) / ((size_t)f->nth * 2));
    f->down_tmp_len = T * (size_t)f->down_rows;
    f->down_tmp = alloc_f(f, (size_t)f->nth * f->down_tmp_len, &fail);
    if (hp->n_v_heads && n_batch >= GDN_CHUNK) {
        size_t C = GDN_CHUNK, d = (size_t)MS_MAX(hp->d_k, hp->d_v);
        f->gdn_scratch_len = C * C + C + 3 * C * d;
        f->gdn_scratch = alloc_f(f, (size_t)f->nth * f->gdn_scratch_len, &fail);
    }
    /* per-thread row buffer: the longest dequantized row, or the attention scratch (attn.h) */
    size_t longest = MS_MAX(E, MS_MAX((size_t)hp->n_ff_exp, (size_t)hp->n_ff_shexp));
    longest = MS_MAX(longest, MS_MAX((size_t)hp->n_head * hp->head_dim, vd));
    longest = MS_MAX(longest, attn_scratch_floats(hp->head_dim));
    f->thread_buf_len = (longest + 15) & ~(size_t)15;
    f->thread_buf = alloc_f(f, (size_t)f->nth * f->thread_buf_len, &fail);
    f->logits = alloc_f(f, (size_t)hp->n_vocab, &fail);
    f->logits_cap = 1;
    f->history = alloc_i(f, (size_t)n_ctx, &fail);
    for (size_t il = 0; il < L; il++)
        if (m->layers[il].kind == MS_LAYER_GDN)
            f->state_floats += (size_t)(hp->d_conv - 1) * hp->conv_dim + (size_t)hp->n_v_heads * hp->d_v * hp->d_k;
    for (int i = 0; i < MS_N_CHECKPOINTS; i++) f->ckpt[i].pos = -1;
    if (fail) {
        size_t kv_bytes = 0;
        for (size_t il = 0; il < L; il++)
            if (m->layers[il].kind == MS_LAYER_ATTN) kv_bytes += 2 * (size_t)n_ctx * kvd * sizeof(float);
        ms_fail(e, MS_ERR_NOMEM, "out of memory allocating the context (KV cache %.1f MiB for %d positions; try a smaller -c)",
                kv_bytes / 1048576.0, n_ctx);
        fwd_free(f);
        return NULL;
    }
    return f;
}

void fwd_free(ms_fwd *f) {
    if (!f) return;
    size_t L = (size_t)f->m->hp.n_layer;
    for (size_t il = 0; il < L; il++) {
        if (f->k_cache) ms_free_aligned(f->k_cache[il]);
        if (f->v_cache) ms_free_aligned(f->v_cache[il]);
        if (f->conv_state) ms_free_aligned(f->conv_state[il]);
        if (f->ssm_state) ms_free_aligned(f->ssm_state[il]);
    }
    ms_free(f->k_cache);
    ms_free(f->v_cache);
    ms_free(f->conv_state);
    ms_free(f->ssm_state);
    float *fs[] = {f->x, f->h, f->a, f->q, f->att, f->qkv, f->z, f->beta, f->alpha, f->gdn_o, f->router,
                   f->sel_w, f->slot_w, f->act_g, f->act_u, f->sh_g, f->sh_u, f->sh_gate, f->moe,
                   f->thread_buf, f->logits, f->look, f->rope_cs, f->gdn_scratch, (float *)f->xq, (float *)f->hq,
                   (float *)f->actq, f->down_tmp};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) ms_free_aligned(fs[i]);
    ms_free(f->sel);
    ms_free(f->exp_fill);
    ms_free(f->layer_time);
    ms_free(f->xq_rows);
    ms_free(f->exp_ids);
    ms_free(f->exp_first);
    ms_free(f->exp_count);
    ms_free(f->exp_index);
    ms_free(f->slot_tok);
    ms_free(f->refs);
    ms_free(f->history);
    for (int i = 0; i < MS_N_CHECKPOINTS; i++) ms_free_aligned(f->ckpt[i].state);
    ms_free(f);
}

/* ------------------------------------------------------------------ the CPU backend table */

typedef struct cpu_ctx {
    ms_pool *pool;
    ms_fwd *fwd;
} cpu_ctx;

static void cpu_destroy(void *ctx) {
    cpu_ctx *c = ctx;
    if (!c) return;
    fwd_free(c->fwd);
    pool_free(c->pool);
    ms_free(c);
}

static void *cpu_create(const struct ms_model *m, ms_store *store, const ms_backend_params *p, ms_err *e) {
    cpu_ctx *c = ms_calloc(1, sizeof *c);
    if (!c) {
        ms_fail(e, MS_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->pool = pool_new(p->n_threads > 0 ? p->n_threads : ms_cpu_count());
    if (!c->pool) {
        ms_fail(e, MS_ERR_NOMEM, "cannot start worker threads");
        cpu_destroy(c);
        return NULL;
    }
    c->fwd = fwd_new(m, store, c->pool, p->n_ctx, p->n_batch, p->lookahead, e);
    if (!c->fwd) {
        cpu_destroy(c);
        return NULL;
    }
    return c;
}

#define FWD(ctx) (((cpu_ctx *)(ctx))->fwd)
#define CFWD(ctx) (((const cpu_ctx *)(ctx))->fwd)
static int cpu_eval(void *c, const int32_t *t, int n, int all, ms_err *e) { return fwd_eval(FWD(c), t, n, all, e); }
static const float *cpu_logits(const void *c, int i) { return fwd_logits(CFWD(c), i); }
static int cpu_n_logits(const void *c) { return fwd_n_logits(CFWD(c)); }
static int cpu_pos(const void *c) { return fwd_pos(CFWD(c)); }
static int cpu_n_ctx(const void *c) { return fwd_n_ctx(CFWD(c)); }
static const int32_t *cpu_history(const void *c) { return fwd_history(CFWD(c)); }
static int cpu_checkpoint(void *c, ms_err *e) { return fwd_checkpoint(FWD(c), e); }
static int cpu_resume_point(const void *c, int pos) { return fwd_resume_point(CFWD(c), pos); }
static int cpu_truncate(void *c, int pos, ms_err *e) { return fwd_truncate(FWD(c), pos, e); }
static void cpu_reset(void *c) { fwd_reset(FWD(c)); }
static const ms_timing *cpu_timing(const void *c) { return fwd_timing(CFWD(c)); }
static const double *cpu_layer_timing(const void *c, int il) { return fwd_layer_timing(CFWD(c), il); }
/* checkpoints are allocated on demand: count the ones that may be */
static uint64_t cpu_host_bytes(const void *c) {
    const ms_fwd *f = CFWD(c);
    return f->host_bytes + (uint64_t)MS_N_CHECKPOINTS * f->state_floats * sizeof(float);
}

const ms_backend ms_backend_cpu = {
    "cpu", cpu_create, cpu_destroy, cpu_eval, cpu_logits, cpu_n_logits, cpu_pos, cpu_n_ctx, cpu_history,
    cpu_checkpoint, cpu_resume_point, cpu_truncate, cpu_reset, cpu_timing, cpu_host_bytes, cpu_layer_timing,
};
