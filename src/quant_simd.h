/* quant_simd.h - private seam between quant.c (type table, scalar reference, dispatch), the q16
 * activation format (quant_q16.c) and the per-ISA kernel files: quant_avx2.c, quant_avx512.c
 * (f32 activations) and quant_q16_avx2.c, quant_q16_avx512.c (q16 activations).
 *
 * Not a public header: only quant*.c include it. Each kernel file exports one constant table of
 * kernels indexed by GGML type number, with only its own fields set; quant.c overlays an ISA's
 * two tables on the scalar reference, so a NULL slot means "the scalar kernel for this type".
 *
 * Every kernel has the contract of the matching quant.h entry point: n is a multiple of the
 * type's block size (any n for F32/F16/BF16), weight rows need no alignment, q16 rows 4 bytes.
 * Dequant kernels and the q16 quantizer must produce exactly the scalar reference's bits; dot
 * and matmul kernels may reassociate floats freely (their integer sums are exact).
 *
 * Why exactness is cheap: every weight is an f16 or E8M0 scale (at most 11 significant bits)
 * times one or two small integers (sub-block scale and code: at most 12 significant bits
 * together, e.g. Q6_K's int8 scale times its 6-bit code), plus or minus an offset for the
 * types with mins. The product fits a float's 24 bits, so it is exact in any order and the only
 * rounding is the final add or subtract: a fused multiply-add gives the reference's bits, and
 * so does a table of finished weights per scale. What must match is which products and
 * offsets are formed, and that the offset is applied last.
 */
#ifndef MS_QUANT_SIMD_H
#define MS_QUANT_SIMD_H

#include <stdint.h>

#include "quant.h"

typedef void (*quant_dequant_fn)(const void *src, float *dst, int64_t n);
typedef float (*quant_dot_fn)(const void *row, const float *x, int64_t n);
/* q16 activations (quant.h): quantize a row; dot a weight row with a q16 row; and the matrix
 * product y[t * ldy + r] = dot(row r, x[t]) for r in [r0, r1), t < n_tok, where W's rows are
 * row_bytes apart and x[t] points at token t's q16 row (any order, repeats allowed). */
typedef void (*quant_q16_quantize_fn)(const float *x, int64_t n, void *xq);
typedef float (*quant_dot_q16_fn)(const void *row, const void *xq, int64_t n);
typedef void (*quant_matmul_q16_fn)(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0,
                                    int64_t r1, const void *const *x, int n_tok, float *y,
                                    int64_t ldy);

typedef struct quant_kernels {
    const char *name;                          /* "avx2", "avx512", "scalar" */
    quant_dequant_fn dequant[MS_TYPE_COUNT];   /* indexed by ms_type */
    quant_dot_fn dot[MS_TYPE_COUNT];
    quant_q16_quantize_fn q16_quantize;        /* NULL: the scalar one */
    quant_dot_q16_fn dot_q16[MS_TYPE_COUNT];
    quant_matmul_q16_fn matmul_q16[MS_TYPE_COUNT];
} quant_kernels;

/* The weight types with q16 kernels, as X(type, name) for a file that defines dot_q16_NAME and
 * matmul_q16_NAME for each: Q16_KERNELS makes that file's table (the scalar reference and each
 * ISA have every one of them). */
#define Q16_TYPES(X)                                                                               \
    X(MS_TYPE_Q4_0, q4_0) X(MS_TYPE_Q4_1, q4_1) X(MS_TYPE_Q5_0, q5_0) X(MS_TYPE_Q5_1, q5_1)       \
    X(MS_TYPE_Q8_0, q8_0) X(MS_TYPE_Q2_K, q2_k) X(MS_TYPE_Q3_K, q3_k) X(MS_TYPE_Q4_K, q4_k)       \
    X(MS_TYPE_Q5_K, q5_k) X(MS_TYPE_Q6_K, q6_k) X(MS_TYPE_IQ4_NL, iq4_nl)                         \
    X(MS_TYPE_IQ4_XS, iq4_xs) X(MS_TYPE_MXFP4, mxfp4)
