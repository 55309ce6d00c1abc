/* quant_q16_avx2.c - AVX2 kernels for q16 activations (quant.h): quantize, dot, and the matrix
 * product over several tokens. Built with -mavx2 -mfma -mf16c and called only when quant_init
 * found those.
 *
 * Not here: the format and the scalar reference (quant_q16.c) these are tested against, the
 * AVX-512 kernels (quant_q16_avx512.c, whose header explains the approach), dispatch (quant.c).
 *
 * Same arithmetic as the AVX-512 kernels with 16-word vectors and vpmaddwd (16 products summed
 * pairwise into 8 int32 lanes) plus an add, as AVX2 has no fused form. A 256-value block is
 * decoded 64 values at a time (four vectors), codes premultiplied by their integer sub-block
 * scales; an int32 lane then collects 2 products per vpmaddwd, so the kernels convert to float
 * after every 8 of them (16 products of at most 4096 * 32767 per lane, below 2^31).
 */
#include <immintrin.h>
#include <string.h>

#include "quant_simd.h"

#define INLINE static inline __attribute__((always_inline))

static inline float f16_at(const uint8_t *p) { return _cvtsh_ss(quant_rd16(p)); }
#define IN_MEMORY(x) __asm__ volatile("" : "+m"(x))

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* ---- quantize ----------------------------------------------------------------------------- */

static void q16_quantize(const float *x, int64_t n, void *xq) {
    uint8_t *out = xq;
    int16_t *q = (int16_t *)out;
    float *d = (float *)(out + 2 * n);
    int32_t *s = (int32_t *)(out + 2 * n + 4 * q16_groups(n));
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 inf = _mm256_set1_ps(__builtin_inff());
    const __m256i lim = _mm256_set1_epi32(Q16_MAX), nlim = _mm256_set1_epi32(-Q16_MAX);
    for (int64_t g = 0; g < q16_groups(n); g++) {
        int64_t i0 = g * Q16_GROUP, len = n - i0 < Q16_GROUP ? n - i0 : Q16_GROUP;
        __m256 m = _mm256_setzero_ps(), bad = m;
        for (int64_t i = i0; i < i0 + len; i += 8) {
            __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ)); /* NaN or infinite */
            m = _mm256_max_ps(m, a);
        }
        int nonfinite = _mm256_movemask_ps(bad) != 0;
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = nonfinite ? 0 : _mm_cvtss_f32(m4);
        float id = amax >= Q16_TINY ? Q16_MAX / amax : 0;
        d[g] = nonfinite ? __builtin_nanf("") : amax >= Q16_TINY ? amax / Q16_MAX : 0;
        __m256 vid = _mm256_set1_ps(id);
        for (int64_t i = i0; i < i0 + len; i += 16) {
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vid));
            __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vid));
            a = _mm256_max_epi32(_mm256_min_epi32(a, lim), nlim);
            b = _mm256_max_epi32(_mm256_min_epi32(b, lim), nlim);
            if (nonfinite) a = b = _mm256_setzero_si256();
            __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
            _mm256_storeu_si256((__m256i *)(q + i), p);
            s[i / 16] = hsum_epi32(_mm256_add_epi32(a, b));
        }
    }
    size_t used = (size_t)(2 * n + 4 * q16_groups(n) + 4 * (n / 16));
    memset(out + used, 0, quant_q16_bytes(n) - used);
}

/* ---- 256-value types ------------------------------------------------------------------------ */

/* What a block's chunk decoders share: sc[i] the integer scale of 16-value piece i (as a word to
 * broadcast), and for types with mins, mins[i] = dmin * m[i] * mins_scale per 16 values. */
typedef struct kprep {
    int16_t sc[16];
    float d;
    float mins[16];
} kprep;

static inline __m256i bytes16(const uint8_t *p) {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
}
static inline __m256i bcast_sc(const kprep *k, int i) { return _mm256_set1_epi16(k->sc[i]); }

