/* quant_q16_avx512.c - AVX-512 kernels for q16 activations (quant.h): quantize, dot, and the
 * matrix product over several tokens. Built with the AVX-512 flags of the Makefile (VNNI among
 * them) and called only when quant_init found them.
 *
 * Not here: the format and the scalar reference (quant_q16.c) these are tested against, the
 * f32-activation kernels (quant_avx512.c), dispatch (quant.c).
 *
 * Shape: one decoder per weight type turns a block of 256 values into eight vectors of 32 int16
 * weight codes in value order, so that vector k meets the activation's q16 values 32k..32k+31 in
 * one vpdpwssd (32 products summed pairwise into 16 int32 lanes).
 *  - 256-value types (Q2_K..Q6_K, IQ4_XS) premultiply each code by its integer sub-block scale
 *    (vpmullw, |sc * q| <= 4096), so a whole block sums into one int32 vector and is scaled
 *    once, by d * dx. Each lane then holds 16 products of at most 4096 * 32767: below 2^31
 *    (2^31 - 2^16 at the extreme, which test_quant builds). The "min" terms use the q16 row's
 *    exact sums per 16 values.
 *  - 32-value types: the dot sums one block per vpdpwssd and scales it by its f16 (or E8M0) d
 *    in float, the group's dx once per 256 values; the matrix product first transposes the
 *    128-bit lanes of four blocks (see mm_b32_pass) so one conversion serves four blocks.
 * Matvec (one token) streams rows once and prefetches PREFETCH_AHEAD bytes ahead. The matrix
 * product decodes a row's block into registers once per pass of up to 8 tokens; passes run
 * over slices of the row whose activations fit in L1, within blocks of rows that stay in L2
 * while every token passes over them, the next block prefetched during the first pass.
 *
 * Port pressure on Zen 4, measured: vpdpwssd, vpmullw and FMA share one 512-bit pipe (1 per
 * cycle), conversions, adds and logic run beside them; 512-bit loads are 1 per cycle. The
 * 256-value matvecs are bound by that pipe (Q4_K: 8 vpmullw + 8 vpdpwssd + 3 FMA per block).
 */
#include <immintrin.h>
#include <string.h>

#include "quant_simd.h"

static inline float f16_at(const uint8_t *p) { return _cvtsh_ss(quant_rd16(p)); }

/* Keeps a small table in memory so uses become broadcast loads, not register permutes (the
 * shuffle unit is busy widening codes). */
#define IN_MEMORY(x) __asm__ volatile("" : "+m"(x))
/* Decoders and kernel bodies are instantiated per type and token count: always inlined, so the
 * decoded vectors stay in registers and the loops over tokens unroll. */
#define INLINE static inline __attribute__((always_inline))

/* ---- quantize ----------------------------------------------------------------------------- */

static void q16_quantize(const float *x, int64_t n, void *xq) {
    uint8_t *out = xq;
    int16_t *q = (int16_t *)out;
    float *d = (float *)(out + 2 * n);
    int32_t *s = (int32_t *)(out + 2 * n + 4 * q16_groups(n));
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    const __m512i lim = _mm512_set1_epi32(Q16_MAX);
    for (int64_t g = 0; g < q16_groups(n); g++) {
        int64_t i0 = g * Q16_GROUP, len = n - i0 < Q16_GROUP ? n - i0 : Q16_GROUP;
        __m512 m = _mm512_setzero_ps();
        __mmask16 bad = 0;
        for (int64_t i = i0; i < i0 + len; i += 16) {
            __m512 v = _mm512_loadu_ps(x + i);
            bad |= _mm512_fpclass_ps_mask(v, 0x99); /* NaNs and infinities */
            m = _mm512_max_ps(m, _mm512_and_ps(v, abs_mask));
        }
        /* as the reference: a non-finite group is NaN-scaled zeros; the max is exact */
        float amax = bad ? 0 : _mm512_reduce_max_ps(m);
        float id = amax >= Q16_TINY ? Q16_MAX / amax : 0;
        d[g] = bad ? __builtin_nanf("") : amax >= Q16_TINY ? amax / Q16_MAX : 0;
        __m512 vid = _mm512_set1_ps(id);
        for (int64_t i = i0; i < i0 + len; i += 16) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vid));
            v = _mm512_max_epi32(_mm512_min_epi32(v, lim),
                                 _mm512_sub_epi32(_mm512_setzero_si512(), lim));
            if (bad) v = _mm512_setzero_si512();
            _mm256_storeu_si256((__m256i *)(q + i), _mm512_cvtepi32_epi16(v));
            s[i / 16] = _mm512_reduce_add_epi32(v);
        }
    }
    size_t used = (size_t)(2 * n + 4 * q16_groups(n) + 4 * (n / 16));
    memset(out + used, 0, quant_q16_bytes(n) - used);
}

/* ---- 256-value types: decoders ------------------------------------------------------------ */

/* A decoded block: w[k] = codes of values 32k..32k+31 times their sub-block scales (int16);
 * d the block scale; for types with mins, mins[i] = dmin * m[i] * mins_scale for the 16 sums of
 * 16 values (so sum w x = dx * d * sum(w q) - sum mins[i] * (sum of 16 x)). */
typedef struct kdec {
    __m512i w[8];
    float d;
    __m512 mins;
    uint64_t mins8; /* Q4_K/Q5_K: the 8 six-bit mins as bytes (for dot_k4_sx) */
} kdec;

/* Words (a, b): 16 lanes of a then 16 of b, as vpermw indices picking 16-value scales 2k, 2k+1. */
static inline __m512i pair_index(int k) {
    return _mm512_add_epi16(_mm512_set1_epi16((short)(2 * k)),
                            _mm512_maskz_set1_epi16(0xFFFF0000u, 1));
}

