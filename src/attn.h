/* attn.h - the arithmetic of causal attention for a set of query rows that share one key/value
 * head: softmax(q . K^T * scale) . V, as an online softmax over blocks of keys (no query holds
 * more than a block of scores). forward.c decides which rows go together (the heads of a GQA
 * group, a few tokens) and runs the sets in parallel; this file does the sums.
 *
 * attn_rows picks the AVX-512 kernel (attn_avx512.c) when the q16 kernels in use are the
 * AVX-512 ones (quant_isa) and head_dim is a multiple of 16, else attn_rows_ref, the portable
 * reference the kernel is tested against.
 */
#ifndef MS_ATTN_H
#define MS_ATTN_H

#include <stddef.h>

#define ATTN_ROWS 16 /* query rows per call: one 512-bit vector of lanes */
#define ATTN_KB 64   /* keys per block of the online softmax */

/* out[i] = softmax(q[i] . K[p]^T * scale over p < lim[i]) . V for i < n (n <= ATTN_ROWS,
 * lim[i] >= 1). K and V rows are ld floats apart, hd floats each; q[i] and out[i] hold hd floats.
 * scratch: attn_scratch_floats(hd) floats, 64-byte aligned. */
typedef struct attn_rows_args {
    const float *q[ATTN_ROWS];
    float *out[ATTN_ROWS];
    int lim[ATTN_ROWS];
    int n, hd;
    const float *k, *v;
    size_t ld;
    float scale;
    float *scratch;
} attn_rows_args;

size_t attn_scratch_floats(int hd);
void attn_rows(const attn_rows_args *a);
void attn_rows_ref(const attn_rows_args *a);
#if defined(__x86_64__)
void attn_rows_avx512(const attn_rows_args *a);
#endif

#endif
