/* forward.h - the CPU forward pass: one context (KV cache, recurrent state, scratch) evaluating
 * batches of tokens through a loaded model.
 *
 * Not here: loading (model.c), sampling (sampler.c), where expert bytes come from (experts.c).
 */
#ifndef MS_FORWARD_H
#define MS_FORWARD_H

#include <stdint.h>

#include "backend.h"
#include "experts.h"
#include "model.h"
#include "threads.h"

typedef struct ms_fwd ms_fwd;

/* Creates a context for n_ctx positions, evaluating at most n_batch tokens per call; lookahead
 * prefetches each next layer's predicted experts during decode.
 * The pool and store are borrowed (the caller keeps them alive). NULL on error. */
ms_fwd *fwd_new(const struct ms_model *m, ms_store *store, ms_pool *pool, int n_ctx, int n_batch, int lookahead,
                ms_err *e);
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
/* The token at each position so far, [fwd_pos]. */
const int32_t *fwd_history(const ms_fwd *f);

/* Prefix reuse. The KV cache can be cut at any position, but Gated DeltaNet state cannot be
 * rewound: fwd_checkpoint snapshots it at the current position (the MS_N_CHECKPOINTS most
 * recently used snapshots are kept), and fwd_truncate can return to 0, to the current position,
 * or (for recurrent models) to a checkpointed one. */
#define MS_N_CHECKPOINTS 4
int fwd_checkpoint(ms_fwd *f, ms_err *e);
/* The furthest position <= pos that fwd_truncate can return to. */
int fwd_resume_point(const ms_fwd *f, int pos);
int fwd_truncate(ms_fwd *f, int pos, ms_err *e);

/* Forgets everything: position 0, empty KV cache, zero recurrent state. */
void fwd_reset(ms_fwd *f);
const ms_timing *fwd_timing(const ms_fwd *f);
/* Seconds spent in layer il so far: attention, routing, expert wait, expert compute. */
const double *fwd_layer_timing(const ms_fwd *f, int il);

#endif
