/* moestream.h - the public API of the moestream engine.
 *
 * moestream runs Mixture-of-Experts language models stored as GGUF files, keeping the dense
 * weights resident and reading the routed experts on demand. Front ends (CLI, chat, server,
 * bench) use only this header. Handles are opaque; every _open/_new has a _free, and _free(NULL)
 * is a no-op. Functions that can fail return an ms_status and leave a one-line message that
 * ms_last_error-style accessors return; the library never prints and never exits.
 */
#ifndef MOESTREAM_H
#define MOESTREAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ms_status {
    MS_OK = 0,
    MS_ERR_IO = 1,          /* a file could not be opened or read */
    MS_ERR_FORMAT = 2,      /* the file is not valid GGUF, or is truncated or inconsistent */
    MS_ERR_UNSUPPORTED = 3, /* valid, but an architecture / tensor type / feature we lack */
    MS_ERR_NOMEM = 4,       /* an allocation failed */
    MS_ERR_ARG = 5,         /* bad argument from the caller */
    MS_ERR_CONTEXT = 6,     /* the context window is full */
    MS_ERR_BUDGET = 7,      /* the memory budget cannot hold what is required */
} ms_status;

/* A short name for a status ("I/O error", ...). Never NULL. */
const char *ms_status_name(ms_status s);

/* A status plus a readable one-line message (what was expected and what was found). */
typedef struct ms_error {
    ms_status status;
    char msg[512];
} ms_error;

typedef struct ms_model ms_model;     /* weights, tokenizer, expert store: shared by contexts */
typedef struct ms_context ms_context; /* one sequence: KV cache, recurrent state, scratch */
typedef struct ms_sampler ms_sampler;

/* ---- models ---- */

typedef struct ms_model_params {
    int n_expert_used; /* 0: the model's top-k; otherwise replaces it (changes the output) */
} ms_model_params;

void ms_model_params_default(ms_model_params *p);

/* Opens a GGUF file (the first part of a split model) and validates it. On success *out owns
 * the model (free with ms_model_free); on failure returns a status and fills err. */
ms_status ms_model_load(const char *path, const ms_model_params *p, ms_model **out, ms_error *err);
void ms_model_free(ms_model *m);

#define MS_N_TYPES 43

typedef struct ms_model_info {
    const char *arch;       /* "qwen35moe" */
    const char *name;       /* general.name or "" */
    int n_vocab, n_embd, n_layer, n_ctx_train;
    int n_head, n_head_kv, head_dim, n_rot;
    int n_layer_attn, n_layer_linear; /* full attention vs Gated DeltaNet layers */
    int n_expert, n_expert_used, n_expert_used_model, n_ff_exp, n_ff_shexp;
    int n_k_heads, n_v_heads, d_state, d_conv;
    float rope_base, norm_eps;
    uint64_t bytes_total, bytes_dense, bytes_experts, bytes_per_expert; /* per expert, one layer */
    int64_t n_tensors;
    int n_parts;
    uint64_t type_bytes[MS_N_TYPES];  /* tensor-type histogram */
    int64_t type_count[MS_N_TYPES];
} ms_model_info;

void ms_model_get_info(const ms_model *m, ms_model_info *out);
/* Name of a GGML tensor type number ("Q4_K"). */
const char *ms_type_name(int type);

/* ---- tokens ---- */

int ms_n_vocab(const ms_model *m);
/* Tokenizes text. parse_special: match control tokens like <|im_start|> in the text. On success
 * *ids is allocated (release with ms_free_ids) and *n_ids set. */
ms_status ms_tokenize(const ms_model *m, const char *text, size_t len, int parse_special, int32_t **ids,
                      int *n_ids, ms_error *err);
void ms_free_ids(int32_t *ids);
/* Raw bytes of a token's text (control tokens give their text). Returns the byte count (may exceed
 * cap, in which case buf holds the first cap bytes), or -1 for an invalid id. */
int ms_token_bytes(const ms_model *m, int32_t id, char *buf, int cap);
/* 1 if the token ends generation (end of sequence / turn). */
int ms_token_is_eog(const ms_model *m, int32_t id);
/* The id of a token with exactly this text, or -1. */
int32_t ms_token_find(const ms_model *m, const char *text);