/* Q4_K/Q5_K: sc per 16 values (sub-block j covers pieces 2j, 2j+1), mins likewise. */
INLINE void prep_k4(const uint8_t *b, kprep *k, float mins_scale) {
    uint32_t sw[4];
    quant_scale_min_k4_words(b + 4, sw);
    __m128i v = _mm_setr_epi32((int)sw[0], (int)sw[1], (int)sw[2], (int)sw[3]);
    __m128i sc = _mm_unpacklo_epi8(v, v), m = _mm_unpackhi_epi8(v, v); /* each byte twice */
    _mm256_storeu_si256((__m256i *)k->sc, _mm256_cvtepu8_epi16(sc));
    __m256 dmin = _mm256_set1_ps(f16_at(b + 2) * mins_scale);
    _mm256_storeu_ps(k->mins, _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m))));
    _mm256_storeu_ps(
        k->mins + 8,
        _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(m, 8)))));
    k->d = f16_at(b);
}

/* Chunk decoders: w[j] = the 16 values 64c + 16j .. +15, times their scales. */
INLINE void dec_q4_k(const uint8_t *b, const kprep *k, int c, __m256i w[4]) {
    const uint8_t *qs = b + 16 + 32 * c;
    __m256i a = bytes16(qs), e = bytes16(qs + 16), m15 = _mm256_set1_epi16(15);
    w[0] = _mm256_mullo_epi16(_mm256_and_si256(a, m15), bcast_sc(k, 4 * c));
    w[1] = _mm256_mullo_epi16(_mm256_and_si256(e, m15), bcast_sc(k, 4 * c + 1));
    w[2] = _mm256_mullo_epi16(_mm256_srli_epi16(a, 4), bcast_sc(k, 4 * c + 2));
    w[3] = _mm256_mullo_epi16(_mm256_srli_epi16(e, 4), bcast_sc(k, 4 * c + 3));
}

/* Bit s of each word of h moved to bit 4 (value 16). */
static inline __m256i bit_to_16(__m256i h, int s) {
    __m256i t = s >= 4 ? _mm256_srli_epi16(h, s - 4) : _mm256_slli_epi16(h, 4 - s);
    return _mm256_and_si256(t, _mm256_set1_epi16(16));
}

INLINE void dec_q5_k(const uint8_t *b, const kprep *k, int c, __m256i w[4]) {
    const uint8_t *qs = b + 48 + 32 * c;
    __m256i a = bytes16(qs), e = bytes16(qs + 16), m15 = _mm256_set1_epi16(15);
    __m256i ha = bytes16(b + 16), he = bytes16(b + 32);
    w[0] = _mm256_or_si256(_mm256_and_si256(a, m15), bit_to_16(ha, 2 * c));
    w[1] = _mm256_or_si256(_mm256_and_si256(e, m15), bit_to_16(he, 2 * c));
    w[2] = _mm256_or_si256(_mm256_srli_epi16(a, 4), bit_to_16(ha, 2 * c + 1));
    w[3] = _mm256_or_si256(_mm256_srli_epi16(e, 4), bit_to_16(he, 2 * c + 1));
    for (int j = 0; j < 4; j++) w[j] = _mm256_mullo_epi16(w[j], bcast_sc(k, 4 * c + j));
}

/* Q6_K, Q3_K, Q2_K: chunk c is half h = c / 2; piece j covers 2-bit group g = 2 (c % 2) + j / 2
 * and lanes l0 = 16 (j % 2), i.e. values 128h + 32g + l0 .. +15, whose scale is 8h + 2g + j % 2
 * = 4c + j: the pieces are in value order. */
INLINE void prep_q6_k(const uint8_t *b, kprep *k, float mins_scale) {
    (void)mins_scale;
    _mm256_storeu_si256((__m256i *)k->sc,
                        _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192))));
    k->d = f16_at(b + 208);
}

