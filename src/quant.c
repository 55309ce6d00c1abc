/* quant.c - GGML tensor types: the layout table, exact half-precision conversions, the scalar
 * reference dequantization and dot product of every supported type, and the run-time choice
 * of SIMD kernels (quant_avx2.c, quant_avx512.c, and for q16 activations quant_q16_avx2.c,
 * quant_q16_avx512.c), including the q16 entry points.
 *
 * Not here: SIMD code (the ISA files), the q16 format and its reference (quant_q16.c),
 * quantizing weights (moestream only reads them), threads.
 * The reference is written for clarity, one block at a time, following GGML's block layouts
 * (ggml-common.h) and the arithmetic of gguf-py's dequantizers, which made the fixtures: every
 * value is produced with the same float operations in the same order, so dequantization is
 * bit-exact against them. That also fixes what the SIMD dequant kernels must reproduce.
 */
#include "quant.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "quant_simd.h"

/* ---- type table ------------------------------------------------------------------------ */

/* Every GGML type number with a known layout (ggml.c's type_traits). Unsupported ones are
 * listed so the GGUF reader can size their tensors and name them in its error message. */
static const ms_type_info type_table[MS_TYPE_COUNT] = {
    [MS_TYPE_F32] = {"F32", 1, 4, 1},
    [MS_TYPE_F16] = {"F16", 1, 2, 1},
    [MS_TYPE_Q4_0] = {"Q4_0", 32, QB_Q4_0, 1},
    [MS_TYPE_Q4_1] = {"Q4_1", 32, QB_Q4_1, 1},
    [MS_TYPE_Q5_0] = {"Q5_0", 32, QB_Q5_0, 1},
    [MS_TYPE_Q5_1] = {"Q5_1", 32, QB_Q5_1, 1},
    [MS_TYPE_Q8_0] = {"Q8_0", 32, QB_Q8_0, 1},
    /* Q8_1 and Q8_K are llama.cpp's activation formats; no GGUF stores weights in them. */
    [MS_TYPE_Q8_1] = {"Q8_1", 32, 36, 0},
    [MS_TYPE_Q2_K] = {"Q2_K", QK_K, QB_Q2_K, 1},
    [MS_TYPE_Q3_K] = {"Q3_K", QK_K, QB_Q3_K, 1},
    [MS_TYPE_Q4_K] = {"Q4_K", QK_K, QB_Q4_K, 1},
    [MS_TYPE_Q5_K] = {"Q5_K", QK_K, QB_Q5_K, 1},
    [MS_TYPE_Q6_K] = {"Q6_K", QK_K, QB_Q6_K, 1},
    [MS_TYPE_Q8_K] = {"Q8_K", QK_K, 292, 0},
    [16] = {"IQ2_XXS", QK_K, 66, 0},
    [17] = {"IQ2_XS", QK_K, 74, 0},
    [18] = {"IQ3_XXS", QK_K, 98, 0},
    [19] = {"IQ1_S", QK_K, 50, 0},
    [MS_TYPE_IQ4_NL] = {"IQ4_NL", 32, QB_IQ4_NL, 1},
    [21] = {"IQ3_S", QK_K, 110, 0},
    [22] = {"IQ2_S", QK_K, 82, 0},
    [MS_TYPE_IQ4_XS] = {"IQ4_XS", QK_K, QB_IQ4_XS, 1},
    [24] = {"I8", 1, 1, 0},
    [25] = {"I16", 1, 2, 0},
    [26] = {"I32", 1, 4, 0},
    [27] = {"I64", 1, 8, 0},
    [28] = {"F64", 1, 8, 0},
    [29] = {"IQ1_M", QK_K, 56, 0},
    [MS_TYPE_BF16] = {"BF16", 1, 2, 1},
    [34] = {"TQ1_0", QK_K, 54, 0},
    [35] = {"TQ2_0", QK_K, 66, 0},
    [MS_TYPE_MXFP4] = {"MXFP4", 32, QB_MXFP4, 1},
    [40] = {"NVFP4", 64, 36, 0},
    [41] = {"Q1_0", 128, 18, 0},
    [42] = {"Q2_0", 64, 18, 0},
};

