/* quant_avx512.c - AVX-512 row kernels (dequantize, dot with f32 activations) for every type
 * quant.c supports. Compiled with -mavx512f/bw/vl/dq/vnni -mavx2 -mfma -mf16c and called only
 * when quant_init found those on the CPU.
 *
 * Not here: dispatch and the scalar reference (quant.c), which these kernels are tested
 * against (tests/test_quant.c). Layout comments live with the reference decoders in quant.c.
 *
 * Shape: each type has one decoder that turns a block, or a 64-value chunk of a 256-value
 * block, into 16-float vectors of weights; dequant stores them and dot multiplies them into
 * four independent accumulators (an FMA's latency is four of its issue slots). Dequant is
 * bit-exact (see quant_simd.h for why a fused multiply-add keeps it so). 4-bit codes go through
 * a 16-entry table of finished weights per (sub-)block (vpermps): one shuffle per 16 weights
 * instead of convert, multiply and subtract, which measured faster for Q4_K. Q5_K's 32-entry
 * version (vpermt2ps) did not, so its codes are converted (Q5_0/Q5_1 keep the 32-entry table).
 */
#include <immintrin.h>
#include <string.h>

#include "quant_simd.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static inline float f16_at(const uint8_t *p) { return _cvtsh_ss(quant_rd16(p)); }

/* 16 bytes zero-extended into 16 int32 lanes. */
static inline __m512i bytes16(const uint8_t *p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

static inline __m512 iota_lo(void) {
    return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
static inline __m512 iota_hi(void) {
    return _mm512_setr_ps(16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
}
static inline __m512 kvalues_f(const int8_t kv[16]) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)kv)));
}

/* Looks up the low 4 bits of each lane of idx in a 16-entry table. */
static inline __m512 lut16(__m512i idx, __m512 table) { return _mm512_permutexvar_ps(idx, table); }
/* Looks up the low 5 bits of each lane of idx in a 32-entry table held in lo (0..15), hi. */
static inline __m512 lut32(__m512i idx, __m512 lo, __m512 hi) {
    return _mm512_permutex2var_ps(lo, idx, hi);
}
/* Sets bit 4 (value 16) of the lanes selected by k: the fifth bit of 5-bit quants. */
static inline __m512i or16(__m512i v, __mmask16 k) {
    return _mm512_mask_or_epi32(v, k, v, _mm512_set1_epi32(16));
}

static inline float hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* ---- float types (n need not be a multiple of 16: masked tails) -------------------------- */

static inline __m512 load_f16(const uint8_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline __m512 load_f16_part(const uint8_t *p, __mmask16 k) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}
static inline __m512 bf16_widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline __m512 load_bf16(const uint8_t *p) {
    return bf16_widen(_mm256_loadu_si256((const __m256i *)p));
}
static inline __m512 load_bf16_part(const uint8_t *p, __mmask16 k) {
    return bf16_widen(_mm256_maskz_loadu_epi16(k, p));
}
static inline __m512 load_f32(const uint8_t *p) { return _mm512_loadu_ps((const float *)p); }
static inline __m512 load_f32_part(const uint8_t *p, __mmask16 k) {
    return _mm512_maskz_loadu_ps(k, (const float *)p);
}