INLINE void dec_q6_k(const uint8_t *b, const kprep *k, int c, __m256i w[4]) {
    int h = c / 2;
    const __m256i m15 = _mm256_set1_epi16(15), m48 = _mm256_set1_epi16(0x30),
                  b32 = _mm256_set1_epi16(32);
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        int g = 2 * (c % 2) + j / 2, l0 = 16 * (j % 2);
        __m256i lo = bytes16(b + 64 * h + 32 * (g % 2) + l0);
        __m256i hi = bytes16(b + 128 + 32 * h + l0);
        lo = g / 2 ? _mm256_srli_epi16(lo, 4) : _mm256_and_si256(lo, m15);
        hi = 2 * g <= 4 ? _mm256_slli_epi16(hi, 4 - 2 * g) : _mm256_srli_epi16(hi, 2 * g - 4);
        __m256i q = _mm256_sub_epi16(_mm256_or_si256(lo, _mm256_and_si256(hi, m48)), b32);
        w[j] = _mm256_mullo_epi16(q, bcast_sc(k, 4 * c + j));
    }
}

INLINE void prep_q3_k(const uint8_t *b, kprep *k, float mins_scale) {
    (void)mins_scale;
    uint32_t sw[4];
    quant_scales_q3_k_words(b + 96, sw);
    __m256i sc =
        _mm256_cvtepu8_epi16(_mm_setr_epi32((int)sw[0], (int)sw[1], (int)sw[2], (int)sw[3]));
    _mm256_storeu_si256((__m256i *)k->sc, _mm256_sub_epi16(sc, _mm256_set1_epi16(32)));
    k->d = f16_at(b + 108);
}

INLINE void dec_q3_k(const uint8_t *b, const kprep *k, int c, __m256i w[4]) {
    int h = c / 2;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        int g = 2 * (c % 2) + j / 2, l0 = 16 * (j % 2);
        __m256i q = _mm256_and_si256(_mm256_srli_epi16(bytes16(b + 32 + 32 * h + l0), 2 * g),
                                     _mm256_set1_epi16(3));
        __m256i hm =
            _mm256_and_si256(bytes16(b + l0), _mm256_set1_epi16((short)(1 << (4 * h + g))));
        /* a clear high bit subtracts 4 */
        q = _mm256_sub_epi16(q, _mm256_and_si256(_mm256_cmpeq_epi16(hm, _mm256_setzero_si256()),
                                                 _mm256_set1_epi16(4)));
        w[j] = _mm256_mullo_epi16(q, bcast_sc(k, 4 * c + j));
    }
}

INLINE void prep_q2_k(const uint8_t *b, kprep *k, float mins_scale) {
    __m128i raw = _mm_loadu_si128((const __m128i *)b), m15 = _mm_set1_epi8(15);
    _mm256_storeu_si256((__m256i *)k->sc, _mm256_cvtepu8_epi16(_mm_and_si128(raw, m15)));
    __m128i m = _mm_and_si128(_mm_srli_epi16(raw, 4), m15);
    __m256 dmin = _mm256_set1_ps(f16_at(b + 82) * mins_scale);
    _mm256_storeu_ps(k->mins, _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m))));
    _mm256_storeu_ps(
        k->mins + 8,
        _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(m, 8)))));
    k->d = f16_at(b + 80);
}

INLINE void dec_q2_k(const uint8_t *b, const kprep *k, int c, __m256i w[4]) {
    int h = c / 2;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        int g = 2 * (c % 2) + j / 2, l0 = 16 * (j % 2);
        __m256i q = _mm256_and_si256(_mm256_srli_epi16(bytes16(b + 16 + 32 * h + l0), 2 * g),
                                     _mm256_set1_epi16(3));
        w[j] = _mm256_mullo_epi16(q, bcast_sc(k, 4 * c + j));
    }
}