const ms_type_info *quant_info(int type) {
    if (type < 0 || type >= MS_TYPE_COUNT || !type_table[type].name) return NULL;
    return &type_table[type];
}

const char *quant_name(int type) {
    /* Per thread, so two threads naming unknown types do not overwrite each other. */
    static _Thread_local char buf[24];
    const ms_type_info *ti = quant_info(type);
    if (ti) return ti->name;
    snprintf(buf, sizeof buf, "type%d", type);
    return buf;
}

size_t quant_row_bytes(int type, int64_t n) {
    const ms_type_info *ti = quant_info(type);
    if (!ti || n < 0 || n % ti->block_size) return 0;
    return (size_t)(n / ti->block_size) * (size_t)ti->block_bytes;
}

/* ---- half precision -------------------------------------------------------------------- */

static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float ms_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    if (exp == 0x1F) {
        /* Inf, or NaN with its payload kept and the quiet bit set, as x86's vcvtph2ps does:
         * the SIMD dequant kernels convert with that instruction and must agree bit for bit. */
        return f32_from_bits(sign | 0x7F800000 | mant << 13 | (mant ? 0x400000 : 0));
    }
    if (exp == 0) {
        if (mant == 0) return f32_from_bits(sign);
        /* Subnormal half mant * 2^-24: normalise, since every one is a normal float. */
        int shift = 0;
        while (!(mant & 0x400)) {
            mant <<= 1;
            shift++;
        }
        return f32_from_bits(sign | (uint32_t)(113 - shift) << 23 | (mant & 0x3FF) << 13);
    }
    return f32_from_bits(sign | (exp + 112) << 23 | mant << 13);
}

uint16_t ms_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7FFFFFFF;
    if (x > 0x7F800000) return sign | 0x7E00 | ((x >> 13) & 0x3FF); /* NaN: quiet, top payload */
    if (x >= 0x477FF000) return sign | 0x7C00; /* >= 65520 rounds to inf (65504 is the max) */
    if (x < 0x38800000) {
        /* Below 2^-14 the result is a subnormal half: round mant * 2^(e-150) to units of 2^-24,
         * nearest-even. Anything below 2^-25 rounds to zero (2^-25 itself ties to even 0). */
        if (x < 0x33000000) return sign;
        uint32_t e = x >> 23, mant = (x & 0x7FFFFF) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q; /* q may round up to 0x400, the smallest normal: correct */
    }
    /* Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even; a carry
     * out of the mantissa correctly bumps the exponent. */
    uint32_t h = ((x >> 23) - 112) << 10 | ((x >> 13) & 0x3FF);
    uint32_t rem = x & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return sign | (uint16_t)h;
}

static inline float rd_f16(const uint8_t *p) { return ms_f16_to_f32(quant_rd16(p)); }

/* ---- code books and block decoders ------------------------------------------------------ */

const int8_t quant_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                         1,    13,   25,  38,  53,  69,  89,  113};
const int8_t quant_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* Each decoder writes one block's block_size floats, with gguf-py's expressions (e.g.
 * (d * sc) * q - dmin * m). The products are exact (quant_simd.h says why); the final add or
 * subtract is the one rounding, so that is what must match. */

static void block_q4_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((qs[j] & 0xF) - 8);
        y[j + 16] = d * (float)((qs[j] >> 4) - 8);
    }
}

static void block_q4_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(qs[j] & 0xF) + m;
        y[j + 16] = d * (float)(qs[j] >> 4) + m;
    }
}

/* Q5_0/Q5_1: bit j of the 32-bit qh is the fifth bit of value j (values 0..15 take the low
 * nibbles, 16..31 the high nibbles). */