/* Q4_K/Q5_K: sub-block j's six-bit scale in both halves of a dword, for vpmullw. */
static inline void k4_multipliers(const uint32_t sw[4], int32_t mul[8]) {
    __m256i sc =
        _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)((uint64_t)sw[1] << 32 | sw[0])));
    _mm256_storeu_si256((__m256i *)mul, _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16)));
}

/* Q4_K/Q5_K mins: m_j for both sums of sub-block j, times dmin * mins_scale. */
static inline __m512 k4_mins(const uint32_t sw[4], float dmin) {
    __m128i m = _mm_cvtsi64_si128((long long)((uint64_t)sw[3] << 32 | sw[2]));
    m = _mm_unpacklo_epi8(m, m);
    return _mm512_mul_ps(_mm512_set1_ps(dmin), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(m)));
}

INLINE void dec_q4_k(const uint8_t *b, kdec *k, float mins_scale) {
    uint32_t sw[4];
    int32_t mul[8];
    quant_scale_min_k4_words(b + 4, sw);
    k4_multipliers(sw, mul);
    IN_MEMORY(mul);
    const __m512i m15 = _mm512_set1_epi16(15);
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(b + 16 + 32 * c)));
        k->w[2 * c] = _mm512_mullo_epi16(_mm512_and_si512(v, m15), _mm512_set1_epi32(mul[2 * c]));
        k->w[2 * c + 1] =
            _mm512_mullo_epi16(_mm512_srli_epi16(v, 4), _mm512_set1_epi32(mul[2 * c + 1]));
    }
    k->d = f16_at(b);
    k->mins = k4_mins(sw, f16_at(b + 2) * mins_scale);
    k->mins8 = (uint64_t)sw[3] << 32 | sw[2];
}

INLINE void dec_q5_k(const uint8_t *b, kdec *k, float mins_scale) {
    uint32_t sw[4];
    int32_t mul[8];
    quant_scale_min_k4_words(b + 4, sw);
    k4_multipliers(sw, mul);
    IN_MEMORY(mul);
    const __m512i m15 = _mm512_set1_epi16(15), sixteen = _mm512_set1_epi16(16);
    __m512i h = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(b + 16)));
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(b + 48 + 32 * c)));
        /* bit s of qh[l] is the fifth bit of sub-block s, value l */
        __mmask32 h0 = _mm512_test_epi16_mask(h, _mm512_set1_epi16((short)(1 << (2 * c))));
        __mmask32 h1 = _mm512_test_epi16_mask(h, _mm512_set1_epi16((short)(2 << (2 * c))));
        __m512i lo = _mm512_and_si512(v, m15), hi = _mm512_srli_epi16(v, 4);
        lo = _mm512_mask_add_epi16(lo, h0, lo, sixteen);
        hi = _mm512_mask_add_epi16(hi, h1, hi, sixteen);
        k->w[2 * c] = _mm512_mullo_epi16(lo, _mm512_set1_epi32(mul[2 * c]));
        k->w[2 * c + 1] = _mm512_mullo_epi16(hi, _mm512_set1_epi32(mul[2 * c + 1]));
    }
    k->d = f16_at(b);
    k->mins = k4_mins(sw, f16_at(b + 2) * mins_scale);
    k->mins8 = (uint64_t)sw[3] << 32 | sw[2];
}

/* Per 16-bit lane shift counts: a for the low 32 bytes, b for the high 32. */
static inline __m512i halves_epi16(int a, int b) {
    return _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16((short)a),
                                   _mm512_set1_epi16((short)b));
}

/* Q6_K: codes minus 32 as bytes in value order (the 64-byte unpacking of quant_avx512.c's
 * prep_q6_k), then words times the int8 scales of their 16 values. */
INLINE void dec_q6_k(const uint8_t *b, kdec *k, float mins_scale) {
    (void)mins_scale;
    _Alignas(64) int8_t q[QK_K];
    const __m512i m15 = _mm512_set1_epi8(15), m48 = _mm512_set1_epi8(0x30),
                  b32 = _mm512_set1_epi8(32);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i ql = _mm512_loadu_si512((const void *)(b + 64 * h));
        __m512i hh = _mm512_srlv_epi16(
            _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h))),
            halves_epi16(0, 2));
        __m512i lo = _mm512_ternarylogic_epi32(_mm512_and_si512(ql, m15), _mm512_slli_epi16(hh, 4),
                                               m48, 0xF8);
        __m512i hi = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m15), hh,
                                               m48, 0xF8);
        _mm512_store_si512((void *)(q + 128 * h), _mm512_sub_epi8(lo, b32));
        _mm512_store_si512((void *)(q + 128 * h + 64), _mm512_sub_epi8(hi, b32));
    }
    __m512i sc =
        _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192))));
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        __m512i v = _mm512_cvtepi8_epi16(_mm256_load_si256((const __m256i *)(q + 32 * j)));
        k->w[j] = _mm512_mullo_epi16(v, _mm512_permutexvar_epi16(pair_index(j), sc));
    }
    k->d = f16_at(b + 208);
    k->mins = _mm512_setzero_ps();
}

/* Q3_K: 2-bit codes from qs (bits 2g of byte 32h + l is value 128h + 32g + l), minus 4 where
 * the hmask bit 4h + g of byte l is clear; six-bit scales minus 32 per 16 values. */
INLINE void dec_q3_k(const uint8_t *b, kdec *k, float mins_scale) {
    (void)mins_scale;
    uint32_t sw[4];
    quant_scales_q3_k_words(b + 96, sw);
    __m512i sc = _mm512_castsi256_si512(_mm256_sub_epi16(
        _mm256_cvtepu8_epi16(_mm_setr_epi32((int)sw[0], (int)sw[1], (int)sw[2], (int)sw[3])),
        _mm256_set1_epi16(32)));
    __m512i hm = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)b));
    const __m512i three = _mm512_set1_epi16(3), four = _mm512_set1_epi16(4);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(b + 32 + 32 * h)));
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            int j = 4 * h + g;
            __m512i q = _mm512_and_si512(_mm512_srli_epi16(v, 2 * g), three);
            __mmask32 clear = _mm512_testn_epi16_mask(hm, _mm512_set1_epi16((short)(1 << j)));
            q = _mm512_mask_sub_epi16(q, clear, q, four);
            k->w[j] = _mm512_mullo_epi16(q, _mm512_permutexvar_epi16(pair_index(j), sc));
        }
    }
    k->d = f16_at(b + 108);
    k->mins = _mm512_setzero_ps();
}