/* The 16 code-book values of p's low nibbles and of its high nibbles, as words. */
static inline void lookup16(const uint8_t *p, const int8_t kv[16], __m256i *lo, __m256i *hi) {
    __m128i book = _mm_loadu_si128((const __m128i *)kv), v = _mm_loadu_si128((const __m128i *)p);
    __m128i m = _mm_set1_epi8(15);
    *lo = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(book, _mm_and_si128(v, m)));
    *hi = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(book, _mm_and_si128(_mm_srli_epi16(v, 4), m)));
}

/* IQ4_XS: sub-block s's scale ls - 32, ls six bits from nibble s of scales_l and two bits of
 * scales_h, for both of its 16-value pieces. */
INLINE void prep_iq4_xs(const uint8_t *b, kprep *k, float mins_scale) {
    (void)mins_scale;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i lo =
        _mm256_srlv_epi32(_mm256_set1_epi32((int)quant_rd32(b + 4)), _mm256_slli_epi32(lane, 2));
    __m256i hi =
        _mm256_srlv_epi32(_mm256_set1_epi32(quant_rd16(b + 2)), _mm256_slli_epi32(lane, 1));
    __m256i ls = _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(15)),
                                 _mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(3)), 4));
    ls = _mm256_sub_epi32(ls, _mm256_set1_epi32(32));
    /* each dword's low word twice: the pieces 2s, 2s + 1 */
    __m256i pair =
        _mm256_or_si256(_mm256_and_si256(ls, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(ls, 16));
    _mm256_storeu_si256((__m256i *)k->sc, pair);
    k->d = f16_at(b);
}

INLINE void dec_iq4_xs(const uint8_t *b, const kprep *k, int c, __m256i w[4]) {
    lookup16(b + 8 + 32 * c, quant_kvalues_iq4nl, &w[0], &w[1]);
    lookup16(b + 8 + 32 * c + 16, quant_kvalues_iq4nl, &w[2], &w[3]);
    for (int j = 0; j < 4; j++) w[j] = _mm256_mullo_epi16(w[j], bcast_sc(k, 4 * c + j));
}

typedef void (*kprep_fn)(const uint8_t *b, kprep *k, float mins_scale);
typedef void (*kchunk_fn)(const uint8_t *b, const kprep *k, int c, __m256i w[4]);

/* The 4 products of a chunk's pieces with x[64c ..], added to acc. */
static inline __m256i chunk_dot(__m256i acc, const __m256i w[4], const int16_t *x) {
    __m256i p0 = _mm256_madd_epi16(w[0], _mm256_loadu_si256((const __m256i *)x));
    __m256i p1 = _mm256_madd_epi16(w[1], _mm256_loadu_si256((const __m256i *)(x + 16)));
    __m256i p2 = _mm256_madd_epi16(w[2], _mm256_loadu_si256((const __m256i *)(x + 32)));
    __m256i p3 = _mm256_madd_epi16(w[3], _mm256_loadu_si256((const __m256i *)(x + 48)));
    return _mm256_add_epi32(acc,
                            _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
}

/* Sum of mins[i] times the 16 sums of 16 values (as floats, times scale). */
static inline __m256 mins_dot(const kprep *k, const float *sx) {
    return _mm256_fmadd_ps(_mm256_loadu_ps(k->mins), _mm256_loadu_ps(sx),
                           _mm256_mul_ps(_mm256_loadu_ps(k->mins + 8), _mm256_loadu_ps(sx + 8)));
}

INLINE float dot_k(const uint8_t *b, const uint8_t *xq, int64_t n, int bytes, int mins,
                   kprep_fn prep, kchunk_fn dec) {
    const int16_t *xv = q16_vals(xq);
    const float *dx = q16_scales(xq, n);
    const int32_t *s = q16_sums(xq, n);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t g = 0; g < n / QK_K; g++, b += bytes, xv += QK_K) {
        _mm_prefetch((const char *)(b + 2048), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + 2048 + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + 2048 + 128), _MM_HINT_T0);
        kprep k;
        prep(b, &k, dx[g]);
        IN_MEMORY(k);
        __m256i i0 = _mm256_setzero_si256(), i1 = i0, w[4];
        dec(b, &k, 0, w), i0 = chunk_dot(i0, w, xv);
        dec(b, &k, 1, w), i0 = chunk_dot(i0, w, xv + 64);
        dec(b, &k, 2, w), i1 = chunk_dot(i1, w, xv + 128);
        dec(b, &k, 3, w), i1 = chunk_dot(i1, w, xv + 192);
        __m256 f = _mm256_add_ps(_mm256_cvtepi32_ps(i0), _mm256_cvtepi32_ps(i1));
        acc = _mm256_fmadd_ps(f, _mm256_set1_ps(k.d * dx[g]), acc);
        if (mins) {
            __m256 s0 = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(s + 16 * g)));
            __m256 s1 = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(s + 16 * g + 8)));
            acc = _mm256_fnmadd_ps(_mm256_loadu_ps(k.mins), s0, acc);
            acc = _mm256_fnmadd_ps(_mm256_loadu_ps(k.mins + 8), s1, acc);
        }
    }
    return hsum(acc);
}