static void block_q5_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    uint32_t qh = quant_rd32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0xF) | ((qh >> j) & 1) << 4;
        int hi = (qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (float)(lo - 16);
        y[j + 16] = d * (float)(hi - 16);
    }
}

static void block_q5_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    uint32_t qh = quant_rd32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0xF) | ((qh >> j) & 1) << 4;
        int hi = (qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (float)lo + m;
        y[j + 16] = d * (float)hi + m;
    }
}

static void block_q8_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
}

/* Q2_K and Q3_K share a shape: 256 values = 2 halves of 128; in half h, 2-bit group g (0..3)
 * of byte qs[32h + l] is value 128h + 32g + l, and each 16 values have their own scale. */
static void block_q2_k(const uint8_t *b, float *y) {
    const uint8_t *scales = b, *qs = b + 16;
    float d = rd_f16(b + 80), dmin = rd_f16(b + 82);
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        uint8_t sc = scales[i / 16];
        float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
        int q = (qs[32 * h + l] >> (2 * g)) & 3;
        y[i] = dl * (float)q - ml;
    }
}

static void block_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hmask = b, *qs = b + 32;
    float d = rd_f16(b + 108);
    int8_t sc[16];
    quant_scales_q3_k(b + 96, sc);
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        int q = (qs[32 * h + l] >> (2 * g)) & 3;
        /* A clear high bit means "minus 4": the quant is 3 bits with offset 4. */
        if (!(hmask[l] >> (4 * h + g) & 1)) q -= 4;
        float dl = d * (float)sc[i / 16];
        y[i] = dl * (float)q;
    }
}

/* Q4_K/Q5_K: 8 sub-blocks of 32; chunk c (0..3) of 32 bytes holds sub-block 2c in its low
 * nibbles and 2c+1 in its high nibbles. */
static void block_q4_k(const uint8_t *b, float *y) {
    float d = rd_f16(b), dmin = rd_f16(b + 2);
    const uint8_t *scales = b + 4, *qs = b + 16;
    for (int s = 0; s < 8; s++) {
        int sc, m;
        quant_scale_min_k4(scales, s, &sc, &m);
        float ds = d * (float)sc, ms = dmin * (float)m;
        const uint8_t *q = qs + 32 * (s / 2);
        int shift = 4 * (s % 2);
        for (int l = 0; l < 32; l++) y[32 * s + l] = ds * (float)((q[l] >> shift) & 0xF) - ms;
    }
}

static void block_q5_k(const uint8_t *b, float *y) {
    float d = rd_f16(b), dmin = rd_f16(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
    for (int s = 0; s < 8; s++) {
        int sc, m;
        quant_scale_min_k4(scales, s, &sc, &m);
        float ds = d * (float)sc, ms = dmin * (float)m;
        const uint8_t *q = qs + 32 * (s / 2);
        int shift = 4 * (s % 2);
        for (int l = 0; l < 32; l++) {
            int v = ((q[l] >> shift) & 0xF) | ((qh[l] >> s) & 1) << 4;
            y[32 * s + l] = ds * (float)v - ms;
        }
    }
}

/* Q6_K: halves of 128; in half h, value 128h + 32g + l (g 0..3, l 0..31) is 4 low bits from ql
 * and 2 high bits from qh[32h + l] at shift 2g, offset by 32; each 16 values have an int8 scale. */
static void block_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rd_f16(b + 208);
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        /* g = 0, 1 use the low nibbles of ql[64h + l] and ql[64h + 32 + l]; g = 2, 3 the high. */
        int low = (ql[64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0xF;
        int high = (qh[32 * h + l] >> (2 * g)) & 3;
        float ds = d * (float)sc[i / 16];
        y[i] = ds * (float)((low | high << 4) - 32);
    }
}

static void block_iq4_nl(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)quant_kvalues_iq4nl[qs[j] & 0xF];
        y[j + 16] = d * (float)quant_kvalues_iq4nl[qs[j] >> 4];
    }
}