/* Streaming detokenizer: push ids one at a time and get back only whole UTF-8 characters; a
 * character split across tokens is held until it completes. render_special shows control tokens'
 * text. The returned text is NUL-terminated, owned by d, valid until the next call on d.
 * ms_detok_flush ends the stream (what is held comes out as U+FFFD) and resets d. */
typedef struct ms_detok ms_detok;
ms_detok *ms_detok_new(const ms_model *m, int render_special);
const char *ms_detok_push(ms_detok *d, int32_t id, size_t *len);
const char *ms_detok_flush(ms_detok *d, size_t *len);
void ms_detok_free(ms_detok *d);

/* ---- contexts ---- */

typedef struct ms_context_params {
    int n_ctx;         /* positions (default 4096) */
    int n_batch;       /* tokens per forward pass (default 512) */
    int n_threads;     /* 0: every online CPU */
    int gpu;           /* 1: the CUDA backend (needs a CUDA build) */
    int gpu_device;    /* CUDA device index */
    uint64_t gpu_mem;  /* VRAM budget in bytes for the GPU backend (0: what is free) */
} ms_context_params;

void ms_context_params_default(ms_context_params *p);
ms_status ms_context_new(ms_model *m, const ms_context_params *p, ms_context **out, ms_error *err);
void ms_context_free(ms_context *c);

/* Evaluates n tokens after those already in the context. Logits are kept for the last token,
 * or for every token when all_logits (then n <= n_batch). MS_ERR_CONTEXT if they do not fit. */
ms_status ms_eval(ms_context *c, const int32_t *tokens, int n, int all_logits, ms_error *err);
/* Logits [n_vocab] of row i of the last ms_eval (i = -1: the last row), or NULL. */
const float *ms_logits(const ms_context *c, int i);
int ms_context_pos(const ms_context *c);
int ms_context_n_ctx(const ms_context *c);
/* Forgets the sequence (position 0). */
void ms_context_reset(ms_context *c);
/* "cpu" or "cuda". */
const char *ms_context_backend(const ms_context *c);

/* Prefix reuse (a chat's next turn, a server's next request). The ids evaluated so far are
 * ms_context_tokens()[0..pos). To continue from a shared prefix of length n, move back with
 * ms_context_rewind(c, ms_context_resume_point(c, n)) and evaluate the rest. Models with
 * recurrent layers (qwen3next, qwen35moe) can only return to positions saved with
 * ms_context_checkpoint (the last few are kept) or to 0; attention-only models to any position. */
const int32_t *ms_context_tokens(const ms_context *c);
ms_status ms_context_checkpoint(ms_context *c, ms_error *err);
int ms_context_resume_point(const ms_context *c, int n);
ms_status ms_context_rewind(ms_context *c, int pos, ms_error *err);

typedef struct ms_stats {
    uint64_t tokens;
    double t_attn, t_route, t_expert_wait, t_expert_compute, t_other; /* seconds */
    uint64_t expert_requests, expert_hits, bytes_read;
    double read_seconds;
} ms_stats;
void ms_context_stats(const ms_context *c, ms_stats *out);

/* ---- sampling ---- */

#define MS_SEED_RANDOM UINT64_MAX

typedef struct ms_sampler_params {
    float temperature;    /* <= 0: greedy */
    int top_k;            /* <= 0: off */
    float top_p;          /* >= 1: off */
    float min_p;          /* <= 0: off */
    float repeat_penalty; /* 1: off */
    int repeat_last_n;
    uint64_t seed;        /* MS_SEED_RANDOM: from the clock */
} ms_sampler_params;

void ms_sampler_params_default(ms_sampler_params *p);
ms_sampler *ms_sampler_new(const ms_model *m, const ms_sampler_params *p);
void ms_sampler_free(ms_sampler *s);
int32_t ms_sample(ms_sampler *s, const float *logits);
void ms_sampler_accept(ms_sampler *s, int32_t token);
void ms_sampler_reset(ms_sampler *s);

#ifdef __cplusplus
}
#endif

#endif