/* Q2_K: 2-bit codes laid out as Q3_K's; scales are the low nibbles of 16 bytes, mins the high. */
INLINE void dec_q2_k(const uint8_t *b, kdec *k, float mins_scale) {
    __m128i raw = _mm_loadu_si128((const __m128i *)b);
    __m512i sc =
        _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(15))));
    const __m512i three = _mm512_set1_epi16(3);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(b + 16 + 32 * h)));
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            __m512i q = _mm512_and_si512(_mm512_srli_epi16(v, 2 * g), three);
            k->w[4 * h + g] =
                _mm512_mullo_epi16(q, _mm512_permutexvar_epi16(pair_index(4 * h + g), sc));
        }
    }
    k->d = f16_at(b + 80);
    __m512 m = _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(15))));
    k->mins = _mm512_mul_ps(_mm512_set1_ps(f16_at(b + 82) * mins_scale), m);
}

/* The 32 code-book values picked by the 16 low nibbles, then the 16 high nibbles, of p[0..15],
 * as int16 words (values 0..31 of a 32-value block in order). */
static inline __m512i lookup32(const uint8_t *p, __m256i book) {
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    v = _mm256_and_si256(
        _mm256_srlv_epi16(v, _mm256_setr_epi64x(0, 0, 0x0004000400040004, 0x0004000400040004)),
        _mm256_set1_epi8(15));
    return _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(book, v));
}
static inline __m256i book256(const int8_t kv[16]) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)kv));
}

/* IQ4_XS: each 32-value sub-block is an IQ4_NL block scaled by (ls - 32), ls six bits from a
 * nibble of scales_l and two bits of scales_h. */
INLINE void dec_iq4_xs(const uint8_t *b, kdec *k, float mins_scale) {
    (void)mins_scale;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i lo =
        _mm256_srlv_epi32(_mm256_set1_epi32((int)quant_rd32(b + 4)), _mm256_slli_epi32(lane, 2));
    __m256i hi =
        _mm256_srlv_epi32(_mm256_set1_epi32(quant_rd16(b + 2)), _mm256_slli_epi32(lane, 1));
    __m256i ls = _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(15)),
                                 _mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(3)), 4));
    ls = _mm256_sub_epi32(ls, _mm256_set1_epi32(32));
    int32_t mul[8];
    _mm256_storeu_si256((__m256i *)mul,
                        _mm256_or_si256(_mm256_and_si256(ls, _mm256_set1_epi32(0xFFFF)),
                                        _mm256_slli_epi32(ls, 16)));
    IN_MEMORY(mul);
    __m256i book = book256(quant_kvalues_iq4nl);
#pragma GCC unroll 8
    for (int s = 0; s < 8; s++)
        k->w[s] = _mm512_mullo_epi16(lookup32(b + 8 + 16 * s, book), _mm512_set1_epi32(mul[s]));
    k->d = f16_at(b);
    k->mins = _mm512_setzero_ps();
}

/* ---- 256-value types: dot and matrix product ------------------------------------------------ */

/* Weight rows stream from memory once per matvec; the hardware prefetcher alone leaves a core
 * well short of the DRAM bandwidth, so each block asks for the bytes PREFETCH_AHEAD later
 * (rows of a matrix are contiguous, so this runs into the next rows). */
enum { PREFETCH_AHEAD = 2048 };
INLINE void prefetch_ahead(const uint8_t *b, int bytes) {
    for (int i = 0; i < bytes; i += 64)
        _mm_prefetch((const char *)(b + PREFETCH_AHEAD + i), _MM_HINT_T0);
}
/* The matrix product keeps a block of rows in L2 while all tokens pass over it; the first pass
 * over a block fetches the next block into L2 as it goes: each block of weights it reads asks
 * for the same bytes of the row one block further on. */
static void prefetch_rows(const uint8_t *p, size_t bytes) {
    for (size_t i = 0; i < bytes; i += 64) _mm_prefetch((const char *)(p + i), _MM_HINT_T1);
}

typedef void (*kdec_fn)(const uint8_t *b, kdec *k, float mins_scale);

/* Sum of the 8 products w[k] . x[32k..] for one block into int32 lanes (16 products each). */
INLINE __m512i kdot(const kdec *k, const int16_t *x) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0;
#pragma GCC unroll 4
    for (int j = 0; j < 8; j += 2) {
        a0 = _mm512_dpwssd_epi32(a0, k->w[j], _mm512_loadu_si512((const void *)(x + 32 * j)));
        a1 = _mm512_dpwssd_epi32(a1, k->w[j + 1],
                                 _mm512_loadu_si512((const void *)(x + 32 * j + 32)));
    }
    return _mm512_add_epi32(a0, a1);
}

INLINE float dot_k(const uint8_t *b, const uint8_t *xq, int64_t n, int bytes, int mins,
                   kdec_fn dec) {
    const int16_t *xv = q16_vals(xq);
    const float *dx = q16_scales(xq, n);
    const int32_t *s = q16_sums(xq, n);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t g = 0; g < n / QK_K; g++, b += bytes) {
        prefetch_ahead(b, bytes);
        kdec k;
        dec(b, &k, dx[g]);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(kdot(&k, xv + QK_K * g)),
                              _mm512_set1_ps(k.d * dx[g]), acc);
        if (mins)
            acc = _mm512_fnmadd_ps(
                k.mins, _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(s + 16 * g))), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* The matrix product's blocking: tokens per pass (their accumulators and a decoded block fill
 * the 32 vector registers), the activation bytes a pass keeps in L1 (a slice of the row), and
 * the weight bytes of the rows that stay in L2 while every token passes over them. */