/* IQ4_XS: 8 sub-blocks of 32, each an IQ4_NL block whose scale is a 6-bit signed multiple of
 * the super-block's d (low 4 bits in scales_l nibbles, high 2 bits in scales_h). */
static void block_iq4_xs(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    uint16_t scales_h = quant_rd16(b + 2);
    const uint8_t *scales_l = b + 4, *qs = b + 8;
    for (int s = 0; s < 8; s++) {
        int ls = ((scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | ((scales_h >> (2 * s)) & 3) << 4;
        float dl = d * (float)(ls - 32);
        const uint8_t *q = qs + 16 * s;
        for (int j = 0; j < 16; j++) {
            y[32 * s + j] = dl * (float)quant_kvalues_iq4nl[q[j] & 0xF];
            y[32 * s + j + 16] = dl * (float)quant_kvalues_iq4nl[q[j] >> 4];
        }
    }
}

static void block_mxfp4(const uint8_t *b, float *y) {
    float d = quant_e8m0_half(b[0]);
    const uint8_t *qs = b + 1;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)quant_kvalues_mxfp4[qs[j] & 0xF];
        y[j + 16] = d * (float)quant_kvalues_mxfp4[qs[j] >> 4];
    }
}

typedef void (*block_fn)(const uint8_t *b, float *y);

static const block_fn block_decoders[MS_TYPE_COUNT] = {
    [MS_TYPE_Q4_0] = block_q4_0,     [MS_TYPE_Q4_1] = block_q4_1,
    [MS_TYPE_Q5_0] = block_q5_0,     [MS_TYPE_Q5_1] = block_q5_1,
    [MS_TYPE_Q8_0] = block_q8_0,     [MS_TYPE_Q2_K] = block_q2_k,
    [MS_TYPE_Q3_K] = block_q3_k,     [MS_TYPE_Q4_K] = block_q4_k,
    [MS_TYPE_Q5_K] = block_q5_k,     [MS_TYPE_Q6_K] = block_q6_k,
    [MS_TYPE_IQ4_NL] = block_iq4_nl, [MS_TYPE_IQ4_XS] = block_iq4_xs,
    [MS_TYPE_MXFP4] = block_mxfp4,
};

/* ---- scalar row kernels ----------------------------------------------------------------- */

/* The float types are one value per "block": plain loops, summed left to right. */
static void dequant_f32(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}
static void dequant_f16(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = rd_f16(p + 2 * i);
}
static void dequant_bf16(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = ms_bf16_to_f32(quant_rd16(p + 2 * i));
}

static float dot_f32(const void *row, const float *x, int64_t n) {
    const uint8_t *p = row;
    float s = 0;
    for (int64_t i = 0; i < n; i++) {
        float w;
        memcpy(&w, p + 4 * i, sizeof w); /* rows of a mapped file need not be 4-aligned */
        s += w * x[i];
    }
    return s;
}
static float dot_f16(const void *row, const float *x, int64_t n) {
    const uint8_t *p = row;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += rd_f16(p + 2 * i) * x[i];
    return s;
}
static float dot_bf16(const void *row, const float *x, int64_t n) {
    const uint8_t *p = row;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += ms_bf16_to_f32(quant_rd16(p + 2 * i)) * x[i];
    return s;
}

/* Block types: decode a block, dot it in float, add the block's sum to the row's. The
 * generic shape costs a call per block; it is the oracle and the non-x86 fallback. */
