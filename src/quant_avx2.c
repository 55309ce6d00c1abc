/* quant_avx2.c - AVX2 row kernels (dequantize, dot with f32 activations) for every type quant.c
 * supports. Compiled with -mavx2 -mfma -mf16c and called only when quant_init found AVX2 and
 * FMA and F16C on the CPU.
 *
 * Not here: dispatch and the scalar reference (quant.c), which these kernels are tested
 * against (tests/test_quant.c). Layout comments live with the reference decoders in quant.c.
 *
 * Same shape as quant_avx512.c with 8-float vectors: one decoder per type turns a block (or a
 * 64-value chunk of a 256-value block) into vectors of weights, bit-exact with the reference
 * (see quant_simd.h). AVX2 has no 16-entry float permute, so codes become floats by
 * conversion, and the non-linear 4-bit code books are looked up as bytes (pshufb) first.
 */
#include <immintrin.h>
#include <string.h>

#include "quant_simd.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static inline float f16_at(const uint8_t *p) { return _cvtsh_ss(quant_rd16(p)); }

/* 8 bytes zero-extended into 8 int32 lanes. */
static inline __m256i bytes8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
static inline __m256 cvt(__m256i v) { return _mm256_cvtepi32_ps(v); }
static inline __m256i set1i(int v) { return _mm256_set1_epi32(v); }

/* Lane i of the result is bit s of lane i's value moved to bit 4 (value 16): the fifth bit of
 * a 5-bit quant. s is a constant wherever this is inlined. */
static inline __m256i bit_to_16(__m256i v, int s) {
    __m256i t = s >= 4 ? _mm256_srli_epi32(v, s - 4) : _mm256_slli_epi32(v, 4 - s);
    return _mm256_and_si256(t, set1i(16));
}

/* The 16 code-book bytes picked by the 16 low nibbles and 16 high nibbles of p[0..15], as four
 * 8-lane int32 vectors: nibbles 0-7, 8-15 (low), then 0-7, 8-15 (high). */
static inline void lookup_nibbles(const uint8_t *p, const int8_t kv[16], __m256i out[4]) {
    __m128i book = _mm_loadu_si128((const __m128i *)kv);
    __m128i v = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    __m128i lo = _mm_shuffle_epi8(book, _mm_and_si128(v, m));
    __m128i hi = _mm_shuffle_epi8(book, _mm_and_si128(_mm_srli_epi16(v, 4), m));
    out[0] = _mm256_cvtepi8_epi32(lo);
    out[1] = _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8));
    out[2] = _mm256_cvtepi8_epi32(hi);
    out[3] = _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/* ---- float types (any n: vector body, scalar tail with the same conversion) -------------- */

static inline __m256 load_f32(const uint8_t *p) { return _mm256_loadu_ps((const float *)p); }
static inline float scalar_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}
static inline __m256 load_f16(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline float scalar_f16(const uint8_t *p) { return f16_at(p); }
static inline __m256 load_bf16(const uint8_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
static inline float scalar_bf16(const uint8_t *p) { return ms_bf16_to_f32(quant_rd16(p)); }

#define FLOAT_KERNELS(name, ESIZE, load, scalar)                                              \
    static float dot_##name(const void *row, const float *x, int64_t n) {                    \
        const uint8_t *w = row;                                                              \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                          \
        int64_t i = 0;                                                                       \
        for (; i + 32 <= n; i += 32) {                                                       \
            a0 = _mm256_fmadd_ps(load(w + ESIZE * i), _mm256_loadu_ps(x + i), a0);           \
            a1 = _mm256_fmadd_ps(load(w + ESIZE * (i + 8)), _mm256_loadu_ps(x + i + 8), a1); \
            a2 = _mm256_fmadd_ps(load(w + ESIZE * (i + 16)), _mm256_loadu_ps(x + i + 16), a2); \
            a3 = _mm256_fmadd_ps(load(w + ESIZE * (i + 24)), _mm256_loadu_ps(x + i + 24), a3); \
        }                                                                                    \
        for (; i + 8 <= n; i += 8)                                                           \
            a0 = _mm256_fmadd_ps(load(w + ESIZE * i), _mm256_loadu_ps(x + i), a0);           \
        float s = hsum4(a0, a1, a2, a3);                                                     \
        for (; i < n; i++) s += scalar(w + ESIZE * i) * x[i];                                \
        return s;                                                                            \
    }                                                                                        \
    static void dequant_##name(const void *src, float *dst, int64_t n) {                    \
        const uint8_t *w = src;                                                              \
        int64_t i = 0;                                                                       \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load(w + ESIZE * i));           \
        for (; i < n; i++) dst[i] = scalar(w + ESIZE * i);                                   \
    }

