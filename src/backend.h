/* backend.h - the one table every compute backend implements: a context that evaluates tokens
 * through a model and keeps its sequence state (KV cache, recurrent state, checkpoints).
 *
 * The CPU backend (forward.c) is the reference; the CUDA backend (cuda.cu) must agree with it.
 * The facade (moestream.c) picks one; nothing else knows which is in use.
 */
#ifndef MS_BACKEND_H
#define MS_BACKEND_H

#include <stdint.h>

#include "experts.h"
#include "model.h"
#include "util.h"

typedef struct ms_timing {
    double attn, route, expert_wait, expert_compute, other; /* seconds, accumulated */
    uint64_t tokens;
    /* a backend's own expert cache (CUDA: VRAM): experts looked up, found, bytes copied in */
    uint64_t cache_requests, cache_hits, cache_bytes_in;
    uint64_t cache_prefetches, cache_prefetch_used; /* lookahead copies, and those then routed to */
    uint64_t cache_cpu;                             /* misses computed on the host instead of copied */
} ms_timing;

typedef struct ms_backend_params {
    int n_ctx;          /* positions */
    int n_batch;        /* tokens per forward pass */
    int n_threads;      /* CPU threads (0: all) */
    int lookahead;      /* prefetch the next layer's predicted experts while this one computes */
    uint64_t gpu_mem;   /* GPU: VRAM budget in bytes (0: what is free) */
    int gpu_device;     /* GPU: device index */
    float gpu_cpu_share; /* GPU: share of the non-resident experts the CPU computes (-1: tuned) */
} ms_backend_params;

typedef struct ms_backend {
    const char *name;
    /* Returns an opaque context or NULL with e filled. The model and store are borrowed. */
    void *(*create)(const struct ms_model *m, ms_store *store, const ms_backend_params *p, ms_err *e);
    void (*destroy)(void *ctx);
    /* Evaluates tokens[0..n) after the current position; see fwd_eval for the contract. */
    int (*eval)(void *ctx, const int32_t *tokens, int n, int all_logits, ms_err *e);
    const float *(*logits)(const void *ctx, int i);
    int (*n_logits)(const void *ctx);
    int (*pos)(const void *ctx);
    int (*n_ctx)(const void *ctx);
    const int32_t *(*history)(const void *ctx);
    int (*checkpoint)(void *ctx, ms_err *e);
    int (*resume_point)(const void *ctx, int pos);
    int (*truncate)(void *ctx, int pos, ms_err *e);
    void (*reset)(void *ctx);
    const ms_timing *(*timing)(const void *ctx);
    /* host memory the context allocated (KV cache, state, scratch), for the memory budget;
     * may be NULL (counted as 0) */
    uint64_t (*host_bytes)(const void *ctx);
    /* seconds in layer il so far: attention, routing, expert wait, expert compute; may be NULL */
    const double *(*layer_timing)(const void *ctx, int il);
} ms_backend;

extern const ms_backend ms_backend_cpu;

/* The CUDA backend, or NULL when this build has none (built without CUDA=1). When it exists
 * but no GPU is usable, its create() fails with a message. */
const ms_backend *ms_backend_cuda(void);

#endif
