/* forward.h - the CPU forward pass: one context (KV cache, recurrent state, scratch) evaluating
 * batches of tokens through a loaded model.
 *
 * Not here: loading (model.c), sampling (sampler.c), where expert bytes come from (experts.c).
 */
#ifndef MS_FORWARD_H
#define MS_FORWARD_H

#include <stdint.h>

#include "experts.h"
#include "model.h"
#include "threads.h"

typedef struct ms_timing {
    double attn, route, expert_wait, expert_compute, other; /* seconds, accumulated */
    uint64_t tokens;
} ms_timing;

typedef struct ms_fwd ms_fwd;

/* Creates a context for n_ctx positions, evaluating at most n_batch tokens per call.
 * The pool and store are borrowed (the caller keeps them alive). NULL on error. */
ms_fwd *fwd_new(const struct ms_model *m, ms_store *store, ms_pool *pool, int n_ctx, int n_batch, ms_err *e);
void fwd_free(ms_fwd *f);

/* Evaluates tokens[0..n) at positions pos..pos+n-1 and advances pos. Logits are kept for the
 * last token, or for every token if all_logits. n may exceed n_batch (split internally).
 * Returns MS_OK, MS_ERR_CONTEXT when the window would overflow (nothing evaluated), MS_ERR_ARG
 * for an out-of-range token id, or an expert-store error. */
int fwd_eval(ms_fwd *f, const int32_t *tokens, int n, int all_logits, ms_err *e);

/* Logits of row i of the last fwd_eval (0 <= i < fwd_n_logits), [n_vocab]. */
const float *fwd_logits(const ms_fwd *f, int i);
int fwd_n_logits(const ms_fwd *f);

int fwd_pos(const ms_fwd *f);
int fwd_n_ctx(const ms_fwd *f);
/* Forgets everything: position 0, empty KV cache, zero recurrent state. */
void fwd_reset(ms_fwd *f);
const ms_timing *fwd_timing(const ms_fwd *f);

#endif
