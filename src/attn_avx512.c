/* attn_avx512.c - attention over up to 16 query rows that share a key/value head (attn.h), one
 * row per lane of a 512-bit vector.
 *
 * The rows are transposed once (q^T: [hd][16]), so a key's scores for all rows are one vector:
 * 16 FMAs per 16 dimensions of the key, its value broadcast from memory, eight keys at a time
 * so eight sums are in flight. The online softmax (mask, max, exp, sum, rescale) then works on
 * whole vectors of scores. Values: a row's output adds p[key] * v[key], two rows at a time so
 * each value vector is loaded once for both. Same sums as attn_rows_ref in another order, and e^x
 * from a polynomial instead of expf: the two agree to float rounding (tests/test_quant.c). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attn.h"

#define INLINE static inline __attribute__((always_inline))

/* e^x for x <= 0 (the softmax's arguments) to about 1 ulp: x = n ln2 + r with |r| <= ln2 / 2,
 * e^r by its Taylor polynomial of degree 7 (remainder below 3e-9 relative), times 2^n by
 * vscalefps, which takes results below the float range to 0. */
INLINE __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x); /* ln2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    static const float c[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
    __m512 p = _mm512_set1_ps(c[0]);
    for (int i = 1; i < 8; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c[i]));
    return _mm512_scalef_ps(p, n);
}

/* Scores of eight keys (rows k[0..7]) for the 16 lanes: s[u][lane] = q[lane] . k[u]. */
INLINE void scores8(const float *qt, const float *const k[8], int hd, float *s) {
    __m512 a[8];
    for (int u = 0; u < 8; u++) a[u] = _mm512_setzero_ps();
    for (int d = 0; d < hd; d++) {
        __m512 q = _mm512_load_ps(qt + 16 * d);
#pragma GCC unroll 8
        for (int u = 0; u < 8; u++) a[u] = _mm512_fmadd_ps(_mm512_set1_ps(k[u][d]), q, a[u]);
    }
    for (int u = 0; u < 8; u++) _mm512_store_ps(s + 16 * u, a[u]);
}

/* acc[r][0..16 NZ) = acc[r] * c[r] + sum over keys j < nk of p[j][lane + r] * v[j] for R rows
 * (lanes lane, lane + 1): NZ vectors of each row kept in registers across the keys. */
INLINE void values(int NZ, int R, float *const acc[2], const float c[2], const float *p, int lane, int nk,
                   const float *v, size_t ld) {
    __m512 x[2][8];
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int z = 0; z < NZ; z++) x[r][z] = _mm512_mul_ps(_mm512_loadu_ps(acc[r] + 16 * z), _mm512_set1_ps(c[r]));
    for (int j = 0; j < nk; j++, v += ld, p += 16) {
        __m512 p0 = _mm512_set1_ps(p[lane]), p1 = _mm512_set1_ps(p[lane + R - 1]);
#pragma GCC unroll 8
        for (int z = 0; z < NZ; z++) {
            __m512 vz = _mm512_loadu_ps(v + 16 * z);
            x[0][z] = _mm512_fmadd_ps(p0, vz, x[0][z]);
            if (R > 1) x[1][z] = _mm512_fmadd_ps(p1, vz, x[1][z]);
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int z = 0; z < NZ; z++) _mm512_storeu_ps(acc[r] + 16 * z, x[r][z]);
}

/* values() over a whole row of hd (a multiple of 16), in pieces of 8, 4, 2 and 1 vectors. */
static void values_row(int R, float *acc[2], const float c[2], const float *p, int lane, int nk, const float *v,
                       size_t ld, int hd) {
    for (int d = 0; d < hd;) {
        float *at[2] = {acc[0] + d, acc[R - 1] + d};
        int left = (hd - d) / 16;
#define VALUES(NZ)                                                                                 \
    do {                                                                                           \
        if (R > 1) values(NZ, 2, at, c, p, lane, nk, v + d, ld);                                   \
        else values(NZ, 1, at, c, p, lane, nk, v + d, ld);                                         \
        d += 16 * NZ;                                                                              \
    } while (0)
        if (left >= 8) VALUES(8);
        else if (left >= 4) VALUES(4);
        else if (left >= 2) VALUES(2);
        else VALUES(1);
#undef VALUES
    }
}