enum { MM_TOK = 8, MM_L1_BYTES = 16384, MM_L2_BYTES = 65536 };

/* Rows [r0, r1) times T tokens over blocks [g0, g1): y (+)= the partial dots. sx holds, per
 * token and block, the q16 sums times dx as floats (types with mins). */
INLINE void mm_k_pass(const uint8_t *w, size_t row_bytes, int64_t r0, int64_t r1,
                      const int16_t *const *xv, const float *const *dx, const float *sx, int64_t g0,
                      int64_t g1, int T, float *y, int64_t ldy, int first, int64_t pf_rows,
                      int bytes, int mins, kdec_fn dec) {
    size_t pf_dist = (size_t)(r1 - r0) * row_bytes; /* one row block on */
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *b = w + (size_t)r * row_bytes + (size_t)g0 * bytes;
        __m512 acc[MM_TOK];
        for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
        for (int64_t g = g0; g < g1; g++, b += bytes) {
            if (r < pf_rows) prefetch_rows(b + pf_dist, (size_t)bytes);
            kdec k;
            dec(b, &k, 1.0f);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                __m512 f = _mm512_cvtepi32_ps(kdot(&k, xv[t] + QK_K * g));
                acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(k.d * dx[t][g]), acc[t]);
                if (mins)
                    acc[t] = _mm512_fnmadd_ps(
                        k.mins, _mm512_loadu_ps(sx + (t * (g1 - g0) + g - g0) * 16), acc[t]);
            }
        }
        for (int t = 0; t < T; t++) {
            float v = _mm512_reduce_add_ps(acc[t]);
            y[t * ldy + r] = first ? v : y[t * ldy + r] + v;
        }
    }
}

/* Q5_K matvec (Q4_K's is dot_q4k_planes below): the dot with the "min" terms at half width. A sub-block's min m_j meets
 * the sum of its 32 activations, taken once per call as a float times dx (sx32); a block's 8
 * mins then cost one 256-bit convert, multiply and FMA (a 512-bit op takes both halves of the
 * pipes on Zen 4). The same products as dot_k, summed in another order. */
INLINE float dot_k4_sx(const uint8_t *b, const int16_t *xv, const float *dx, const float *sx32, int64_t n,
                       int bytes, kdec_fn dec) {
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t g = 0; g < n / QK_K; g++, b += bytes) {
        prefetch_ahead(b, bytes);
        kdec k;
        dec(b, &k, 0.0f); /* k.mins unused: the compiler drops it */
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(kdot(&k, xv + QK_K * g)),
                              _mm512_set1_ps(k.d * dx[g]), acc);
        __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)k.mins8)));
        accm = _mm256_fmadd_ps(_mm256_mul_ps(m, _mm256_set1_ps(f16_at(b + 2))),
                               _mm256_loadu_ps(sx32 + 8 * g), accm);
    }
    return _mm512_reduce_add_ps(_mm512_sub_ps(acc, _mm512_zextps256_ps512(accm)));
}

enum { SX32_MAX = 1024 }; /* rows of up to 32768 values take dot_k4_sx (Q5_K) or dot_q4k_planes */

/* The q16 row's sums per 32 values times their group's dx (the mins' operand of both). */
static void q16_sx32(const void *xq, int64_t n, float *sx32) {
    const float *dx = q16_scales(xq, n);
    const int32_t *s = q16_sums(xq, n);
    for (int64_t j = 0; j < n / 32; j++) sx32[j] = (float)(s[2 * j] + s[2 * j + 1]) * dx[j / 8];
}

/* Q4_K matvec without vpmullw (it and the dot products share one pipe on Zen 4, and the
 * multiplies were half of a block's work there: dropping them alone took the kernel from 19 to
 * 28 GB/s in L2). The q16 row is split into two byte planes, x = 256 h + l (h signed, l
 * unsigned); vpdpbusd sums each plane against the unscaled 4-bit codes, four products a lane
 * (|sum| <= 15300, a word), vpackssdw puts both planes' sums in words, and one vpdpwssd
 * multiplies them by the sub-block scales sc and 256 sc: 12 dot instructions a block instead of
 * 8 multiplies and 8 dots. A 64-byte load of codes holds two sub-blocks in its low nibbles
 * (0 and 2 of the first 64 bytes) and two in its high (1 and 3), so the planes keep each
 * block's values in the order 0 2 1 3 4 6 5 7 by 32-value sub-block. The integer sums equal
 * dot_k4_sx's (lanes of at most 4 * 2 * 7680 * 16128 < 2^30); the mins are taken as there. */
static void q4k_planes(const int16_t *xv, int64_t n, int8_t *xh, uint8_t *xl) {
    static const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int64_t g = 0; g < n / QK_K; g++)
        for (int k = 0; k < 8; k++) {
            __m512i v = _mm512_loadu_si512((const void *)(xv + QK_K * g + 32 * order[k]));
            _mm256_storeu_si256((__m256i *)(xh + QK_K * g + 32 * k), _mm512_cvtepi16_epi8(_mm512_srai_epi16(v, 8)));
            _mm256_storeu_si256((__m256i *)(xl + QK_K * g + 32 * k), _mm512_cvtepi16_epi8(v));
        }
}

/* vpshufb controls that make the scale words for the code vector of sub-blocks a (its low 256
 * bits) and b from the eight scale bytes in every 128-bit lane: after vpackssdw each lane holds
 * four words of l-plane sums, then four of h-plane sums, so sc four times (bytes sc, 0), then
 * 256 sc four times (bytes 0, sc; sc < 64). Index bytes with the top bit set give 0. */