FLOAT_KERNELS(f16, 2, load_f16, scalar_f16)
FLOAT_KERNELS(bf16, 2, load_bf16, scalar_bf16)
FLOAT_KERNELS(f32, 4, load_f32, scalar_f32)

/* ---- 32-value blocks: decoders give w[k] = values 8k .. 8k+7 ----------------------------- */

/* Low nibbles of p[0..15] are values 0..15 and high nibbles 16..31, as in every 32-block type. */
static inline void nibbles(const uint8_t *p, __m256i q[4]) {
    __m256i a = bytes8(p), b = bytes8(p + 8), m = set1i(15);
    q[0] = _mm256_and_si256(a, m);
    q[1] = _mm256_and_si256(b, m);
    q[2] = _mm256_srli_epi32(a, 4);
    q[3] = _mm256_srli_epi32(b, 4);
}

/* Adds the fifth bits of Q5_0/Q5_1 (bit j of qh for value j). */
static inline void fifth_bits(uint32_t qh, __m256i q[4]) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i h = _mm256_set1_epi32((int)qh);
    for (int k = 0; k < 4; k++) {
        __m256i bit = _mm256_srlv_epi32(h, _mm256_add_epi32(lane, set1i(8 * k)));
        q[k] = _mm256_or_si256(q[k], _mm256_and_si256(_mm256_slli_epi32(bit, 4), set1i(16)));
    }
}

static inline void dec_q4_0(const uint8_t *b, __m256 w[4]) {
    __m256 d = _mm256_set1_ps(f16_at(b));
    __m256i q[4];
    nibbles(b + 2, q);
    for (int k = 0; k < 4; k++) w[k] = _mm256_mul_ps(d, cvt(_mm256_sub_epi32(q[k], set1i(8))));
}

static inline void dec_q4_1(const uint8_t *b, __m256 w[4]) {
    __m256 d = _mm256_set1_ps(f16_at(b)), m = _mm256_set1_ps(f16_at(b + 2));
    __m256i q[4];
    nibbles(b + 4, q);
    for (int k = 0; k < 4; k++) w[k] = _mm256_add_ps(_mm256_mul_ps(d, cvt(q[k])), m);
}

static inline void dec_q5_0(const uint8_t *b, __m256 w[4]) {
    __m256 d = _mm256_set1_ps(f16_at(b));
    __m256i q[4];
    nibbles(b + 6, q);
    fifth_bits(quant_rd32(b + 2), q);
    for (int k = 0; k < 4; k++) w[k] = _mm256_mul_ps(d, cvt(_mm256_sub_epi32(q[k], set1i(16))));
}

static inline void dec_q5_1(const uint8_t *b, __m256 w[4]) {
    __m256 d = _mm256_set1_ps(f16_at(b)), m = _mm256_set1_ps(f16_at(b + 2));
    __m256i q[4];
    nibbles(b + 8, q);
    fifth_bits(quant_rd32(b + 4), q);
    for (int k = 0; k < 4; k++) w[k] = _mm256_add_ps(_mm256_mul_ps(d, cvt(q[k])), m);
}

static inline void dec_q8_0(const uint8_t *b, __m256 w[4]) {
    __m256 d = _mm256_set1_ps(f16_at(b));
    for (int k = 0; k < 4; k++) {
        __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * k)));
        w[k] = _mm256_mul_ps(cvt(q), d);
    }
}

static inline void dec_iq4_nl(const uint8_t *b, __m256 w[4]) {
    __m256 d = _mm256_set1_ps(f16_at(b));
    __m256i q[4];
    lookup_nibbles(b + 2, quant_kvalues_iq4nl, q);
    for (int k = 0; k < 4; k++) w[k] = _mm256_mul_ps(d, cvt(q[k]));
}

static inline void dec_mxfp4(const uint8_t *b, __m256 w[4]) {
    __m256 d = _mm256_set1_ps(quant_e8m0_half(b[0]));
    __m256i q[4];
    lookup_nibbles(b + 1, quant_kvalues_mxfp4, q);
    for (int k = 0; k < 4; k++) w[k] = _mm256_mul_ps(d, cvt(q[k]));
}

typedef void (*dec32_fn)(const uint8_t *b, __m256 w[4]);

/* One block per step already feeds four accumulators. always_inline so each instantiation
 * gets its decoder inlined, not called through the pointer. */