/* Tokens per pass, the activation bytes a pass keeps in L1, the weight bytes of a block of rows
 * kept in L2 while every token passes over it (as in the AVX-512 file, with 16 registers). */
enum { MM_TOK = 4, MM_L1_BYTES = 16384, MM_L2_BYTES = 65536 };

/* Rows [r0, r1) times T tokens over blocks [g0, g1): y (+)= the partial dots; rows below
 * pf_rows prefetch the row one block on (the blocking of quant_q16_avx512.c's mm_k). */
INLINE void mm_k_pass(const uint8_t *w, size_t row_bytes, int64_t r0, int64_t r1,
                      const int16_t *const *xv, const float *const *dx, const float *sx, int64_t g0,
                      int64_t g1, int T, float *y, int64_t ldy, int first, int64_t pf_rows,
                      int bytes, int mins, kprep_fn prep, kchunk_fn dec) {
    size_t pf_dist = (size_t)(r1 - r0) * row_bytes;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *b = w + (size_t)r * row_bytes + (size_t)g0 * bytes;
        __m256 acc[MM_TOK];
        for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
        for (int64_t g = g0; g < g1; g++, b += bytes) {
            if (r < pf_rows)
                for (int i = 0; i < bytes; i += 64)
                    _mm_prefetch((const char *)(b + pf_dist + i), _MM_HINT_T1);
            kprep k;
            prep(b, &k, 1.0f);
            IN_MEMORY(k);
            __m256i i[MM_TOK], wv[4];
            for (int half = 0; half < 2; half++) {
                for (int t = 0; t < T; t++) i[t] = _mm256_setzero_si256();
                for (int c = 2 * half; c < 2 * half + 2; c++) {
                    dec(b, &k, c, wv);
                    for (int t = 0; t < T; t++)
                        i[t] = chunk_dot(i[t], wv, xv[t] + QK_K * g + 64 * c);
                }
                for (int t = 0; t < T; t++)
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i[t]),
                                             _mm256_set1_ps(k.d * dx[t][g]), acc[t]);
            }
            if (mins)
                for (int t = 0; t < T; t++)
                    acc[t] =
                        _mm256_sub_ps(acc[t], mins_dot(&k, sx + (t * (g1 - g0) + g - g0) * 16));
        }
        for (int t = 0; t < T; t++) {
            float v = hsum(acc[t]);
            y[t * ldy + r] = first ? v : y[t * ldy + r] + v;
        }
    }
}