static inline __m512i q4k_scale_control(int a, int b) {
    const __m512i sb = _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull, _mm512_set1_epi8((char)a), _mm512_set1_epi8((char)b));
    /* per lane: bytes 0, 2, 4, 6 and 9, 11, 13, 15 take the scale, the others are zero */
    return _mm512_mask_blend_epi8(0xAA55AA55AA55AA55ull, _mm512_set1_epi8((char)0x80), sb);
}

INLINE float dot_q4k_planes(const uint8_t *b, const int8_t *xh, const uint8_t *xl, const float *dx,
                            const float *sx32, int64_t n, const __m512i ctl[4]) {
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    const __m512i m15 = _mm512_set1_epi8(15);
    for (int64_t g = 0; g < n / QK_K; g++, b += QB_Q4_K) {
        prefetch_ahead(b, QB_Q4_K);
        uint32_t sw[4];
        quant_scale_min_k4_words(b + 4, sw);
        const __m512i scales = _mm512_set1_epi64((long long)((uint64_t)sw[1] << 32 | sw[0]));
        __m512i q0 = _mm512_loadu_si512((const void *)(b + 16)), q1 = _mm512_loadu_si512((const void *)(b + 80));
        __m512i codes[4] = {_mm512_and_si512(q0, m15), _mm512_and_si512(_mm512_srli_epi16(q0, 4), m15),
                            _mm512_and_si512(q1, m15), _mm512_and_si512(_mm512_srli_epi16(q1, 4), m15)};
        const int8_t *h = xh + QK_K * g;
        const uint8_t *l = xl + QK_K * g;
        __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            __m512i sh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes[v], _mm512_loadu_si512((const void *)(h + 64 * v)));
            __m512i sl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512((const void *)(l + 64 * v)), codes[v]);
            sum = _mm512_dpwssd_epi32(sum, _mm512_packs_epi32(sl, sh), _mm512_shuffle_epi8(scales, ctl[v]));
        }
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(f16_at(b) * dx[g]), acc);
        __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)((uint64_t)sw[3] << 32 | sw[2]))));
        accm = _mm256_fmadd_ps(_mm256_mul_ps(m, _mm256_set1_ps(f16_at(b + 2))), _mm256_loadu_ps(sx32 + 8 * g), accm);
    }
    return _mm512_reduce_add_ps(_mm512_sub_ps(acc, _mm512_zextps256_ps512(accm)));
}

/* One token of Q4_K rows [r0, r1). Not inlined into mm_k, so that its 68 KB of planes and sums
 * on the stack are not part of every matrix product's frame. */
__attribute__((noinline)) static void matvec_q4k_planes(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0,
                                                        int64_t r1, const void *xq, float *y) {
    _Alignas(64) float sx32[SX32_MAX];
    _Alignas(64) int8_t xh[SX32_MAX * 32];
    _Alignas(64) uint8_t xl[SX32_MAX * 32];
    const float *dx = q16_scales(xq, n);
    q16_sx32(xq, n, sx32);
    q4k_planes(q16_vals(xq), n, xh, xl);
    const __m512i ctl[4] = {q4k_scale_control(0, 2), q4k_scale_control(1, 3), q4k_scale_control(4, 6),
                            q4k_scale_control(5, 7)};
    for (int64_t r = r0; r < r1; r++) y[r] = dot_q4k_planes(w + (size_t)r * row_bytes, xh, xl, dx, sx32, n, ctl);
}

INLINE void mm_k(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                 const void *const *x, int n_tok, float *y, int64_t ldy, int bytes, int mins,
                 kdec_fn dec) {
    if (n_tok == 1 && dec == dec_q4_k && n / 32 <= SX32_MAX) {
        matvec_q4k_planes(w, row_bytes, n, r0, r1, x[0], y);
        return;
    }
    if (n_tok == 1 && mins == 2 && n / 32 <= SX32_MAX) {
        _Alignas(64) float sx32[SX32_MAX];
        const float *dx = q16_scales(x[0], n);
        q16_sx32(x[0], n, sx32);
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_k4_sx(w + (size_t)r * row_bytes, q16_vals(x[0]), dx, sx32, n, bytes, dec);
        return;
    }
    if (n_tok == 1) {
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_k(w + (size_t)r * row_bytes, x[0], n, bytes, mins, dec);
        return;
    }
    int64_t G = n / QK_K;
    int64_t block = MM_L2_BYTES / (int64_t)row_bytes > 0 ? MM_L2_BYTES / (int64_t)row_bytes : 1;
    _Alignas(64) float sx[MM_L1_BYTES / (QK_K * 2) * 16]; /* [T][slice blocks][16] */
    prefetch_rows(w + (size_t)r0 * row_bytes,
                  (size_t)((r1 - r0 < block ? r1 - r0 : block) * (int64_t)row_bytes));
    for (int64_t ra = r0; ra < r1; ra += block) {
        int64_t rb = ra + block < r1 ? ra + block : r1;
        /* the first pass prefetches, for rows below pf_next, the row one block on */
        int64_t pf_next = rb < r1 - (rb - ra) ? rb : r1 - (rb - ra);
        for (int t0 = 0; t0 < n_tok;) {
            int T = n_tok - t0 >= 8 ? 8 : n_tok - t0 >= 4 ? 4 : n_tok - t0 >= 2 ? 2 : 1;
            const int16_t *xv[MM_TOK];
            const float *dx[MM_TOK];
            for (int t = 0; t < T; t++)
                xv[t] = q16_vals(x[t0 + t]), dx[t] = q16_scales(x[t0 + t], n);
            /* blocks per slice: T tokens' activations of a slice fill MM_L1_BYTES */
            int64_t chunk = MM_L1_BYTES / (T * QK_K * 2);
            for (int64_t g0 = 0; g0 < G; g0 += chunk) {
                int64_t g1 = g0 + chunk < G ? g0 + chunk : G;
                if (mins)
                    for (int t = 0; t < T; t++)
                        for (int64_t g = g0; g < g1; g++) {
                            __m512i sv =
                                _mm512_loadu_si512((const void *)(q16_sums(x[t0 + t], n) + 16 * g));
                            _mm512_store_ps(
                                sx + (t * (g1 - g0) + g - g0) * 16,
                                _mm512_mul_ps(_mm512_cvtepi32_ps(sv), _mm512_set1_ps(dx[t][g])));
                        }
                float *yt = y + t0 * ldy;
                int64_t pf = t0 == 0 ? pf_next : 0;
                /* T is a constant in each instantiation: 8, 4, 2 or 1 tokens */
#define PASS(TT)                                                                                   \
    mm_k_pass(w, row_bytes, ra, rb, xv, dx, sx, g0, g1, TT, yt, ldy, g0 == 0, pf, bytes, mins, dec)
                switch (T) {
                case 8: PASS(8); break;
                case 4: PASS(4); break;
                case 2: PASS(2); break;
                default: PASS(1); break;
                }
#undef PASS
            }
            t0 += T;
        }
    }
}