#define Q16_DOT_ENTRY(T, name) [T] = dot_q16_##name,
#define Q16_MM_ENTRY(T, name) [T] = matmul_q16_##name,
#define Q16_KERNELS(isa, quantize)                                                                 \
    {                                                                                              \
        .name = isa, .q16_quantize = quantize, .dot_q16 = {Q16_TYPES(Q16_DOT_ENTRY)},              \
        .matmul_q16 = {Q16_TYPES(Q16_MM_ENTRY)},                                                   \
    }

/* quant_q16.c: the q16 format's scalar reference (only the q16 fields are set). */
extern const quant_kernels quant_q16_kernels_scalar;
#if defined(__x86_64__)
extern const quant_kernels quant_kernels_avx2;   /* quant_avx2.c: AVX2, FMA, F16C */
extern const quant_kernels quant_kernels_avx512; /* quant_avx512.c: F+BW+VL+DQ+VNNI, AVX2 */
/* quant_q16_avx2.c, quant_q16_avx512.c: q16 kernels (only the q16 fields are set). */
extern const quant_kernels quant_q16_kernels_avx2;
extern const quant_kernels quant_q16_kernels_avx512;
#endif

/* ---- q16 row layout (quant.h has the contract) ---------------------------------------------
 * A q16 row of n values (n a multiple of 32) is G = ceil(n / 256) groups of 256 values (the last
 * may be shorter, a multiple of 32), stored as three arrays and padding to 64 bytes:
 *   int16_t q[n]       values, |q| <= 32767: x[i] ~ q[i] * d[i / 256]
 *   float   d[G]       group scales (max |x| / 32767; NaN if the group held an Inf or NaN)
 *   int32_t s[n / 16]  s[k] = sum of q[16k .. 16k + 15], exact
 * The int32 sums serve the weight types with "min" offsets (Q4_K, Q5_K, Q2_K, Q4_1, Q5_1):
 * sum w x = d_w * sum q_w x - m_w * sum x, and sum x over a sub-block is d[g] * s[k]. */
enum { Q16_GROUP = 256, Q16_MAX = 32767 };
/* Groups whose largest |x| is below this quantize to zeros (32767 / max must stay finite). */
#define Q16_TINY 1e-30f
static inline int64_t q16_groups(int64_t n) { return (n + Q16_GROUP - 1) / Q16_GROUP; }
static inline const int16_t *q16_vals(const uint8_t *xq) { return (const int16_t *)xq; }
static inline const float *q16_scales(const uint8_t *xq, int64_t n) {
    return (const float *)(xq + 2 * n);
}
static inline const int32_t *q16_sums(const uint8_t *xq, int64_t n) {
    return (const int32_t *)(xq + 2 * n + 4 * q16_groups(n));
}

/* Little-endian field readers shared by all kernel files (GGUF is little-endian). */
static inline uint16_t quant_rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t quant_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Block sizes of GGML's layouts (ggml-common.h), in bytes, for the kernel loops. */
enum {
    QK_K = 256,          /* values per k-quant super-block */
    QB_Q4_0 = 18,        /* f16 d, 16 B nibbles */
    QB_Q4_1 = 20,        /* f16 d, f16 m, 16 B nibbles */
    QB_Q5_0 = 22,        /* f16 d, 4 B high bits, 16 B nibbles */
    QB_Q5_1 = 24,        /* f16 d, f16 m, 4 B high bits, 16 B nibbles */
    QB_Q8_0 = 34,        /* f16 d, 32 int8 */
    QB_Q2_K = 84,        /* 16 B scales|mins, 64 B 2-bit quants, f16 d, f16 dmin */
    QB_Q3_K = 110,       /* 32 B high-bit mask, 64 B 2-bit quants, 12 B 6-bit scales, f16 d */
    QB_Q4_K = 144,       /* f16 d, f16 dmin, 12 B 6-bit scales|mins, 128 B nibbles */
    QB_Q5_K = 176,       /* f16 d, f16 dmin, 12 B scales|mins, 32 B high bits, 128 B nibbles */
    QB_Q6_K = 210,       /* 128 B low nibbles, 64 B 2-bit highs, 16 int8 scales, f16 d */
    QB_IQ4_NL = 18,      /* f16 d, 16 B nibbles indexing kvalues_iq4nl */
    QB_IQ4_XS = 136,     /* f16 d, u16 scales_h, 4 B scales_l, 128 B nibbles */
    QB_MXFP4 = 17,       /* E8M0 scale byte, 16 B nibbles of E2M1 codes */
};