/* One generic body per float type, instantiated with its loader and element size. */
#define FLOAT_KERNELS(name, ESIZE, load, load_part)                                           \
    static float dot_##name(const void *row, const float *x, int64_t n) {                    \
        const uint8_t *w = row;                                                              \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                          \
        int64_t i = 0;                                                                       \
        for (; i + 64 <= n; i += 64) {                                                       \
            for (int l = 0; l < 64 * ESIZE; l += 64) /* as the q16 kernels: stream ahead */    \
                _mm_prefetch((const char *)(w + ESIZE * i + 2048 + l), _MM_HINT_T0);           \
            a0 = _mm512_fmadd_ps(load(w + ESIZE * i), _mm512_loadu_ps(x + i), a0);           \
            a1 = _mm512_fmadd_ps(load(w + ESIZE * (i + 16)), _mm512_loadu_ps(x + i + 16), a1); \
            a2 = _mm512_fmadd_ps(load(w + ESIZE * (i + 32)), _mm512_loadu_ps(x + i + 32), a2); \
            a3 = _mm512_fmadd_ps(load(w + ESIZE * (i + 48)), _mm512_loadu_ps(x + i + 48), a3); \
        }                                                                                    \
        for (; i + 16 <= n; i += 16)                                                         \
            a0 = _mm512_fmadd_ps(load(w + ESIZE * i), _mm512_loadu_ps(x + i), a0);           \
        if (i < n) {                                                                         \
            __mmask16 k = (__mmask16)((1u << (n - i)) - 1);                                  \
            a1 = _mm512_fmadd_ps(load_part(w + ESIZE * i, k), _mm512_maskz_loadu_ps(k, x + i), \
                                 a1);                                                        \
        }                                                                                    \
        return hsum4(a0, a1, a2, a3);                                                        \
    }                                                                                        \
    static void dequant_##name(const void *src, float *dst, int64_t n) {                    \
        const uint8_t *w = src;                                                              \
        int64_t i = 0;                                                                       \
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load(w + ESIZE * i));         \
        if (i < n) {                                                                         \
            __mmask16 k = (__mmask16)((1u << (n - i)) - 1);                                  \
            _mm512_mask_storeu_ps(dst + i, k, load_part(w + ESIZE * i, k));                  \
        }                                                                                    \
    }

FLOAT_KERNELS(f32, 4, load_f32, load_f32_part)
FLOAT_KERNELS(f16, 2, load_f16, load_f16_part)
FLOAT_KERNELS(bf16, 2, load_bf16, load_bf16_part)

/* ---- 32-value blocks: decoders give w[0] = values 0..15, w[1] = 16..31 ------------------- */

static inline void dec_q4_0(const uint8_t *b, __m512 w[2]) {
    __m512 table = _mm512_mul_ps(_mm512_set1_ps(f16_at(b)),
                                 _mm512_sub_ps(iota_lo(), _mm512_set1_ps(8))); /* d * (q - 8) */
    __m512i v = bytes16(b + 2);
    w[0] = lut16(v, table);
    w[1] = lut16(_mm512_srli_epi32(v, 4), table);
}

static inline void dec_q4_1(const uint8_t *b, __m512 w[2]) {
    __m512 table = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(f16_at(b)), iota_lo()),
                                 _mm512_set1_ps(f16_at(b + 2))); /* d * q + m */
    __m512i v = bytes16(b + 4);
    w[0] = lut16(v, table);
    w[1] = lut16(_mm512_srli_epi32(v, 4), table);
}

static inline void dec_q5_0(const uint8_t *b, __m512 w[2]) {
    __m512 d = _mm512_set1_ps(f16_at(b)), sixteen = _mm512_set1_ps(16);
    __m512 lo = _mm512_mul_ps(d, _mm512_sub_ps(iota_lo(), sixteen)); /* d * (q - 16), q < 16 */
    __m512 hi = _mm512_mul_ps(d, _mm512_sub_ps(iota_hi(), sixteen));
    uint32_t qh = quant_rd32(b + 2);
    __m512i v = bytes16(b + 6);
    w[0] = lut32(or16(_mm512_and_si512(v, _mm512_set1_epi32(15)), (__mmask16)qh), lo, hi);
    w[1] = lut32(or16(_mm512_srli_epi32(v, 4), (__mmask16)(qh >> 16)), lo, hi);
}