#define SCALAR_BLOCK_KERNELS(name, TYPE)                                                      \
    static void dequant_##name(const void *src, float *dst, int64_t n) {                    \
        const ms_type_info *ti = &type_table[TYPE];                                         \
        const uint8_t *b = src;                                                             \
        for (int64_t i = 0; i < n; i += ti->block_size, b += ti->block_bytes)               \
            block_decoders[TYPE](b, dst + i);                                               \
    }                                                                                       \
    static float dot_##name(const void *row, const float *x, int64_t n) {                   \
        const ms_type_info *ti = &type_table[TYPE];                                         \
        const uint8_t *b = row;                                                             \
        float w[QK_K], sum = 0;                                                             \
        for (int64_t i = 0; i < n; i += ti->block_size, b += ti->block_bytes) {            \
            block_decoders[TYPE](b, w);                                                     \
            float bs = 0;                                                                   \
            for (int j = 0; j < ti->block_size; j++) bs += w[j] * x[i + j];                 \
            sum += bs;                                                                      \
        }                                                                                   \
        return sum;                                                                         \
    }

SCALAR_BLOCK_KERNELS(q4_0, MS_TYPE_Q4_0)
SCALAR_BLOCK_KERNELS(q4_1, MS_TYPE_Q4_1)
SCALAR_BLOCK_KERNELS(q5_0, MS_TYPE_Q5_0)
SCALAR_BLOCK_KERNELS(q5_1, MS_TYPE_Q5_1)
SCALAR_BLOCK_KERNELS(q8_0, MS_TYPE_Q8_0)
SCALAR_BLOCK_KERNELS(q2_k, MS_TYPE_Q2_K)
SCALAR_BLOCK_KERNELS(q3_k, MS_TYPE_Q3_K)
SCALAR_BLOCK_KERNELS(q4_k, MS_TYPE_Q4_K)
SCALAR_BLOCK_KERNELS(q5_k, MS_TYPE_Q5_K)
SCALAR_BLOCK_KERNELS(q6_k, MS_TYPE_Q6_K)
SCALAR_BLOCK_KERNELS(iq4_nl, MS_TYPE_IQ4_NL)
SCALAR_BLOCK_KERNELS(iq4_xs, MS_TYPE_IQ4_XS)
SCALAR_BLOCK_KERNELS(mxfp4, MS_TYPE_MXFP4)

#define K(T, name) [T] = name
static const quant_kernels kernels_scalar = {
    .name = "scalar",
    .dequant = {K(MS_TYPE_F32, dequant_f32), K(MS_TYPE_F16, dequant_f16),
                K(MS_TYPE_BF16, dequant_bf16), K(MS_TYPE_Q4_0, dequant_q4_0),
                K(MS_TYPE_Q4_1, dequant_q4_1), K(MS_TYPE_Q5_0, dequant_q5_0),
                K(MS_TYPE_Q5_1, dequant_q5_1), K(MS_TYPE_Q8_0, dequant_q8_0),
                K(MS_TYPE_Q2_K, dequant_q2_k), K(MS_TYPE_Q3_K, dequant_q3_k),
                K(MS_TYPE_Q4_K, dequant_q4_k), K(MS_TYPE_Q5_K, dequant_q5_k),
                K(MS_TYPE_Q6_K, dequant_q6_k), K(MS_TYPE_IQ4_NL, dequant_iq4_nl),
                K(MS_TYPE_IQ4_XS, dequant_iq4_xs), K(MS_TYPE_MXFP4, dequant_mxfp4)},
    .dot = {K(MS_TYPE_F32, dot_f32), K(MS_TYPE_F16, dot_f16), K(MS_TYPE_BF16, dot_bf16),
            K(MS_TYPE_Q4_0, dot_q4_0), K(MS_TYPE_Q4_1, dot_q4_1), K(MS_TYPE_Q5_0, dot_q5_0),
            K(MS_TYPE_Q5_1, dot_q5_1), K(MS_TYPE_Q8_0, dot_q8_0), K(MS_TYPE_Q2_K, dot_q2_k),
            K(MS_TYPE_Q3_K, dot_q3_k), K(MS_TYPE_Q4_K, dot_q4_k), K(MS_TYPE_Q5_K, dot_q5_k),
            K(MS_TYPE_Q6_K, dot_q6_k), K(MS_TYPE_IQ4_NL, dot_iq4_nl),
            K(MS_TYPE_IQ4_XS, dot_iq4_xs), K(MS_TYPE_MXFP4, dot_mxfp4)},
};
#undef K