INLINE void mm_k(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                 const void *const *x, int n_tok, float *y, int64_t ldy, int bytes, int mins,
                 kprep_fn prep, kchunk_fn dec) {
    if (n_tok == 1) {
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_k(w + (size_t)r * row_bytes, x[0], n, bytes, mins, prep, dec);
        return;
    }
    int64_t G = n / QK_K;
    int64_t block = MM_L2_BYTES / (int64_t)row_bytes > 0 ? MM_L2_BYTES / (int64_t)row_bytes : 1;
    float sx[MM_L1_BYTES / (QK_K * 2) * 16];
    for (int64_t ra = r0; ra < r1; ra += block) {
        int64_t rb = ra + block < r1 ? ra + block : r1;
        int64_t pf_next = rb < r1 - (rb - ra) ? rb : r1 - (rb - ra);
        for (int t0 = 0; t0 < n_tok;) {
            int T = n_tok - t0 >= 4 ? 4 : n_tok - t0 >= 2 ? 2 : 1;
            const int16_t *xv[MM_TOK];
            const float *dx[MM_TOK];
            for (int t = 0; t < T; t++)
                xv[t] = q16_vals(x[t0 + t]), dx[t] = q16_scales(x[t0 + t], n);
            int64_t chunk = MM_L1_BYTES / (T * QK_K * 2);
            for (int64_t g0 = 0; g0 < G; g0 += chunk) {
                int64_t g1 = g0 + chunk < G ? g0 + chunk : G;
                if (mins)
                    for (int t = 0; t < T; t++)
                        for (int64_t g = g0; g < g1; g++)
                            for (int i = 0; i < 16; i++)
                                sx[(t * (g1 - g0) + g - g0) * 16 + i] =
                                    (float)q16_sums(x[t0 + t], n)[16 * g + i] * dx[t][g];
                float *yt = y + t0 * ldy;
                int64_t pf = t0 == 0 ? pf_next : 0;
                /* T is a constant in each instantiation: 4, 2 or 1 tokens */
#define PASS(TT)                                                                                   \
    mm_k_pass(w, row_bytes, ra, rb, xv, dx, sx, g0, g1, TT, yt, ldy, g0 == 0, pf, bytes, mins,     \
              prep, dec)
                switch (T) {
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

#define K_KERNELS(name, BYTES, MINS, prep)                                                         \
    static float dot_q16_##name(const void *row, const void *xq, int64_t n) {                      \
        return dot_k(row, xq, n, BYTES, MINS, prep, dec_##name);                                   \
    }                                                                                              \
    static void matmul_q16_##name(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0,       \
                                  int64_t r1, const void *const *x, int n_tok, float *y,           \
                                  int64_t ldy) {                                                   \
        mm_k(w, row_bytes, n, r0, r1, x, n_tok, y, ldy, BYTES, MINS, prep, dec_##name);            \
    }

K_KERNELS(q2_k, QB_Q2_K, 1, prep_q2_k)
K_KERNELS(q3_k, QB_Q3_K, 0, prep_q3_k)
K_KERNELS(q4_k, QB_Q4_K, 1, prep_k4)
K_KERNELS(q5_k, QB_Q5_K, 1, prep_k4)
K_KERNELS(q6_k, QB_Q6_K, 0, prep_q6_k)
K_KERNELS(iq4_xs, QB_IQ4_XS, 0, prep_iq4_xs)

/* ---- 32-value types ------------------------------------------------------------------------- */

/* A decoded block: values 0..15 and 16..31 as words, its scale and offset m (or 0). */
typedef struct bdec {
    __m256i lo, hi;
    float d, m;
} bdec;

static inline void nibble_words(const uint8_t *p, int offset, bdec *o) {
    __m128i v = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    __m256i off = _mm256_set1_epi16((short)offset);
    o->lo = _mm256_add_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(v, m)), off);
    o->hi = _mm256_add_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m)), off);
}
/* bit j of qh adds 16 to value j */
static inline void fifth_bits(uint32_t qh, bdec *o) {
    const __m256i bit = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                          8192, 16384, -32768);
    __m256i lo = _mm256_set1_epi16((short)(qh & 0xFFFF)), hi = _mm256_set1_epi16((short)(qh >> 16));
    __m256i sixteen = _mm256_set1_epi16(16);
    o->lo = _mm256_add_epi16(
        o->lo, _mm256_and_si256(_mm256_cmpeq_epi16(_mm256_and_si256(lo, bit), bit), sixteen));
    o->hi = _mm256_add_epi16(
        o->hi, _mm256_and_si256(_mm256_cmpeq_epi16(_mm256_and_si256(hi, bit), bit), sixteen));
}