#define K_KERNELS(name, BYTES, MINS)                                                               \
    static float dot_q16_##name(const void *row, const void *xq, int64_t n) {                      \
        return dot_k(row, xq, n, BYTES, MINS, dec_##name);                                         \
    }                                                                                              \
    static void matmul_q16_##name(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0,       \
                                  int64_t r1, const void *const *x, int n_tok, float *y,           \
                                  int64_t ldy) {                                                   \
        mm_k(w, row_bytes, n, r0, r1, x, n_tok, y, ldy, BYTES, MINS, dec_##name);                  \
    }

K_KERNELS(q2_k, QB_Q2_K, 1)
K_KERNELS(q3_k, QB_Q3_K, 0)
K_KERNELS(q4_k, QB_Q4_K, 2)
K_KERNELS(q5_k, QB_Q5_K, 2)
K_KERNELS(q6_k, QB_Q6_K, 0)
K_KERNELS(iq4_xs, QB_IQ4_XS, 0)

/* ---- 32-value types ------------------------------------------------------------------------- */

/* A decoded block: 32 codes as words, its scale, and its offset m (Q4_1, Q5_1; else 0). */
typedef struct bdec {
    __m512i w;
    float d, m;
} bdec;

/* The 16 bytes of nibbles at p as 32 bytes: low nibbles (values 0..15), then high (16..31). */
static inline __m256i nibbles32(const uint8_t *p) {
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(
        _mm256_srlv_epi16(v, _mm256_setr_epi64x(0, 0, 0x0004000400040004, 0x0004000400040004)),
        _mm256_set1_epi8(15));
}

INLINE void dec_q4_0(const uint8_t *b, bdec *o) {
    o->w = _mm512_cvtepi8_epi16(_mm256_sub_epi8(nibbles32(b + 2), _mm256_set1_epi8(8)));
    o->d = f16_at(b), o->m = 0;
}
INLINE void dec_q4_1(const uint8_t *b, bdec *o) {
    o->w = _mm512_cvtepu8_epi16(nibbles32(b + 4));
    o->d = f16_at(b), o->m = f16_at(b + 2);
}
/* Q5: bit j of qh is the fifth bit of value j. */
INLINE void dec_q5_0(const uint8_t *b, bdec *o) {
    __m256i v = nibbles32(b + 6);
    v = _mm256_mask_add_epi8(v, (__mmask32)quant_rd32(b + 2), v, _mm256_set1_epi8(16));
    o->w = _mm512_cvtepi8_epi16(_mm256_sub_epi8(v, _mm256_set1_epi8(16)));
    o->d = f16_at(b), o->m = 0;
}
INLINE void dec_q5_1(const uint8_t *b, bdec *o) {
    __m256i v = nibbles32(b + 8);
    v = _mm256_mask_add_epi8(v, (__mmask32)quant_rd32(b + 4), v, _mm256_set1_epi8(16));
    o->w = _mm512_cvtepu8_epi16(v);
    o->d = f16_at(b), o->m = f16_at(b + 2);
}
INLINE void dec_q8_0(const uint8_t *b, bdec *o) {
    o->w = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b + 2)));
    o->d = f16_at(b), o->m = 0;
}
INLINE void dec_iq4_nl(const uint8_t *b, bdec *o) {
    o->w = lookup32(b + 2, book256(quant_kvalues_iq4nl));
    o->d = f16_at(b), o->m = 0;
}
INLINE void dec_mxfp4(const uint8_t *b, bdec *o) {
    o->w = lookup32(b + 1, book256(quant_kvalues_mxfp4));
    o->d = quant_e8m0_half(b[0]), o->m = 0;
}

typedef void (*bdec_fn)(const uint8_t *b, bdec *o);

/* The blocks of one q16 group (nb of them, at most 8) of a row times one token: returns
 * sum_b d_b * (q_b . x_b) + m_b * (sum of x_b's q16 values), before the group's dx. */
INLINE __m512 group32(const uint8_t *b, const int16_t *x, const int32_t *s, int nb, int bytes,
                      int mins, bdec_fn dec) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    float m = 0;
    for (int i = 0; i < nb; i++, b += bytes) {
        bdec o;
        dec(b, &o);
        __m512i p = _mm512_dpwssd_epi32(_mm512_setzero_si512(), o.w,
                                        _mm512_loadu_si512((const void *)(x + 32 * i)));
        if (i % 2)
            a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(o.d), a1);
        else
            a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(o.d), a0);
        if (mins) m += o.m * (float)(s[2 * i] + s[2 * i + 1]);
    }
    a0 = _mm512_add_ps(a0, a1);
    return mins ? _mm512_add_ps(a0, _mm512_castps128_ps512(_mm_set_ss(m))) : a0;
}

