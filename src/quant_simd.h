/* quant_simd.h - private seam between quant.c (type table, scalar reference, dispatch) and the
 * per-ISA kernel files quant_avx2.c and quant_avx512.c.
 *
 * Not a public header: only quant*.c include it. Each ISA file exports one constant table of
 * row kernels indexed by GGML type number; a NULL slot means "no kernel for this type here" and
 * quant.c falls back to the scalar reference for it.
 *
 * Every kernel has the contract of the matching quant.h entry point: n is a multiple of the
 * type's block size (any n for F32/F16/BF16), rows need no alignment. Dequant kernels must
 * produce exactly the scalar reference's floats; dot kernels may reassociate freely.
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

typedef struct quant_kernels {
    const char *name;                          /* "avx2", "avx512", "scalar" */
    quant_dequant_fn dequant[MS_TYPE_COUNT];   /* indexed by ms_type */
    quant_dot_fn dot[MS_TYPE_COUNT];
} quant_kernels;

#if defined(__x86_64__)
extern const quant_kernels quant_kernels_avx2;   /* quant_avx2.c: AVX2, FMA, F16C */
extern const quant_kernels quant_kernels_avx512; /* quant_avx512.c: F+BW+VL+DQ+VNNI, AVX2 */
#endif

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