INLINE void dec_q4_0(const uint8_t *b, bdec *o) {
    nibble_words(b + 2, -8, o), o->d = f16_at(b), o->m = 0;
}
INLINE void dec_q4_1(const uint8_t *b, bdec *o) {
    nibble_words(b + 4, 0, o), o->d = f16_at(b), o->m = f16_at(b + 2);
}
INLINE void dec_q5_0(const uint8_t *b, bdec *o) {
    nibble_words(b + 6, -16, o);
    fifth_bits(quant_rd32(b + 2), o);
    o->d = f16_at(b), o->m = 0;
}
INLINE void dec_q5_1(const uint8_t *b, bdec *o) {
    nibble_words(b + 8, 0, o);
    fifth_bits(quant_rd32(b + 4), o);
    o->d = f16_at(b), o->m = f16_at(b + 2);
}
INLINE void dec_q8_0(const uint8_t *b, bdec *o) {
    o->lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 2)));
    o->hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 18)));
    o->d = f16_at(b), o->m = 0;
}
INLINE void dec_iq4_nl(const uint8_t *b, bdec *o) {
    lookup16(b + 2, quant_kvalues_iq4nl, &o->lo, &o->hi);
    o->d = f16_at(b), o->m = 0;
}
INLINE void dec_mxfp4(const uint8_t *b, bdec *o) {
    lookup16(b + 1, quant_kvalues_mxfp4, &o->lo, &o->hi);
    o->d = quant_e8m0_half(b[0]), o->m = 0;
}

typedef void (*bdec_fn)(const uint8_t *b, bdec *o);

static inline __m256 block_dot(const bdec *o, const int16_t *x) {
    __m256i p =
        _mm256_add_epi32(_mm256_madd_epi16(o->lo, _mm256_loadu_si256((const __m256i *)x)),
                         _mm256_madd_epi16(o->hi, _mm256_loadu_si256((const __m256i *)(x + 16))));
    return _mm256_cvtepi32_ps(p);
}

/* One q16 group of nb blocks of a row with one token, before the group's dx. */
INLINE __m256 group32(const uint8_t *b, const int16_t *x, const int32_t *s, int nb, int bytes,
                      int mins, bdec_fn dec) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    float m = 0;
    for (int i = 0; i < nb; i++, b += bytes) {
        bdec o;
        dec(b, &o);
        if (i % 2)
            a1 = _mm256_fmadd_ps(block_dot(&o, x + 32 * i), _mm256_set1_ps(o.d), a1);
        else
            a0 = _mm256_fmadd_ps(block_dot(&o, x + 32 * i), _mm256_set1_ps(o.d), a0);
        if (mins) m += o.m * (float)(s[2 * i] + s[2 * i + 1]);
    }
    a0 = _mm256_add_ps(a0, a1);
    return mins ? _mm256_add_ps(a0, _mm256_castps128_ps256(_mm_set_ss(m))) : a0;
}

INLINE float dot_b32(const uint8_t *b, const uint8_t *xq, int64_t n, int bytes, int mins,
                     bdec_fn dec) {
    const int16_t *xv = q16_vals(xq);
    const float *dx = q16_scales(xq, n);
    const int32_t *s = q16_sums(xq, n);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t g = 0; g < q16_groups(n); g++) {
        int nb = n - g * Q16_GROUP >= Q16_GROUP ? 8 : (int)((n - g * Q16_GROUP) / 32);
        for (int i = 0; i < 8 * bytes; i += 64)
            _mm_prefetch((const char *)(b + 2048 + i), _MM_HINT_T0);
        acc = _mm256_fmadd_ps(group32(b, xv + Q16_GROUP * g, s + 16 * g, nb, bytes, mins, dec),
                              _mm256_set1_ps(dx[g]), acc);
        b += nb * bytes;
    }
    return hsum(acc);
}