/* 1 if the type has reference kernels and n is a whole number of its blocks. */
static int row_ok(int type, int64_t n) {
    const ms_type_info *ti = quant_info(type);
    return ti && ti->supported && n >= 0 && n % ti->block_size == 0;
}

void quant_dequant_ref(int type, const void *src, float *dst, int64_t n) {
    assert(row_ok(type, n));
    if (!row_ok(type, n)) {
        for (int64_t i = 0; i < n; i++) dst[i] = NAN; /* release builds: poison, not crash */
        return;
    }
    kernels_scalar.dequant[type](src, dst, n);
}

float quant_dot_ref(int type, const void *row, const float *x, int64_t n) {
    assert(row_ok(type, n));
    if (!row_ok(type, n)) return NAN;
    return kernels_scalar.dot[type](row, x, n);
}

/* ---- dispatch --------------------------------------------------------------------------- */

/* The kernel sets this CPU can run, each completed with scalar entries where the ISA file has
 * no kernel, and the one in use. Filled once by quant_init; until then calls use the scalar
 * set, which is correct, only slow. */
enum { ISA_SCALAR, ISA_AVX2, ISA_AVX512, ISA_COUNT };
static quant_kernels isa_tables[ISA_COUNT];
static int isa_available[ISA_COUNT];
static const quant_kernels *active = &kernels_scalar;

/* Overlays the kernels a (partial) table has on dst. */
static void merge_kernels(quant_kernels *dst, const quant_kernels *simd) {
    dst->name = simd->name;
    if (simd->q16_quantize) dst->q16_quantize = simd->q16_quantize;
    for (int t = 0; t < MS_TYPE_COUNT; t++) {
        if (simd->dequant[t]) dst->dequant[t] = simd->dequant[t];
        if (simd->dot[t]) dst->dot[t] = simd->dot[t];
        if (simd->dot_q16[t]) dst->dot_q16[t] = simd->dot_q16[t];
        if (simd->matmul_q16[t]) dst->matmul_q16[t] = simd->matmul_q16[t];
    }
}

/* A full kernel set: the scalar reference overlaid with an ISA's f32 and q16 tables. */
static void build_kernels(quant_kernels *dst, const quant_kernels *f32, const quant_kernels *q16) {
    *dst = kernels_scalar;
    merge_kernels(dst, &quant_q16_kernels_scalar);
    if (f32) merge_kernels(dst, f32);
    if (q16) merge_kernels(dst, q16);
}

void quant_init(void) {
    static int done;
    if (done) return;
    build_kernels(&isa_tables[ISA_SCALAR], NULL, NULL);
    isa_available[ISA_SCALAR] = 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        build_kernels(&isa_tables[ISA_AVX2], &quant_kernels_avx2, &quant_q16_kernels_avx2);
        isa_available[ISA_AVX2] = 1;
    }
    /* VNNI too: the Makefile lets the compiler use it anywhere in the *_avx512.c files, and the
     * q16 kernels are built on it (vpdpwssd). */
    if (isa_available[ISA_AVX2] && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni")) {
        build_kernels(&isa_tables[ISA_AVX512], &quant_kernels_avx512, &quant_q16_kernels_avx512);
        isa_available[ISA_AVX512] = 1;
    }
#endif
    int best = isa_available[ISA_AVX512] ? ISA_AVX512 : isa_available[ISA_AVX2] ? ISA_AVX2 : 0;
    active = &isa_tables[best];
    done = 1;
}

const char *quant_isa(void) { return active->name; }

int quant_force_isa(const char *name) {
    quant_init();
    for (int i = 0; i < ISA_COUNT; i++) {
        if (isa_available[i] && strcmp(isa_tables[i].name, name) == 0) {
            active = &isa_tables[i];
            return 0;
        }
    }
    return -1;
}