static inline void dec_q5_1(const uint8_t *b, __m512 w[2]) {
    __m512 d = _mm512_set1_ps(f16_at(b)), m = _mm512_set1_ps(f16_at(b + 2));
    __m512 lo = _mm512_add_ps(_mm512_mul_ps(d, iota_lo()), m); /* d * q + m */
    __m512 hi = _mm512_add_ps(_mm512_mul_ps(d, iota_hi()), m);
    uint32_t qh = quant_rd32(b + 4);
    __m512i v = bytes16(b + 8);
    w[0] = lut32(or16(_mm512_and_si512(v, _mm512_set1_epi32(15)), (__mmask16)qh), lo, hi);
    w[1] = lut32(or16(_mm512_srli_epi32(v, 4), (__mmask16)(qh >> 16)), lo, hi);
}

static inline void dec_q8_0(const uint8_t *b, __m512 w[2]) {
    __m512 d = _mm512_set1_ps(f16_at(b));
    const __m128i *q = (const __m128i *)(b + 2);
    w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))), d);
    w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1))), d);
}

static inline void dec_iq4_nl(const uint8_t *b, __m512 w[2]) {
    __m512 table = _mm512_mul_ps(_mm512_set1_ps(f16_at(b)), kvalues_f(quant_kvalues_iq4nl));
    __m512i v = bytes16(b + 2);
    w[0] = lut16(v, table);
    w[1] = lut16(_mm512_srli_epi32(v, 4), table);
}

static inline void dec_mxfp4(const uint8_t *b, __m512 w[2]) {
    __m512 table = _mm512_mul_ps(_mm512_set1_ps(quant_e8m0_half(b[0])),
                                 kvalues_f(quant_kvalues_mxfp4));
    __m512i v = bytes16(b + 1);
    w[0] = lut16(v, table);
    w[1] = lut16(_mm512_srli_epi32(v, 4), table);
}

typedef void (*dec32_fn)(const uint8_t *b, __m512 w[2]);

/* Two blocks per step feed four accumulators. always_inline so each instantiation gets its
 * decoder inlined (a constant function pointer after inlining), not called. */
static inline __attribute__((always_inline)) float dot32(const uint8_t *b, const float *x,
                                                         int64_t n, int bytes, dec32_fn dec) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, w[2];
    int64_t nb = n / 32, i = 0;
    for (; i + 2 <= nb; i += 2, b += 2 * bytes, x += 64) {
        dec(b, w);
        a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x), a0);
        a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 16), a1);
        dec(b + bytes, w);
        a2 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x + 32), a2);
        a3 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 48), a3);
    }
    if (i < nb) {
        dec(b, w);
        a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x), a0);
        a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 16), a1);
    }
    return hsum4(a0, a1, a2, a3);
}

static inline __attribute__((always_inline)) void dequant32(const uint8_t *b, float *y,
                                                            int64_t n, int bytes, dec32_fn dec) {
    __m512 w[2];
    for (int64_t i = 0; i < n; i += 32, b += bytes, y += 32) {
        dec(b, w);
        _mm512_storeu_ps(y, w[0]);
        _mm512_storeu_ps(y + 16, w[1]);
    }
}

#define BLOCK32_KERNELS(name, BYTES)                                                          \
    static float dot_##name(const void *row, const float *x, int64_t n) {                    \
        return dot32(row, x, n, BYTES, dec_##name);                                          \
    }                                                                                        \
    static void dequant_##name(const void *src, float *dst, int64_t n) {                    \
        dequant32(src, dst, n, BYTES, dec_##name);                                           \
    }

BLOCK32_KERNELS(q4_0, QB_Q4_0)
BLOCK32_KERNELS(q4_1, QB_Q4_1)
BLOCK32_KERNELS(q5_0, QB_Q5_0)
BLOCK32_KERNELS(q5_1, QB_Q5_1)
BLOCK32_KERNELS(iq4_nl, QB_IQ4_NL)
BLOCK32_KERNELS(mxfp4, QB_MXFP4)

