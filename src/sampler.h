/* sampler.h - choosing the next token from logits: greedy, or repetition penalty, top-k,
 * top-p, min-p and temperature followed by a seeded draw (llama.cpp's order).
 * Not here: grammar constraints, stop strings (front ends handle those). */
#ifndef MS_SAMPLER_H
#define MS_SAMPLER_H

#include <stdint.h>

#include "moestream.h"

typedef struct ms_sampler ms_sampler;

/* Returns NULL on allocation failure. Free with sampler_free. */
ms_sampler *sampler_new(const ms_sampler_params *p, int n_vocab);
void sampler_free(ms_sampler *s);
/* Picks a token from logits[n_vocab] (not modified). */
int32_t sampler_sample(ms_sampler *s, const float *logits);
/* Records a token in the penalty history (prompt tokens and generated ones). */
void sampler_accept(ms_sampler *s, int32_t token);
/* Clears the penalty history. */
void sampler_reset(ms_sampler *s);

#endif
