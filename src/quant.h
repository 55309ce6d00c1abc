/* quant.h - GGML tensor types: block layouts, scalar reference dequantization and dot products,
 * and the run-time dispatched SIMD kernels (AVX2 / AVX-512) that are tested against them.
 *
 * Not here: which tensor is which (model.c), threading (threads.c), matrix shapes beyond one
 * row. Type numbers are GGML's, as stored in GGUF tensor infos.
 *
 * Glossary: a row of n values is n / block_size blocks of block_bytes bytes each.
 */
#ifndef MS_QUANT_H
#define MS_QUANT_H

#include <stddef.h>
#include <stdint.h>

typedef enum ms_type {
    MS_TYPE_F32 = 0,
    MS_TYPE_F16 = 1,
    MS_TYPE_Q4_0 = 2,
    MS_TYPE_Q4_1 = 3,
    MS_TYPE_Q5_0 = 6,
    MS_TYPE_Q5_1 = 7,
    MS_TYPE_Q8_0 = 8,
    MS_TYPE_Q8_1 = 9,
    MS_TYPE_Q2_K = 10,
    MS_TYPE_Q3_K = 11,
    MS_TYPE_Q4_K = 12,
    MS_TYPE_Q5_K = 13,
    MS_TYPE_Q6_K = 14,
    MS_TYPE_Q8_K = 15,
    MS_TYPE_IQ4_NL = 20,
    MS_TYPE_IQ4_XS = 23,
    MS_TYPE_BF16 = 30,
    MS_TYPE_MXFP4 = 39,
    MS_TYPE_COUNT = 43, /* GGML's count: type numbers are below this */
} ms_type;

typedef struct ms_type_info {
    const char *name;  /* "Q4_K" */
    int block_size;    /* values per block */
    int block_bytes;   /* bytes per block */
    int supported;     /* 1 if dequant/dot are implemented */
} ms_type_info;

/* Layout of a type, or NULL if the number is not a GGML type this build knows (even by name). */
const ms_type_info *quant_info(int type);
/* Name of a type number ("Q4_K"), or "type<N>" in a static buffer for unknown numbers. */
const char *quant_name(int type);
/* Bytes of a row of n values; 0 if n is not a multiple of the block size or type unknown. */
size_t quant_row_bytes(int type, int64_t n);

/* Scalar reference paths (the oracle every faster path is tested against).
 * n must be a multiple of the type's block size. */
void quant_dequant_ref(int type, const void *src, float *dst, int64_t n);
float quant_dot_ref(int type, const void *row, const float *x, int64_t n);

/* Fastest available path for this CPU, chosen once at quant_init (idempotent, thread-safe to
 * call before threads start). Results equal the reference within float rounding. */
void quant_init(void);
void quant_dequant(int type, const void *src, float *dst, int64_t n);
float quant_dot(int type, const void *row, const float *x, int64_t n);

/* y[r] = dot(row r of W, x) for r in [r0, r1). W rows are row_bytes apart. */
void quant_matvec(int type, const void *w, size_t row_bytes, const float *x, float *y,
                  int64_t n, int64_t r0, int64_t r1);

/* Name of the kernel set in use: "avx512", "avx2" or "scalar" (q16 kernels included). */
const char *quant_isa(void);
/* Forces a kernel set ("scalar", "avx2", "avx512") for tests; returns 0, or -1 if unavailable. */
int quant_force_isa(const char *name);

/* ---- 16-bit activations ("q16") for integer dot products ----------------------------------
 * An f32 activation row is quantized once to int16 values with one float scale per group of 256
 * values (max |x| / 32767, so |x - q * d| <= d / 2: about 1.5e-5 of the group's largest value),
 * plus exact int32 sums per 16 values for the weight types whose blocks carry a "min" offset.
 * Weight codes times those int16 values are then summed exactly in int32 per (sub-)block
 * (AVX512-VNNI vpdpwssd, AVX2 vpmaddwd) and scaled in float, instead of dequantizing weights to
 * f32 (bench/bench_quant.c measures both). The f32 paths above stay the reference these are
 * tested against; a q16 dot differs from the f32 one by at most sum |w_i| * d / 2 (d the q16
 * scale of x_i), which tests/test_quant.c checks.
 *
 * Types: quant_has_q16 says which (the quantized block types; F32, F16 and BF16 weights stay on
 * the f32 path). Row length n: a multiple of the weight type's block size (32 or 256), and the
 * same n must be used to quantize the activation. q16 rows need 4-byte alignment (64 is best);
 * quant_q16_bytes is a multiple of 64, so rows of a batch laid end to end stay aligned. The
 * layout is private (quant_simd.h); only quant_q16_dequant reads it back. */

/* Bytes of one q16 row of n values (n a multiple of 32), a multiple of 64; 0 if n is not. */
size_t quant_q16_bytes(int64_t n);
/* Quantizes x[0..n) into xq (quant_q16_bytes(n) bytes, padding zeroed). A group holding an
 * Inf or NaN gets a NaN scale, so every dot with it is NaN, as on the f32 path; a group whose
 * largest |x| is below 1e-30 becomes zeros. The dispatched one equals the reference bit for bit. */
void quant_q16_quantize_ref(const float *x, int64_t n, void *xq);
void quant_q16_quantize(const float *x, int64_t n, void *xq);
/* The values a q16 row stands for: x[i] = q[i] * d[i / 256] (exact products). For tests. */
void quant_q16_dequant(const void *xq, float *x, int64_t n);

/* 1 if the type has q16 kernels. */
int quant_has_q16(int type);
/* dot(row of W, q16 row): the scalar reference (exact integer sums per block, float across
 * blocks), and the dispatched kernel, which differs from it only by float rounding. */
float quant_dot_q16_ref(int type, const void *row, const void *xq, int64_t n);
float quant_dot_q16(int type, const void *row, const void *xq, int64_t n);
/* y[r] = dot(row r of W, xq) for r in [r0, r1); W rows row_bytes apart. For decode. */
void quant_matvec_q16(int type, const void *w, size_t row_bytes, const void *xq, float *y,
                      int64_t n, int64_t r0, int64_t r1);
/* y[t * ldy + r] = dot(row r of W, token t) for r in [r0, r1), t < n_tok, where token t's q16
 * row is at xq + t * quant_q16_bytes(n_in). Each weight block is decoded once per pass of up to
 * 8 tokens and reused from registers (about twice matvec's speed per token from 8 tokens on,
 * on AVX-512). Results equal quant_dot_q16 up to float summation order. For prefill and batched
 * experts; n_tok == 1 is quant_matvec_q16. */
void quant_matmul_q16(int type, const void *w, size_t row_bytes, int64_t n_in, int64_t r0,
                      int64_t r1, const void *xq, int n_tok, float *y, int64_t ldy);
/* The same with token t's q16 row at xq_rows[t] (rows gathered from anywhere, e.g. the tokens
 * routed to one expert). */
void quant_matmul_q16_rows(int type, const void *w, size_t row_bytes, int64_t n_in, int64_t r0,
                           int64_t r1, const void *const *xq_rows, int n_tok, float *y,
                           int64_t ldy);

/* Half-precision conversions, exact. */
float ms_f16_to_f32(uint16_t h);
uint16_t ms_f32_to_f16(float f);
static inline float ms_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

#endif