/* Q8_0's dot scales once per block instead of once per weight: (q . x) * d. */
static inline __m512 q8_0_partial(const uint8_t *b, const float *x) {
    const __m128i *q = (const __m128i *)(b + 2);
    __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q)));
    __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1)));
    return _mm512_fmadd_ps(q1, _mm512_loadu_ps(x + 16), _mm512_mul_ps(q0, _mm512_loadu_ps(x)));
}

static float dot_q8_0(const void *row, const float *x, int64_t n) {
    const uint8_t *b = row;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t nb = n / 32, i = 0;
    for (; i + 4 <= nb; i += 4, b += 4 * QB_Q8_0, x += 128) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(f16_at(b)), q8_0_partial(b, x), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(f16_at(b + 34)), q8_0_partial(b + 34, x + 32), a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(f16_at(b + 68)), q8_0_partial(b + 68, x + 64), a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(f16_at(b + 102)), q8_0_partial(b + 102, x + 96), a3);
    }
    for (; i < nb; i++, b += QB_Q8_0, x += 32)
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(f16_at(b)), q8_0_partial(b, x), a0);
    return hsum4(a0, a1, a2, a3);
}

static void dequant_q8_0(const void *src, float *dst, int64_t n) {
    dequant32(src, dst, n, QB_Q8_0, dec_q8_0);
}

/* ---- 256-value blocks ------------------------------------------------------------------- */

/* What a super-block's chunk decoders share, unpacked once per block (vectorised): sub-block
 * scales as floats, which the decoders broadcast from memory, and for Q6_K the codes as one
 * byte per value in value order (its bits are spread so that 64-byte operations unpack them in
 * a few instructions where 16-lane ones took many: 8% faster; the same for Q2_K and Q3_K was
 * slower, so they decode in 16-lane form). What s, m and q hold is noted at each prep_. */
typedef struct kblock {
    float s[16];
    float m[16];
    _Alignas(64) int8_t q[QK_K];
} kblock;

/* Chunk c (0..3) of a block comes from its decoder as four vectors, in one of two shapes.
 * Contiguous (Q4_K, Q5_K, Q6_K, IQ4_XS): vector j holds values 64c + 16j .. +15. Strided (Q2_K,
 * Q3_K, whose bytes serve values 32 apart): chunk c is half h = c/2, lanes l0 = 16(c%2), and
 * vector g holds values 128h + 32g + l0 .. +15, whose scale is number 8h + 2g + c%2. */
static inline int chunk_offset(int strided, int c, int j) {
    return strided ? 128 * (c / 2) + 16 * (c % 2) + 32 * j : 64 * c + 16 * j;
}

/* Widens 16 unsigned scale bytes (four words) to floats, subtracts bias and multiplies lanes
 * 0-7 by lo and 8-15 by hi: s = mul * (scale - bias), exact as in the reference. */
static inline void scales16(const uint32_t w[4], int bias, float lo, float hi, float *out) {
    __m512i v = _mm512_cvtepu8_epi32(_mm_setr_epi32((int)w[0], (int)w[1], (int)w[2], (int)w[3]));
    __m512 q = _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(bias)));
    __m512 mul = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(lo), _mm512_set1_ps(hi));
    _mm512_storeu_ps(out, _mm512_mul_ps(mul, q));
}

/* Q4_K/Q5_K: s[j] = d * sc_j and s[8 + j] = dmin * m_j for sub-blocks j = 0..7. */
static inline void prep_scale_min_k4(const uint8_t *b, kblock *k) {
    uint32_t w[4];
    quant_scale_min_k4_words(b + 4, w);
    scales16(w, 0, f16_at(b), f16_at(b + 2), k->s);
}