INLINE float dot_b32(const uint8_t *b, const uint8_t *xq, int64_t n, int bytes, int mins,
                     bdec_fn dec) {
    const int16_t *xv = q16_vals(xq);
    const float *dx = q16_scales(xq, n);
    const int32_t *s = q16_sums(xq, n);
    __m512 acc = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g < n / Q16_GROUP; g++, b += 8 * bytes)
        acc = _mm512_fmadd_ps(group32(b, xv + Q16_GROUP * g, s + 16 * g, 8, bytes, mins, dec),
                              _mm512_set1_ps(dx[g]), acc);
    if (g * Q16_GROUP < n)
        acc = _mm512_fmadd_ps(
            group32(b, xv + Q16_GROUP * g, s + 16 * g, (int)(n / 32 % 8), bytes, mins, dec),
            _mm512_set1_ps(dx[g]), acc);
    return _mm512_reduce_add_ps(acc);
}

/* The matrix product for 32-value types. Summing one block per vpdpwssd would leave each block's
 * 32 products in 16 lanes, to be converted and scaled by its own d for every token. Instead the
 * 128-bit lanes of four blocks are transposed (quad_transpose), in the weights once per row and
 * group and in the activations once per pass: then four vpdpwssd leave lane j of the sum holding
 * block j's products, and one conversion and one FMA with (d_0 x4, d_1 x4, d_2 x4, d_3 x4) scale
 * all four, as for the 256-value types. */

/* The scales d (and offsets m) of a group's first nb blocks, 8 floats each, zero past nb: one
 * gather of the 4 bytes at each block's start, where GGML puts d (f16, or MXFP4's E8M0 byte)
 * and then m (Q4_1, Q5_1). */
INLINE void group_scales(const uint8_t *b, int bytes, int nb, int e8m0, __m256 *d, __m256 *m) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i idx = _mm256_mullo_epi32(lane, _mm256_set1_epi32(bytes));
    __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(nb), lane);
    __m256i raw = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)b, idx, live, 1);
    if (e8m0) { /* quant_e8m0_half: 2^(e - 128), a subnormal for e < 2; e = 0 past nb gives 0 */
        __m256i e = _mm256_and_si256(raw, _mm256_set1_epi32(0xFF));
        __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
        __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
        __m256i v = _mm256_blendv_epi8(normal, sub, _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e));
        *d = _mm256_and_ps(_mm256_castsi256_ps(v), _mm256_castsi256_ps(live));
        *m = _mm256_setzero_ps();
    } else {
        *d = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(raw));
        *m = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(raw, 16)));
    }
}

/* z[k] = lane k of v[0], v[1], v[2], v[3] (a 4 x 4 transpose of 128-bit lanes). */
INLINE void quad_transpose(const __m512i v[4], __m512i z[4]) {
    __m512i t0 = _mm512_shuffle_i64x2(v[0], v[1], 0x44),
            t1 = _mm512_shuffle_i64x2(v[0], v[1], 0xEE);
    __m512i t2 = _mm512_shuffle_i64x2(v[2], v[3], 0x44),
            t3 = _mm512_shuffle_i64x2(v[2], v[3], 0xEE);
    z[0] = _mm512_shuffle_i64x2(t0, t2, 0x88), z[1] = _mm512_shuffle_i64x2(t0, t2, 0xDD);
    z[2] = _mm512_shuffle_i64x2(t1, t3, 0x88), z[3] = _mm512_shuffle_i64x2(t1, t3, 0xDD);
}

/* A group of 8 blocks (the first nb present, the rest zero) as two transposed quads. */
INLINE void group_transpose(const __m512i v[8], __m512i z[8]) {
    quad_transpose(v, z);
    quad_transpose(v + 4, z + 4);
}

/* One pass: rows [r0, r1) times T tokens over groups [g0, g1). xt holds the tokens' transposed
 * activations [t][group][8 vectors], sf their sums as floats [t][group][16]. */
INLINE void mm_b32_pass(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                        const __m512i *xt, const float *sf, const float *const *dx, int64_t g0,
                        int64_t g1, int T, float *y, int64_t ldy, int first, int64_t pf_rows,
                        int bytes, int mins, int e8m0, bdec_fn dec) {
    const __m512i quad0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i quad1 = _mm512_add_epi32(quad0, _mm512_set1_epi32(4));
    const __m512i pairs = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    int64_t ng = g1 - g0;
    size_t pf_dist = (size_t)(r1 - r0) * row_bytes; /* one row block on */
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *b = w + (size_t)r * row_bytes + (size_t)g0 * 8 * bytes;
        __m512 acc[MM_TOK];
        for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
        for (int64_t g = g0; g < g1; g++) {
            int nb = n - g * Q16_GROUP >= Q16_GROUP ? 8 : (int)((n - g * Q16_GROUP) / 32);
            if (r < pf_rows) prefetch_rows(b + pf_dist, (size_t)(nb * bytes));
            __m512i v[8], z[8];
            if (nb == 8) {
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++) {
                    bdec o;
                    dec(b + i * bytes, &o);
                    v[i] = o.w;
                }
            } else { /* the row's last, partial group */
                for (int i = 0; i < 8; i++) {
                    bdec o;
                    if (i < nb) dec(b + i * bytes, &o);
                    v[i] = i < nb ? o.w : _mm512_setzero_si512();
                }
            }
            __m256 ds, ms;
            group_scales(b, bytes, nb, e8m0, &ds, &ms);
            b += nb * bytes;
            group_transpose(v, z);
            __m512 dv = _mm512_castps256_ps512(ds);
            __m512 d0 = _mm512_permutexvar_ps(quad0, dv), d1 = _mm512_permutexvar_ps(quad1, dv);
            __m512 mv = mins ? _mm512_permutexvar_ps(pairs, _mm512_castps256_ps512(ms))
                             : _mm512_setzero_ps();
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const __m512i *x = xt + (t * ng + g - g0) * 8;
                __m512i i0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), z[0], x[0]);
                __m512i i1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), z[4], x[4]);
