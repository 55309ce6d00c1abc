/* model.h - a loaded model: hyperparameters from GGUF metadata and typed views of every weight,
 * for the supported MoE architectures (qwen3moe, qwen3next, qwen35moe).
 *
 * Not here: computation (forward.c), expert residency (experts.c), tokenization (tokenizer.c).
 * Loading validates that every required tensor exists with the expected shape and a supported
 * type, and fails with a message naming the tensor otherwise. Weights stay in the GGUF mapping.
 *
 * Glossary (used everywhere):
 *   n_embd        hidden size            n_vocab       vocabulary size
 *   n_layer       decoder layers         n_head        query heads (full attention)
 *   n_head_kv     key/value heads        head_dim      per-head size (key_length)
 *   n_rot         rotary dims per head   n_expert      routed experts per layer
 *   n_expert_used experts per token      n_ff_exp      expert hidden size
 *   n_ff_shexp    shared-expert hidden size
 *   Gated DeltaNet (linear attention) layers:
 *   n_k_heads (ssm.group_count), n_v_heads (ssm.time_step_rank), d_k = d_v (ssm.state_size),
 *   d_conv (ssm.conv_kernel), conv_dim = 2 * n_k_heads * d_k + n_v_heads * d_v
 */
#ifndef MS_MODEL_H
#define MS_MODEL_H

#include <stdint.h>

#include "gguf.h"
#include "moestream.h"

/* Memory a process needs beyond weights, context and expert cache (tokenizer, stacks, libc). */
#define MS_MEM_MARGIN ((uint64_t)64 << 20)

typedef enum ms_arch {
    MS_ARCH_QWEN3MOE,
    MS_ARCH_QWEN3NEXT,
    MS_ARCH_QWEN35MOE,
} ms_arch;

/* A 2-D weight: n_out rows of n_in values, rows row_bytes apart (GGUF ne[0] = n_in). */
typedef struct ms_mat {
    int type;
    int64_t n_in, n_out;
    size_t row_bytes;
    const uint8_t *data;
} ms_mat;

/* A stack of expert matrices [n_expert][n_out][n_in]; expert e starts at data + e * stride. */
typedef struct ms_mat3 {
    int type;
    int64_t n_in, n_out, n_expert;
    size_t row_bytes, stride;
    const uint8_t *data;
    const gguf_tensor *src; /* where the bytes live on disk, for the expert store */
} ms_mat3;

typedef enum ms_layer_kind { MS_LAYER_ATTN, MS_LAYER_GDN } ms_layer_kind;

typedef struct ms_layer {
    ms_layer_kind kind;
    const float *attn_norm;   /* [n_embd] */
    const float *ffn_norm;    /* [n_embd] (post_attention_norm / ffn_norm) */

    /* full attention */
    ms_mat wq;                /* [n_embd] -> [n_head * head_dim * (attn_gated ? 2 : 1)] */
    ms_mat wk, wv;            /* [n_embd] -> [n_head_kv * head_dim] */
    ms_mat wo;                /* [n_head * head_dim] -> [n_embd] */
    const float *q_norm;      /* [head_dim] or NULL */
    const float *k_norm;      /* [head_dim] or NULL */
    int attn_gated;           /* wq also yields a per-head output gate (qwen3next/qwen35) */

    /* Gated DeltaNet */
    ms_mat wqkv;              /* [n_embd] -> [conv_dim]: q | k | v */
    ms_mat wz;                /* [n_embd] -> [n_v_heads * d_v]: output gate */
    ms_mat wbeta, walpha;     /* [n_embd] -> [n_v_heads] (qwen35moe) */
    ms_mat wba;               /* [n_embd] -> [2 * n_v_heads] grouped by k head (qwen3next) */
    const float *conv1d;      /* [conv_dim][d_conv] */
    const float *dt_bias;     /* [n_v_heads] */
    const float *ssm_a;       /* [n_v_heads], = -exp(A_log) */
    const float *ssm_norm;    /* [d_v] */
    ms_mat ssm_out;           /* [n_v_heads * d_v] -> [n_embd] */

    /* mixture of experts */
    ms_mat router;            /* [n_embd] -> [n_expert] */
    ms_mat3 gate_exps, up_exps; /* [n_expert][n_ff_exp][n_embd] */
    ms_mat3 down_exps;        /* [n_expert][n_embd][n_ff_exp] */
    ms_mat sh_gate, sh_up;    /* [n_embd] -> [n_ff_shexp]; data NULL if no shared expert */
    ms_mat sh_down;           /* [n_ff_shexp] -> [n_embd] */
    ms_mat sh_router;         /* [n_embd] -> [1]: sigmoid gate of the shared expert, or NULL data */
} ms_layer;