static inline void dec_q4_k(const uint8_t *b, const kblock *k, int c, __m512 w[4]) {
    /* tables d*sc*q - dmin*m for sub-blocks 2c (low nibbles) and 2c+1 (high nibbles) */
    __m512 t0 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(k->s[2 * c]), iota_lo()),
                              _mm512_set1_ps(k->s[8 + 2 * c]));
    __m512 t1 = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(k->s[2 * c + 1]), iota_lo()),
                              _mm512_set1_ps(k->s[8 + 2 * c + 1]));
    __m512i v0 = bytes16(b + 16 + 32 * c), v1 = bytes16(b + 16 + 32 * c + 16);
    w[0] = lut16(v0, t0);
    w[1] = lut16(v1, t0);
    w[2] = lut16(_mm512_srli_epi32(v0, 4), t1);
    w[3] = lut16(_mm512_srli_epi32(v1, 4), t1);
}

static inline void dec_q5_k(const uint8_t *b, const kblock *k, int c, __m512 w[4]) {
    /* fifth bits: bit s of qh[l] for sub-block s, lane l */
    __m128i h0 = _mm_loadu_si128((const __m128i *)(b + 16));
    __m128i h1 = _mm_loadu_si128((const __m128i *)(b + 32));
    __m128i bit_a = _mm_set1_epi8((char)(1 << (2 * c))), bit_b = _mm_set1_epi8((char)(2 << (2 * c)));
    __m512i v0 = bytes16(b + 48 + 32 * c), v1 = bytes16(b + 48 + 32 * c + 16);
    __m512i m15 = _mm512_set1_epi32(15);
    __m512i q[4] = {
        or16(_mm512_and_si512(v0, m15), _mm_test_epi8_mask(h0, bit_a)),
        or16(_mm512_and_si512(v1, m15), _mm_test_epi8_mask(h1, bit_a)),
        or16(_mm512_srli_epi32(v0, 4), _mm_test_epi8_mask(h0, bit_b)),
        or16(_mm512_srli_epi32(v1, 4), _mm_test_epi8_mask(h1, bit_b)),
    };
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        __m512 ds = _mm512_set1_ps(k->s[2 * c + j / 2]), ms = _mm512_set1_ps(k->s[8 + 2 * c + j / 2]);
        __m512 qf = _mm512_cvtepi32_ps(q[j]);
        w[j] = _mm512_fmsub_ps(qf, ds, ms); /* exact product: same bits as mul, sub */
    }
}

/* IQ4_XS: s[j] = d * (ls_j - 32), the 6-bit ls_j split over a nibble of scales_l[j/2] and two
 * bits of scales_h. */
static inline void prep_iq4_xs(const uint8_t *b, kblock *k) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i lo = _mm256_set1_epi32((int)quant_rd32(b + 4));           /* scales_l */
    lo = _mm256_srlv_epi32(lo, _mm256_slli_epi32(lane, 2));            /* nibble j at bit 0 */
    __m256i hi = _mm256_srlv_epi32(_mm256_set1_epi32(quant_rd16(b + 2)), _mm256_slli_epi32(lane, 1));
    __m256i ls = _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(15)),
                                 _mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(3)), 4));
    __m256 q = _mm256_cvtepi32_ps(_mm256_sub_epi32(ls, _mm256_set1_epi32(32)));
    _mm256_storeu_ps(k->s, _mm256_mul_ps(_mm256_set1_ps(f16_at(b)), q));
}

static inline void dec_iq4_xs(const uint8_t *b, const kblock *k, int c, __m512 w[4]) {
    __m512 kv = kvalues_f(quant_kvalues_iq4nl);
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++) {
        int s = 2 * c + j;
        __m512 table = _mm512_mul_ps(_mm512_set1_ps(k->s[s]), kv);
        __m512i v = bytes16(b + 8 + 16 * s);
        w[2 * j] = lut16(v, table);
        w[2 * j + 1] = lut16(_mm512_srli_epi32(v, 4), table);
    }
}