#pragma GCC unroll 3
                for (int k = 1; k < 4; k++) {
                    i0 = _mm512_dpwssd_epi32(i0, z[k], x[k]);
                    i1 = _mm512_dpwssd_epi32(i1, z[4 + k], x[4 + k]);
                }
                __m512 gsum = _mm512_mul_ps(_mm512_cvtepi32_ps(i0), d0);
                gsum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), d1, gsum);
                if (mins)
                    gsum = _mm512_fmadd_ps(mv, _mm512_load_ps(sf + (t * ng + g - g0) * 16), gsum);
                acc[t] = _mm512_fmadd_ps(gsum, _mm512_set1_ps(dx[t][g]), acc[t]);
            }
        }
        for (int t = 0; t < T; t++) {
            float v = _mm512_reduce_add_ps(acc[t]);
            y[t * ldy + r] = first ? v : y[t * ldy + r] + v;
        }
    }
}

INLINE void mm_b32(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                   const void *const *x, int n_tok, float *y, int64_t ldy, int bytes, int mins,
                   int e8m0, bdec_fn dec) {
    if (n_tok == 1) {
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_b32(w + (size_t)r * row_bytes, x[0], n, bytes, mins, dec);
        return;
    }
    int64_t G = q16_groups(n);
    int64_t block = MM_L2_BYTES / (int64_t)row_bytes > 0 ? MM_L2_BYTES / (int64_t)row_bytes : 1;
    __m512i xt[MM_L1_BYTES / 64];                              /* [T][slice groups][8] */
    _Alignas(64) float sf[MM_L1_BYTES / (Q16_GROUP * 2) * 16]; /* [T][slice groups][16] */
    prefetch_rows(w + (size_t)r0 * row_bytes,
                  (size_t)((r1 - r0 < block ? r1 - r0 : block) * (int64_t)row_bytes));
    for (int64_t ra = r0; ra < r1; ra += block) {
        int64_t rb = ra + block < r1 ? ra + block : r1;
        int64_t pf_next = rb < r1 - (rb - ra) ? rb : r1 - (rb - ra);
        for (int t0 = 0; t0 < n_tok;) {
            int T = n_tok - t0 >= 8 ? 8 : n_tok - t0 >= 4 ? 4 : n_tok - t0 >= 2 ? 2 : 1;
            const float *dx[MM_TOK];
            for (int t = 0; t < T; t++) dx[t] = q16_scales(x[t0 + t], n);
            int64_t chunk = MM_L1_BYTES / (T * Q16_GROUP * 2);
            for (int64_t g0 = 0; g0 < G; g0 += chunk) {
                int64_t g1 = g0 + chunk < G ? g0 + chunk : G, ng = g1 - g0;
                /* the pass's activations, transposed as the weights will be */
                for (int t = 0; t < T; t++) {
                    const int16_t *xv = q16_vals(x[t0 + t]);
                    const int32_t *s = q16_sums(x[t0 + t], n);
                    for (int64_t g = g0; g < g1; g++) {
                        int nb =
                            n - g * Q16_GROUP >= Q16_GROUP ? 8 : (int)((n - g * Q16_GROUP) / 32);
                        __m512i v[8];
                        for (int i = 0; i < 8; i++)
                            v[i] = i < nb ? _mm512_loadu_si512(
                                                (const void *)(xv + Q16_GROUP * g + 32 * i))
                                          : _mm512_setzero_si512();
                        group_transpose(v, xt + (t * ng + g - g0) * 8);
                        if (mins) { /* m_i (paired) times the sums of 16 is m times each block's sum */
                            __m512i sv = _mm512_maskz_loadu_epi32((__mmask16)((1u << (2 * nb)) - 1),
                                                                  s + 16 * g);
                            _mm512_store_ps(sf + (t * ng + g - g0) * 16, _mm512_cvtepi32_ps(sv));
                        }
                    }
                }
                float *yt = y + t0 * ldy;
                int64_t pf = t0 == 0 ? pf_next : 0;
#define PASS(TT)                                                                                   \
    mm_b32_pass(w, row_bytes, n, ra, rb, xt, sf, dx, g0, g1, TT, yt, ldy, g0 == 0, pf, bytes,      \
                mins, e8m0, dec)
                switch (T) {
                case 8: PASS(8); break;
                case 4: PASS(4); break;
                case 2: PASS(2); break;
                default: PASS(1); break;
                }
#undef PASS
            }
            t0 += T;
        }
    }
}

#define B32_KERNELS(name, BYTES, MINS, E8M0)                                                       \
    static float dot_q16_##name(const void *row, const void *xq, int64_t n) {                      \
        return dot_b32(row, xq, n, BYTES, MINS, dec_##name);                                       \
    }                                                                                              \
    static void matmul_q16_##name(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0,       \
                                  int64_t r1, const void *const *x, int n_tok, float *y,           \
                                  int64_t ldy) {                                                   \
        mm_b32(w, row_bytes, n, r0, r1, x, n_tok, y, ldy, BYTES, MINS, E8M0, dec_##name);          \
    }

B32_KERNELS(q4_0, QB_Q4_0, 0, 0)
B32_KERNELS(q4_1, QB_Q4_1, 1, 0)
B32_KERNELS(q5_0, QB_Q5_0, 0, 0)
B32_KERNELS(q5_1, QB_Q5_1, 1, 0)
B32_KERNELS(q8_0, QB_Q8_0, 0, 0)
B32_KERNELS(iq4_nl, QB_IQ4_NL, 0, 0)
B32_KERNELS(mxfp4, QB_MXFP4, 0, 1)

/* ---- table ---------------------------------------------------------------------------------- */

const quant_kernels quant_q16_kernels_avx512 = Q16_KERNELS("avx512", q16_quantize);