static inline __attribute__((always_inline)) float dot32(const uint8_t *b, const float *x,
                                                         int64_t n, int bytes, dec32_fn dec) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, w[4];
    for (int64_t i = 0; i < n; i += 32, b += bytes, x += 32) {
        dec(b, w);
        a0 = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(x), a0);
        a1 = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x + 8), a1);
        a2 = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x + 16), a2);
        a3 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x + 24), a3);
    }
    return hsum4(a0, a1, a2, a3);
}

static inline __attribute__((always_inline)) void dequant32(const uint8_t *b, float *y,
                                                            int64_t n, int bytes, dec32_fn dec) {
    __m256 w[4];
    for (int64_t i = 0; i < n; i += 32, b += bytes, y += 32) {
        dec(b, w);
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + 8 * k, w[k]);
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
static float dot_q8_0(const void *row, const float *x, int64_t n) {
    const uint8_t *b = row;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (int64_t i = 0; i < n; i += 32, b += QB_Q8_0, x += 32) {
        __m256 q[4];
        for (int k = 0; k < 4; k++)
            q[k] = cvt(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * k))));
        __m256 d = _mm256_set1_ps(f16_at(b));
        __m256 t0 = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(x + 8), _mm256_mul_ps(q[0], _mm256_loadu_ps(x)));
        __m256 t1 = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x + 24), _mm256_mul_ps(q[2], _mm256_loadu_ps(x + 16)));
        a0 = _mm256_fmadd_ps(d, t0, a0);
        a1 = _mm256_fmadd_ps(d, t1, a1);
    }
    return hsum(_mm256_add_ps(a0, a1));
}

static void dequant_q8_0(const void *src, float *dst, int64_t n) {
    dequant32(src, dst, n, QB_Q8_0, dec_q8_0);
}

/* ---- 256-value blocks ------------------------------------------------------------------- */

/* A super-block's sub-block scales, decoded once per block into floats (see each prep_). */
typedef struct kscales {
    float s[16];
    float m[16];
} kscales;

/* Chunk c (0..3) of a block is 64 values in eight vectors. Contiguous (Q4_K, Q5_K, IQ4_XS):
 * vector j holds 64c + 8j .. +7. Strided (Q2_K, Q3_K, Q6_K, whose bytes serve values 32 apart):
 * half h = c/2, lanes l0 = 16(c%2); vector j holds 128h + 32(j/2) + l0 + 8(j%2) .. +7, with
 * scale number 8h + 2(j/2) + c%2. */
static inline int chunk_offset(int strided, int c, int j) {
    return strided ? 128 * (c / 2) + 16 * (c % 2) + 32 * (j / 2) + 8 * (j % 2) : 64 * c + 8 * j;
}

/* Widens 16 unsigned scale bytes to floats, subtracts bias and multiplies the first 8 by lo
 * and the last 8 by hi: out = mul * (scale - bias), exact as in the reference. */
static inline void scales16(__m128i bytes, int bias, float lo, float hi, float *out) {
    __m256i a = _mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), set1i(bias));
    __m256i b = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)), set1i(bias));
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_set1_ps(lo), cvt(a)));
    _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_set1_ps(hi), cvt(b)));
}
static inline __m128i words(const uint32_t w[4]) {
    return _mm_setr_epi32((int)w[0], (int)w[1], (int)w[2], (int)w[3]);
}

/* Q4_K/Q5_K: s[j] = d * sc_j, s[8 + j] = dmin * m_j. */
static inline void prep_scale_min_k4(const uint8_t *b, kscales *k) {
    uint32_t w[4];
    quant_scale_min_k4_words(b + 4, w);
    scales16(words(w), 0, f16_at(b), f16_at(b + 2), k->s);
}

/* Q2_K: s[i] = d * (scales[i] & 15), m[i] = dmin * (scales[i] >> 4). */
static inline void prep_q2_k(const uint8_t *b, kscales *k) {
    __m128i v = _mm_loadu_si128((const __m128i *)b), m = _mm_set1_epi8(15);
    float d = f16_at(b + 80), dmin = f16_at(b + 82);
    scales16(_mm_and_si128(v, m), 0, d, d, k->s);
    scales16(_mm_and_si128(_mm_srli_epi16(v, 4), m), 0, dmin, dmin, k->m);
}

/* Q3_K: s[i] = d * (sc_i - 32). */
static inline void prep_q3_k(const uint8_t *b, kscales *k) {
    uint32_t w[4];
    quant_scales_q3_k_words(b + 96, w);
    scales16(words(w), 32, f16_at(b + 108), f16_at(b + 108), k->s);
}