/* Q2_K: s[i] = d * (scales[i] & 15), m[i] = dmin * (scales[i] >> 4). */
static inline void prep_q2_k(const uint8_t *b, kblock *k) {
    __m512i v = bytes16(b);
    _mm512_storeu_ps(k->s, _mm512_mul_ps(_mm512_set1_ps(f16_at(b + 80)),
                     _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)))));
    _mm512_storeu_ps(k->m, _mm512_mul_ps(_mm512_set1_ps(f16_at(b + 82)),
                     _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4))));
}

static inline void dec_q2_k(const uint8_t *b, const kblock *k, int c, __m512 w[4]) {
    int h = c / 2, l0 = 16 * (c % 2);
    __m512i v = bytes16(b + 16 + 32 * h + l0);
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        int i = 8 * h + 2 * g + c % 2;
        __m512 q = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(v, 2 * g), _mm512_set1_epi32(3)));
        w[g] = _mm512_fmsub_ps(q, _mm512_set1_ps(k->s[i]), _mm512_set1_ps(k->m[i]));
    }
}

/* Q3_K: s[i] = d * (sc_i - 32). */
static inline void prep_q3_k(const uint8_t *b, kblock *k) {
    uint32_t w[4];
    quant_scales_q3_k_words(b + 96, w);
    scales16(w, 32, f16_at(b + 108), f16_at(b + 108), k->s);
}

static inline void dec_q3_k(const uint8_t *b, const kblock *k, int c, __m512 w[4]) {
    int h = c / 2, l0 = 16 * (c % 2);
    __m128i hm = _mm_loadu_si128((const __m128i *)(b + l0));
    __m512i v = bytes16(b + 32 + 32 * h + l0);
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        __m512i q = _mm512_and_si512(_mm512_srli_epi32(v, 2 * g), _mm512_set1_epi32(3));
        /* a clear high bit subtracts 4 */
        __mmask16 clear = _mm_testn_epi8_mask(hm, _mm_set1_epi8((char)(1 << (4 * h + g))));
        q = _mm512_mask_sub_epi32(q, clear, q, _mm512_set1_epi32(4));
        w[g] = _mm512_mul_ps(_mm512_set1_ps(k->s[8 * h + 2 * g + c % 2]), _mm512_cvtepi32_ps(q));
    }
}

/* Per 16-bit lane shift counts: a for the low 32 bytes, b for the high 32. */
static inline __m512i halves_epi16(int a, int b) {
    return _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16((short)a), _mm512_set1_epi16((short)b));
}
/* 32 bytes at p in both halves of a vector. */
static inline __m512i twice32(const uint8_t *p) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
}

/* Q6_K: s[i] = d * scales[i] (int8); q = the 6-bit codes minus 32. In half h, byte l of the 64
 * at ql + 64h holds the low 4 bits of values 128h + l (low nibble) and 128h + 64 + l (high);
 * byte l (< 32) of qh + 32h holds their bits 4-5 for values 128h + 32g + l at bits 2g. */
static inline void prep_q6_k(const uint8_t *b, kblock *k) {
    __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 192))));
    _mm512_storeu_ps(k->s, _mm512_mul_ps(_mm512_set1_ps(f16_at(b + 208)), sc));
    const __m512i m15 = _mm512_set1_epi8(15), m48 = _mm512_set1_epi8(0x30), b32 = _mm512_set1_epi8(32);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i ql = _mm512_loadu_si512((const void *)(b + 64 * h));
        /* qh in the low half, qh >> 2 in the high half: bits 0-1 then serve the low nibbles'
         * values and bits 4-5 the high nibbles' (16-bit shifts: stray bits stay outside) */
        __m512i hh = _mm512_srlv_epi16(twice32(b + 128 + 32 * h), halves_epi16(0, 2));
        /* 0xF8 is A | (B & C) */
        __m512i lo = _mm512_ternarylogic_epi32(_mm512_and_si512(ql, m15), _mm512_slli_epi16(hh, 4), m48, 0xF8);
        __m512i hi = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m15), hh, m48, 0xF8);
        _mm512_store_si512((void *)(k->q + 128 * h), _mm512_sub_epi8(lo, b32));
        _mm512_store_si512((void *)(k->q + 128 * h + 64), _mm512_sub_epi8(hi, b32));
    }
}