void attn_rows_avx512(const attn_rows_args *a) {
    const int hd = a->hd, n = a->n;
    float *qt = a->scratch, *s = qt + (size_t)hd * ATTN_ROWS, *acc = s + ATTN_KB * ATTN_ROWS;
    _Alignas(64) int lim[ATTN_ROWS] = {0}; /* lanes past n see no key */
    _Alignas(64) float corr[ATTN_ROWS], lsum[ATTN_ROWS];
    int maxlim = 0;
    for (int i = 0; i < n; i++) lim[i] = a->lim[i], maxlim = lim[i] > maxlim ? lim[i] : maxlim;
    for (int d = 0; d < hd; d++)
        for (int i = 0; i < ATTN_ROWS; i++) qt[ATTN_ROWS * d + i] = i < n ? a->q[i][d] : 0.0f;
    memset(acc, 0, sizeof(float) * (size_t)n * hd);
    const __m512i limv = _mm512_load_si512((const void *)lim);
    const __m512 ninf = _mm512_set1_ps(-INFINITY), scale = _mm512_set1_ps(a->scale);
    __m512 m = ninf, l = _mm512_setzero_ps();
    for (int p0 = 0; p0 < maxlim; p0 += ATTN_KB) {
        int nk = maxlim - p0 < ATTN_KB ? maxlim - p0 : ATTN_KB;
        for (int j = 0; j < nk; j += 8) {
            const float *k8[8];
            for (int u = 0; u < 8; u++) k8[u] = a->k + (size_t)(p0 + (j + u < nk ? j + u : nk - 1)) * a->ld;
            scores8(qt, k8, hd, s + ATTN_ROWS * j);
        }
        /* scaled scores; a key past a row's limit gets -inf there */
        __m512 mb = ninf;
        for (int j = 0; j < nk; j++) {
            __mmask16 ok = _mm512_cmpgt_epi32_mask(limv, _mm512_set1_epi32(p0 + j));
            __m512 x = _mm512_mask_mul_ps(ninf, ok, _mm512_load_ps(s + ATTN_ROWS * j), scale);
            _mm512_store_ps(s + ATTN_ROWS * j, x);
            mb = _mm512_max_ps(mb, x);
        }
        __m512 mn = _mm512_max_ps(m, mb);
        /* a row with no key yet keeps max -inf: measure from 0 there (its weights are all 0) */
        __m512 ref = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(mn, ninf, _CMP_NEQ_OQ), mn);
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < nk; j++) {
            __mmask16 ok = _mm512_cmpgt_epi32_mask(limv, _mm512_set1_epi32(p0 + j));
            __m512 w = _mm512_maskz_mov_ps(ok, exp_ps(_mm512_sub_ps(_mm512_load_ps(s + ATTN_ROWS * j), ref)));
            _mm512_store_ps(s + ATTN_ROWS * j, w);
            sum = _mm512_add_ps(sum, w);
        }
        __m512 c = exp_ps(_mm512_sub_ps(m, ref));
        l = _mm512_fmadd_ps(l, c, sum);
        m = mn;
        _mm512_store_ps(corr, c);
        const float *v = a->v + (size_t)p0 * a->ld;
        for (int i = 0; i < n; i += 2) {
            int R = i + 1 < n ? 2 : 1;
            float *rows[2] = {acc + (size_t)i * hd, acc + (size_t)(i + R - 1) * hd};
            float cr[2] = {corr[i], corr[i + R - 1]};
            values_row(R, rows, cr, s, i, nk, v, a->ld, hd);
        }
    }
    _mm512_store_ps(lsum, l);
    for (int i = 0; i < n; i++) {
        __m512 inv = _mm512_set1_ps(1.0f / lsum[i]);
        for (int d = 0; d < hd; d += 16)
            _mm512_storeu_ps(a->out[i] + d, _mm512_mul_ps(_mm512_loadu_ps(acc + (size_t)i * hd + d), inv));
    }
}