void quant_dequant(int type, const void *src, float *dst, int64_t n) {
    assert(row_ok(type, n));
    if (!row_ok(type, n)) {
        quant_dequant_ref(type, src, dst, n);
        return;
    }
    active->dequant[type](src, dst, n);
}

float quant_dot(int type, const void *row, const float *x, int64_t n) {
    assert(row_ok(type, n));
    if (!row_ok(type, n)) return NAN;
    return active->dot[type](row, x, n);
}

void quant_matvec(int type, const void *w, size_t row_bytes, const float *x, float *y,
                  int64_t n, int64_t r0, int64_t r1) {
    assert(row_ok(type, n));
    if (!row_ok(type, n)) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return;
    }
    /* One row at a time: x (a few KiB) stays in L1 while the weights stream through once,
     * which is what bounds decode speed. */
    quant_dot_fn dot = active->dot[type];
    const uint8_t *p = (const uint8_t *)w + (size_t)r0 * row_bytes;
    for (int64_t r = r0; r < r1; r++, p += row_bytes) y[r] = dot(p, x, n);
}

/* ---- q16 activations -------------------------------------------------------------------- */

/* The kernel in use, or the scalar one before quant_init (kernels_scalar has no q16 entries). */
static const quant_kernels *q16_kernels(void) {
    return active->dot_q16[MS_TYPE_Q4_K] ? active : &quant_q16_kernels_scalar;
}

/* 1 if the type has q16 kernels and n is a whole number of its blocks. */
static int q16_ok(int type, int64_t n) { return quant_has_q16(type) && row_ok(type, n); }

void quant_q16_quantize(const float *x, int64_t n, void *xq) {
    assert(n >= 0 && n % 32 == 0);
    q16_kernels()->q16_quantize(x, n, xq);
}

float quant_dot_q16(int type, const void *row, const void *xq, int64_t n) {
    assert(q16_ok(type, n));
    if (!q16_ok(type, n)) return NAN;
    return q16_kernels()->dot_q16[type](row, xq, n);
}

void quant_matvec_q16(int type, const void *w, size_t row_bytes, const void *xq, float *y,
                      int64_t n, int64_t r0, int64_t r1) {
    assert(q16_ok(type, n));
    if (!q16_ok(type, n)) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return;
    }
    q16_kernels()->matmul_q16[type](w, row_bytes, n, r0, r1, &xq, 1, y, 1);
}

void quant_matmul_q16_rows(int type, const void *w, size_t row_bytes, int64_t n_in, int64_t r0,
                           int64_t r1, const void *const *xq_rows, int n_tok, float *y,
                           int64_t ldy) {
    assert(q16_ok(type, n_in));
    if (!q16_ok(type, n_in)) {
        for (int t = 0; t < n_tok; t++)
            for (int64_t r = r0; r < r1; r++) y[t * ldy + r] = NAN;
        return;
    }
    q16_kernels()->matmul_q16[type](w, row_bytes, n_in, r0, r1, xq_rows, n_tok, y, ldy);
}

void quant_matmul_q16(int type, const void *w, size_t row_bytes, int64_t n_in, int64_t r0,
                      int64_t r1, const void *xq, int n_tok, float *y, int64_t ldy) {
    /* Token rows as pointers, a batch at a time: the kernels take gathered rows, and reuse each
     * block of weight rows for all tokens of a call, so batches are large. */
    enum { BATCH = 512 };
    const void *rows[BATCH];
    size_t stride = quant_q16_bytes(n_in);
    for (int t0 = 0; t0 < n_tok; t0 += BATCH) {
        int nt = n_tok - t0 < BATCH ? n_tok - t0 : BATCH;
        for (int t = 0; t < nt; t++) rows[t] = (const uint8_t *)xq + (size_t)(t0 + t) * stride;
        quant_matmul_q16_rows(type, w, row_bytes, n_in, r0, r1, rows, nt, y + t0 * ldy, ldy);
    }
}