/* Q6_K: s[i] = d * scales[i] (int8). */
static inline void prep_q6_k(const uint8_t *b, kscales *k) {
    __m128i v = _mm_loadu_si128((const __m128i *)(b + 192));
    __m256 d = _mm256_set1_ps(f16_at(b + 208));
    _mm256_storeu_ps(k->s, _mm256_mul_ps(d, cvt(_mm256_cvtepi8_epi32(v))));
    _mm256_storeu_ps(k->s + 8, _mm256_mul_ps(d, cvt(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)))));
}

/* IQ4_XS: s[j] = d * (ls_j - 32), ls_j from a nibble of scales_l and two bits of scales_h. */
static inline void prep_iq4_xs(const uint8_t *b, kscales *k) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i lo = _mm256_srlv_epi32(set1i((int)quant_rd32(b + 4)), _mm256_slli_epi32(lane, 2));
    __m256i hi = _mm256_srlv_epi32(set1i(quant_rd16(b + 2)), _mm256_slli_epi32(lane, 1));
    __m256i ls = _mm256_or_si256(_mm256_and_si256(lo, set1i(15)),
                                 _mm256_slli_epi32(_mm256_and_si256(hi, set1i(3)), 4));
    _mm256_storeu_ps(k->s, _mm256_mul_ps(_mm256_set1_ps(f16_at(b)),
                                         cvt(_mm256_sub_epi32(ls, set1i(32)))));
}

/* s * q - m in one FMA: s * q is exact (quant_simd.h), so this rounds as the reference's
 * multiply-then-subtract does. */
static inline __m256 scale_sub(__m256 q, float s, float m) {
    return _mm256_fmsub_ps(q, _mm256_set1_ps(s), _mm256_set1_ps(m));
}

static inline void dec_q4_k(const uint8_t *b, const kscales *k, int c, __m256 w[8]) {
    const uint8_t *qs = b + 16 + 32 * c;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        __m256i v = bytes8(qs + 8 * j);
        w[j] = scale_sub(cvt(_mm256_and_si256(v, set1i(15))), k->s[2 * c], k->s[8 + 2 * c]);
        w[4 + j] = scale_sub(cvt(_mm256_srli_epi32(v, 4)), k->s[2 * c + 1], k->s[9 + 2 * c]);
    }
}

static inline void dec_q5_k(const uint8_t *b, const kscales *k, int c, __m256 w[8]) {
    const uint8_t *qs = b + 48 + 32 * c, *qh = b + 16;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        __m256i v = bytes8(qs + 8 * j), h = bytes8(qh + 8 * j);
        __m256i lo = _mm256_or_si256(_mm256_and_si256(v, set1i(15)), bit_to_16(h, 2 * c));
        __m256i hi = _mm256_or_si256(_mm256_srli_epi32(v, 4), bit_to_16(h, 2 * c + 1));
        w[j] = scale_sub(cvt(lo), k->s[2 * c], k->s[8 + 2 * c]);
        w[4 + j] = scale_sub(cvt(hi), k->s[2 * c + 1], k->s[9 + 2 * c]);
    }
}

static inline void dec_iq4_xs(const uint8_t *b, const kscales *k, int c, __m256 w[8]) {
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++) {
        int s = 2 * c + j;
        __m256 dl = _mm256_set1_ps(k->s[s]);
        __m256i q[4];
        lookup_nibbles(b + 8 + 16 * s, quant_kvalues_iq4nl, q);
        for (int t = 0; t < 4; t++) w[4 * j + t] = _mm256_mul_ps(dl, cvt(q[t]));
    }
}

static inline void dec_q2_k(const uint8_t *b, const kscales *k, int c, __m256 w[8]) {
    int h = c / 2, l0 = 16 * (c % 2);
#pragma GCC unroll 2
    for (int half = 0; half < 2; half++) {
        __m256i v = bytes8(b + 16 + 32 * h + l0 + 8 * half);
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            int i = 8 * h + 2 * g + c % 2;
            __m256i q = _mm256_and_si256(_mm256_srli_epi32(v, 2 * g), set1i(3));
            w[2 * g + half] = scale_sub(cvt(q), k->s[i], k->m[i]);
        }
    }
}