/* Non-linear 4-bit code books (values as in ggml-common.h). */
extern const int8_t quant_kvalues_iq4nl[16];
/* E2M1 values doubled (0, .5, 1, 1.5, 2, 3, 4, 6 and negatives, times 2): ggml stores them this
 * way and halves the block scale instead, see quant_e8m0_half. */
extern const int8_t quant_kvalues_mxfp4[16];

/* MXFP4 block scale: 2^(e-127) / 2, exactly as ggml_e8m0_to_fp32_half. For e >= 2 that is the
 * normal float with biased exponent e-1; below, the subnormals 2^-128 and 2^-127. */
static inline float quant_e8m0_half(uint8_t e) {
    union { uint32_t u; float f; } v = { e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23 };
    return v.f;
}

/* The six-bit (scale, min) pair j in 0..7 of a Q4_K/Q5_K block's 12 scale bytes. */
static inline void quant_scale_min_k4(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* The sixteen signed six-bit scales of a Q3_K block (already minus 32). */
static inline void quant_scales_q3_k(const uint8_t *s, int8_t out[16]) {
    for (int i = 0; i < 16; i++) {
        int low = (s[i % 8] >> (4 * (i / 8))) & 0xF;
        int high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        out[i] = (int8_t)((low | high << 4) - 32);
    }
}

/* The same scales four to a 32-bit word, for SIMD code to widen (little-endian bytes).
 * Q4_K/Q5_K: out[0], out[1] = sc of sub-blocks 0-3, 4-7; out[2], out[3] = their mins (for
 * j >= 4 the low 4 bits sit in the nibbles of byte j+4, the top 2 in bytes j-4 and j). */
static inline void quant_scale_min_k4_words(const uint8_t *s, uint32_t out[4]) {
    uint32_t w0 = quant_rd32(s), w1 = quant_rd32(s + 4), w2 = quant_rd32(s + 8);
    out[0] = w0 & 0x3F3F3F3F;
    out[1] = (w2 & 0x0F0F0F0F) | ((w0 >> 6) & 0x03030303) << 4;
    out[2] = w1 & 0x3F3F3F3F;
    out[3] = ((w2 >> 4) & 0x0F0F0F0F) | ((w1 >> 6) & 0x03030303) << 4;
}

/* Q3_K: the 16 scales before subtracting 32, as unsigned bytes; the low nibbles come from
 * bytes 0-7 (low nibbles first), the top two bits from bytes 8-11 at shifts 0, 2, 4, 6. */
static inline void quant_scales_q3_k_words(const uint8_t *s, uint32_t out[4]) {
    uint32_t a0 = quant_rd32(s), a1 = quant_rd32(s + 4), t = quant_rd32(s + 8);
    out[0] = (a0 & 0x0F0F0F0F) | (t & 0x03030303) << 4;
    out[1] = (a1 & 0x0F0F0F0F) | ((t >> 2) & 0x03030303) << 4;
    out[2] = ((a0 >> 4) & 0x0F0F0F0F) | ((t >> 4) & 0x03030303) << 4;
    out[3] = ((a1 >> 4) & 0x0F0F0F0F) | ((t >> 6) & 0x03030303) << 4;
}

#endif