typedef struct ms_hparams {
    ms_arch arch;
    int n_embd, n_vocab, n_layer, n_ctx_train;
    int n_head, n_head_kv, head_dim, n_rot;
    float rope_base, norm_eps;
    int n_expert, n_expert_used, n_ff_exp, n_ff_shexp;
    float expert_weights_scale; /* 0 = none */
    int norm_topk;            /* renormalize the top-k weights */
    /* Gated DeltaNet */
    int n_k_heads, n_v_heads, d_k, d_v, d_conv, conv_dim;
    int gdn_interleave;       /* v head h uses k head h / (n_v/n_k) (qwen3next) instead of h % n_k */
} ms_hparams;

struct ms_model {
    gguf_file *gguf;
    ms_hparams hp;
    ms_layer *layers;         /* [n_layer] */
    ms_mat tok_embd;          /* [n_vocab] rows of [n_embd] */
    ms_mat output;            /* [n_embd] -> [n_vocab] (may alias tok_embd) */
    const float *output_norm; /* [n_embd] */
    float *owned;             /* vectors converted to f32 at load */
    size_t n_owned, cap_owned;
    uint64_t bytes_dense, bytes_experts; /* resident vs routed-expert bytes */
    char *arch_name;
    char *name;               /* general.name, or NULL */
    int n_expert_used_model;  /* the file's top-k, before any override */
    uint64_t mem_budget;      /* bytes the process may use (0: no limit) */
    uint8_t *arena;           /* model_make_resident: the owned copy of the weights */
    uint64_t arena_bytes;
    uint64_t dense_arena_bytes; /* the dense weights' part of it */
    int embd_on_disk;         /* token rows are read with pread (tok_embd.data is NULL) */
    int embd_fd;
    uint64_t embd_offset;
    /* set by the library facade (moestream.c), not by model_load */
    struct ms_tokenizer *tok;
    struct ms_store *store;
};

/* Loads and validates the model in an opened GGUF (which the model then owns). Returns NULL on
 * error with e filled. n_expert_used_override > 0 replaces the model's top-k. */
struct ms_model *model_load(gguf_file *f, int n_expert_used_override, ms_err *e);
void model_free(struct ms_model *m);

/* Copies the dense (non-expert) weights, and with experts the routed experts too, into owned
 * memory (huge pages where the kernel gives them) with pread, so the file mapping is never
 * touched and residency is explicit (mapped pages would count as resident but could be dropped
 * by the OS at any time). Token embedding rows stay on disk (one pread per token) unless the
 * output matrix is tied to them. Returns MS_OK or an I/O / memory error. */
int model_make_resident(struct ms_model *m, int experts, ms_err *e);
/* With the embedding on disk (embd_on_disk): n of its bytes from byte off into dst. Returns 0,
 * an errno, or -1 for a file that ends first. */
int model_read_embd(const struct ms_model *m, uint64_t off, void *dst, uint64_t n);
/* Token tok's embedding, dequantized into out[n_embd], from memory or from disk. */
int model_embed_row(const struct ms_model *m, int32_t tok, float *out, ms_err *e);

/* "qwen35moe", ... */
const char *model_arch_name(ms_arch a);

#endif