static inline void dec_q3_k(const uint8_t *b, const kscales *k, int c, __m256 w[8]) {
    int h = c / 2, l0 = 16 * (c % 2);
#pragma GCC unroll 2
    for (int half = 0; half < 2; half++) {
        __m256i v = bytes8(b + 32 + 32 * h + l0 + 8 * half);
        __m256i hm = bytes8(b + l0 + 8 * half);
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            __m256i q = _mm256_and_si256(_mm256_srli_epi32(v, 2 * g), set1i(3));
            /* a clear high bit subtracts 4 */
            __m256i clear = _mm256_cmpeq_epi32(_mm256_and_si256(hm, set1i(1 << (4 * h + g))),
                                               _mm256_setzero_si256());
            q = _mm256_sub_epi32(q, _mm256_and_si256(clear, set1i(4)));
            w[2 * g + half] = _mm256_mul_ps(_mm256_set1_ps(k->s[8 * h + 2 * g + c % 2]), cvt(q));
        }
    }
}

static inline void dec_q6_k(const uint8_t *b, const kscales *k, int c, __m256 w[8]) {
    int h = c / 2, l0 = 16 * (c % 2);
    __m256i m15 = set1i(15), m48 = set1i(0x30);
#pragma GCC unroll 2
    for (int half = 0; half < 2; half++) {
        int l = l0 + 8 * half;
        __m256i a = bytes8(b + 64 * h + l), a2 = bytes8(b + 64 * h + 32 + l);
        __m256i hb = bytes8(b + 128 + 32 * h + l);
        __m256i q[4] = {
            _mm256_or_si256(_mm256_and_si256(a, m15), _mm256_and_si256(_mm256_slli_epi32(hb, 4), m48)),
            _mm256_or_si256(_mm256_and_si256(a2, m15), _mm256_and_si256(_mm256_slli_epi32(hb, 2), m48)),
            _mm256_or_si256(_mm256_srli_epi32(a, 4), _mm256_and_si256(hb, m48)),
            _mm256_or_si256(_mm256_srli_epi32(a2, 4), _mm256_and_si256(_mm256_srli_epi32(hb, 2), m48)),
        };
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            __m256 qf = cvt(_mm256_sub_epi32(q[g], set1i(32)));
            w[2 * g + half] = _mm256_mul_ps(_mm256_set1_ps(k->s[8 * h + 2 * g + c % 2]), qf);
        }
    }
}

/* Makes the compiler read the scales back from memory, as broadcast loads (see avx512). */
static inline void kscales_to_memory(kscales *k) { __asm__ volatile("" : "+m"(*k)); }

typedef void (*prep_fn)(const uint8_t *b, kscales *k);
typedef void (*dec256_fn)(const uint8_t *b, const kscales *k, int c, __m256 w[8]);

static inline __attribute__((always_inline)) float dot256(const uint8_t *b, const float *x,
                                                          int64_t n, int bytes, int strided,
                                                          prep_fn prep, dec256_fn dec) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, w[8];
    kscales k;
    for (int64_t i = 0; i < n; i += QK_K, b += bytes, x += QK_K) {
        prep(b, &k);
        kscales_to_memory(&k);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            dec(b, &k, c, w);
            a0 = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(x + chunk_offset(strided, c, 0)), a0);
            a1 = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x + chunk_offset(strided, c, 1)), a1);
            a2 = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x + chunk_offset(strided, c, 2)), a2);
            a3 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x + chunk_offset(strided, c, 3)), a3);
            a0 = _mm256_fmadd_ps(w[4], _mm256_loadu_ps(x + chunk_offset(strided, c, 4)), a0);
            a1 = _mm256_fmadd_ps(w[5], _mm256_loadu_ps(x + chunk_offset(strided, c, 5)), a1);
            a2 = _mm256_fmadd_ps(w[6], _mm256_loadu_ps(x + chunk_offset(strided, c, 6)), a2);
            a3 = _mm256_fmadd_ps(w[7], _mm256_loadu_ps(x + chunk_offset(strided, c, 7)), a3);
        }
    }
    return hsum4(a0, a1, a2, a3);
}

static inline __attribute__((always_inline)) void dequant256(const uint8_t *b, float *y,
                                                             int64_t n, int bytes, int strided,
                                                             prep_fn prep, dec256_fn dec) {
    __m256 w[8];
    kscales k;
    for (int64_t i = 0; i < n; i += QK_K, b += bytes, y += QK_K) {
        prep(b, &k);
        kscales_to_memory(&k);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            dec(b, &k, c, w);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(y + chunk_offset(strided, c, j), w[j]);
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
BLOCK256_KERNELS(q6_k, QB_Q6_K, 1, prep_q6_k)
BLOCK256_KERNELS(iq4_xs, QB_IQ4_XS, 0, prep_iq4_xs)

/* ---- table -------------------------------------------------------------------------------- */

#define K(T, name) [T] = name
const quant_kernels quant_kernels_avx2 = {
    .name = "avx2",
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