static inline void dec_q6_k(const uint8_t *b, const kblock *k, int c, __m512 w[4]) {
    (void)b;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        int i = 4 * c + j; /* 16-value group, and its scale */
        __m128i q = _mm_load_si128((const __m128i *)(k->q + 16 * i));
        w[j] = _mm512_mul_ps(_mm512_set1_ps(k->s[i]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
    }
}

/* Makes the compiler read the scales back from memory: each use then becomes a broadcast
 * load (a load-port op) instead of a lane permute of the register holding all sixteen, and
 * the permute unit is what the 4-bit table lookups already keep busy. */
static inline void kblock_to_memory(kblock *k) { __asm__ volatile("" : "+m"(*k)); }

typedef void (*prep_fn)(const uint8_t *b, kblock *k);
typedef void (*dec256_fn)(const uint8_t *b, const kblock *k, int c, __m512 w[4]);

static inline __attribute__((always_inline)) float dot256(const uint8_t *b, const float *x,
                                                          int64_t n, int bytes, int strided,
                                                          prep_fn prep, dec256_fn dec) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, w[4];
    kblock k;
    for (int64_t i = 0; i < n; i += QK_K, b += bytes, x += QK_K) {
        prep(b, &k);
        kblock_to_memory(&k);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            dec(b, &k, c, w);
            a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x + chunk_offset(strided, c, 0)), a0);
            a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + chunk_offset(strided, c, 1)), a1);
            a2 = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(x + chunk_offset(strided, c, 2)), a2);
            a3 = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(x + chunk_offset(strided, c, 3)), a3);
        }
    }
    return hsum4(a0, a1, a2, a3);
}

static inline __attribute__((always_inline)) void dequant256(const uint8_t *b, float *y,
                                                             int64_t n, int bytes, int strided,
                                                             prep_fn prep, dec256_fn dec) {
    __m512 w[4];
    kblock k;
    for (int64_t i = 0; i < n; i += QK_K, b += bytes, y += QK_K) {
        prep(b, &k);
        kblock_to_memory(&k);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            dec(b, &k, c, w);
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(y + chunk_offset(strided, c, j), w[j]);
        }
    }
}

#define BLOCK256_KERNELS(name, BYTES, STRIDED, prep)                                          \
    static float dot_##name(const void *row, const float *x, int64_t n) {                    \
        return dot256(row, x, n, BYTES, STRIDED, prep, dec_##name);                          \
    }                                                                                        \
    static void dequant_##name(const void *src, float *dst, int64_t n) {                    \
        dequant256(src, dst, n, BYTES, STRIDED, prep, dec_##name);                           \
    }

BLOCK256_KERNELS(q2_k, QB_Q2_K, 1, prep_q2_k)
BLOCK256_KERNELS(q3_k, QB_Q3_K, 1, prep_q3_k)
BLOCK256_KERNELS(q4_k, QB_Q4_K, 0, prep_scale_min_k4)
BLOCK256_KERNELS(q5_k, QB_Q5_K, 0, prep_scale_min_k4)
BLOCK256_KERNELS(q6_k, QB_Q6_K, 0, prep_q6_k)
BLOCK256_KERNELS(iq4_xs, QB_IQ4_XS, 0, prep_iq4_xs)

/* ---- table -------------------------------------------------------------------------------- */

#define K(T, name) [T] = name
const quant_kernels quant_kernels_avx512 = {
    .name = "avx512",
    .dequant = {K(MS_TYPE_F16, dequant_f16), K(MS_TYPE_BF16, dequant_bf16),
                K(MS_TYPE_F32, dequant_f32), K(MS_TYPE_Q4_0, dequant_q4_0),
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