INLINE void mm_b32(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                   const void *const *x, int n_tok, float *y, int64_t ldy, int bytes, int mins,
                   bdec_fn dec) {
    if (n_tok == 1) {
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_b32(w + (size_t)r * row_bytes, x[0], n, bytes, mins, dec);
        return;
    }
    /* a block decoded once for MM_TOK tokens; the row stays in L1 between token groups */
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = w + (size_t)r * row_bytes;
        for (int t0 = 0; t0 < n_tok; t0 += MM_TOK) {
            int T = n_tok - t0 < MM_TOK ? n_tok - t0 : MM_TOK;
            __m256 acc[MM_TOK];
            for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
            const uint8_t *b = row;
            for (int64_t g = 0; g < q16_groups(n); g++) {
                int nb = n - g * Q16_GROUP >= Q16_GROUP ? 8 : (int)((n - g * Q16_GROUP) / 32);
                __m256 ga[MM_TOK];
                float gm[MM_TOK];
                for (int t = 0; t < T; t++) ga[t] = _mm256_setzero_ps(), gm[t] = 0;
                for (int i = 0; i < nb; i++, b += bytes) {
                    bdec o;
                    dec(b, &o);
                    for (int t = 0; t < T; t++) {
                        const int16_t *xt = q16_vals(x[t0 + t]) + Q16_GROUP * g + 32 * i;
                        ga[t] = _mm256_fmadd_ps(block_dot(&o, xt), _mm256_set1_ps(o.d), ga[t]);
                        if (mins) {
                            const int32_t *s = q16_sums(x[t0 + t], n) + 16 * g + 2 * i;
                            gm[t] += o.m * (float)(s[0] + s[1]);
                        }
                    }
                }
                for (int t = 0; t < T; t++) {
                    __m256 v = mins
                                   ? _mm256_add_ps(ga[t], _mm256_castps128_ps256(_mm_set_ss(gm[t])))
                                   : ga[t];
                    acc[t] =
                        _mm256_fmadd_ps(v, _mm256_set1_ps(q16_scales(x[t0 + t], n)[g]), acc[t]);
                }
            }
            for (int t = 0; t < T; t++) y[(t0 + t) * ldy + r] = hsum(acc[t]);
        }
    }
}

#define B32_KERNELS(name, BYTES, MINS)                                                             \
    static float dot_q16_##name(const void *row, const void *xq, int64_t n) {                      \
        return dot_b32(row, xq, n, BYTES, MINS, dec_##name);                                       \
    }                                                                                              \
    static void matmul_q16_##name(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0,       \
                                  int64_t r1, const void *const *x, int n_tok, float *y,           \
                                  int64_t ldy) {                                                   \
        mm_b32(w, row_bytes, n, r0, r1, x, n_tok, y, ldy, BYTES, MINS, dec_##name);                \
    }

B32_KERNELS(q4_0, QB_Q4_0, 0)
B32_KERNELS(q4_1, QB_Q4_1, 1)
B32_KERNELS(q5_0, QB_Q5_0, 0)
B32_KERNELS(q5_1, QB_Q5_1, 1)
B32_KERNELS(q8_0, QB_Q8_0, 0)
B32_KERNELS(iq4_nl, QB_IQ4_NL, 0)
B32_KERNELS(mxfp4, QB_MXFP4, 0)

/* ---- table ---------------------------------------------------------------------------------- */

const quant_kernels quant_q16_kernels_avx2 = Q16_KERNELS("avx2", q16_quantize);
