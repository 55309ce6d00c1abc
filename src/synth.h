/* synth.h - synthetic GGUF models of real MoE shapes with random but valid weights, for
 * benchmarks of models larger than RAM (nobody downloads 209 GB to test a cache).
 *
 * Weights are zero-mean (a biased mean makes every hidden state point the same way and every
 * token pick the same experts, which makes any cache look perfect). --skew makes expert
 * popularity Zipf-like per layer through the router, as real routers are skewed. A small
 * byte-level BPE tokenizer is included so `run` works. Not a model of language: output is noise.
 */
#ifndef MS_SYNTH_H
#define MS_SYNTH_H

#include <stdint.h>

#include "util.h"

/* ms_synth_params is in moestream.h (the CLI fills it). */
/* Writes the model to path (a prefix when split). Returns MS_OK or a status with e filled.
 * *bytes_out (may be NULL) gets the bytes of tensor data written. */
int synth_write(const ms_synth_params *p, const char *path, uint64_t *bytes_out, ms_err *e);

/* Comma-separated preset names, and the tensor bytes a preset would take (0 if unknown). */
const char *synth_presets(void);
uint64_t synth_size(const ms_synth_params *p);

#endif
