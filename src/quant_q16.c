/* quant_q16.c - 16-bit integer activations ("q16"): the row format, its scalar quantizer, and the
 * scalar reference dot product of every quantized weight type with a q16 row.
 *
 * Not here: the SIMD kernels (quant_q16_avx2.c, quant_q16_avx512.c), dispatch (quant.c), and the
 * f32-activation paths (quant.c), which remain the oracle for the weights' values.
 *
 * Why integers: with activations as int16 q times one float d per 256 values, a weight block's
 * dot product is its float scales times an integer sum of (weight code) * q, which SIMD forms
 * exactly and 32 products per instruction (vpdpwssd). The reference here does the same sums the
 * plain way, in int64, so the kernels can be checked to float rounding.
 *
 * Each weight type is read as integers (GGML's block layouts, as in quant.c's decoders):
 *   256-value types: w[i] = d * sc[i/16] * q[i] - dmin * m[i/16]   (ints q, sc, m; floats d, dmin)
 *   32-value types:  w[i] = d * q[i] + m                           (int q; floats d, m)
 * Over a q16 group (scale dx, values xq, sums s per 16) that gives
 *   sum w x = dx * (d * sum sc q xq - dmin * sum m s)     and     dx * sum_b (d_b * sum q xq + m_b * s_b)
 * The bounds that keep the SIMD int32 lanes exact are in quant_simd.h's layout note and at each
 * kernel; every |sc * q| here is at most 4096 and every |xq| at most 32767.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "quant.h"
#include "quant_simd.h"

/* ---- format ------------------------------------------------------------------------------ */

size_t quant_q16_bytes(int64_t n) {
    if (n < 0 || n % 32) return 0;
    size_t bytes = (size_t)(2 * n + 4 * q16_groups(n) + 4 * (n / 16));
    return (bytes + 63) / 64 * 64;
}

void quant_q16_quantize_ref(const float *x, int64_t n, void *xq) {
    assert(n >= 0 && n % 32 == 0);
    uint8_t *out = xq;
    int16_t *q = (int16_t *)out;
    float *d = (float *)(out + 2 * n);
    int32_t *s = (int32_t *)(out + 2 * n + 4 * q16_groups(n));
    for (int64_t g = 0; g < q16_groups(n); g++) {
        int64_t i0 = g * Q16_GROUP, len = n - i0 < Q16_GROUP ? n - i0 : Q16_GROUP;
        float amax = 0;
        int finite = 1;
        for (int64_t i = i0; i < i0 + len; i++) {
            float a = fabsf(x[i]);
            if (!isfinite(x[i]))
                finite = 0;
            else if (a > amax)
                amax = a;
        }
        /* id * x rounds to nearest (even), as the SIMD conversions do; |id * x| < 32767.5, so
         * the clamp never acts: it states the bound the kernels' int32 lanes rely on. */
        float id = amax >= Q16_TINY ? Q16_MAX / amax : 0;
        d[g] = !finite ? NAN : amax >= Q16_TINY ? amax / Q16_MAX : 0;
        for (int64_t i = i0; i < i0 + len; i++) {
            float v = finite ? nearbyintf(x[i] * id) : 0;
            q[i] = (int16_t)(v > Q16_MAX ? Q16_MAX : v < -Q16_MAX ? -Q16_MAX : v);
        }
    }
    for (int64_t k = 0; k < n / 16; k++) {
        int32_t sum = 0;
        for (int j = 0; j < 16; j++) sum += q[16 * k + j];
        s[k] = sum;
    }
    size_t used = (size_t)(2 * n + 4 * q16_groups(n) + 4 * (n / 16));
    memset(out + used, 0, quant_q16_bytes(n) - used);
}

void quant_q16_dequant(const void *xq, float *x, int64_t n) {
    const int16_t *q = q16_vals(xq);
    const float *d = q16_scales(xq, n);
    for (int64_t i = 0; i < n; i++) x[i] = (float)q[i] * d[i / Q16_GROUP];
}

/* ---- weights as integers ------------------------------------------------------------------ */

static inline float rd_f16(const uint8_t *p) { return ms_f16_to_f32(quant_rd16(p)); }

/* A 256-value block: w[i] = d * sc[i / 16] * q[i] - dmin * m[i / 16]. */
typedef struct kint {
    int16_t q[QK_K];
    int16_t sc[16], m[16];
    float d, dmin;
} kint;

/* A 32-value block: w[i] = d * q[i] + m. */
typedef struct bint {
    int16_t q[32];
    float d, m;
} bint;

static void kint_q4_k(const uint8_t *b, kint *k) {
    k->d = rd_f16(b), k->dmin = rd_f16(b + 2);
    for (int s = 0; s < 8; s++) {
        int sc, m;
        quant_scale_min_k4(b + 4, s, &sc, &m);
        k->sc[2 * s] = k->sc[2 * s + 1] = (int16_t)sc;
        k->m[2 * s] = k->m[2 * s + 1] = (int16_t)m;
        for (int l = 0; l < 32; l++)
            k->q[32 * s + l] = (b[16 + 32 * (s / 2) + l] >> (4 * (s % 2))) & 15;
    }
}

static void kint_q5_k(const uint8_t *b, kint *k) {
    kint_q4_k(b, k); /* same scales; the nibbles sit 32 bytes later, after the fifth bits */
    for (int s = 0; s < 8; s++)
        for (int l = 0; l < 32; l++)
            k->q[32 * s + l] = (int16_t)(((b[48 + 32 * (s / 2) + l] >> (4 * (s % 2))) & 15) |
                                         ((b[16 + l] >> s) & 1) << 4);
}

static void kint_q6_k(const uint8_t *b, kint *k) {
    const uint8_t *ql = b, *qh = b + 128;
    k->d = rd_f16(b + 208), k->dmin = 0;
    for (int i = 0; i < 16; i++) k->sc[i] = (int8_t)b[192 + i], k->m[i] = 0;
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        int low = (ql[64 * h + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0xF;
        int high = (qh[32 * h + l] >> (2 * g)) & 3;
        k->q[i] = (int16_t)((low | high << 4) - 32);
    }
}

static void kint_q3_k(const uint8_t *b, kint *k) {
    int8_t sc[16];
    quant_scales_q3_k(b + 96, sc);
    k->d = rd_f16(b + 108), k->dmin = 0;
    for (int i = 0; i < 16; i++) k->sc[i] = sc[i], k->m[i] = 0;
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        int q = (b[32 + 32 * h + l] >> (2 * g)) & 3;
        if (!(b[l] >> (4 * h + g) & 1)) q -= 4;
        k->q[i] = (int16_t)q;
    }
}

static void kint_q2_k(const uint8_t *b, kint *k) {
    k->d = rd_f16(b + 80), k->dmin = rd_f16(b + 82);
    for (int i = 0; i < 16; i++) k->sc[i] = b[i] & 15, k->m[i] = b[i] >> 4;
    for (int i = 0; i < QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        k->q[i] = (b[16 + 32 * h + l] >> (2 * g)) & 3;
    }
}

static void kint_iq4_xs(const uint8_t *b, kint *k) {
    uint16_t scales_h = quant_rd16(b + 2);
    k->d = rd_f16(b), k->dmin = 0;
    for (int s = 0; s < 8; s++) {
        int ls = ((b[4 + s / 2] >> (4 * (s % 2))) & 0xF) | ((scales_h >> (2 * s)) & 3) << 4;
        k->sc[2 * s] = k->sc[2 * s + 1] = (int16_t)(ls - 32);
        k->m[2 * s] = k->m[2 * s + 1] = 0;
        for (int j = 0; j < 16; j++) {
            k->q[32 * s + j] = quant_kvalues_iq4nl[b[8 + 16 * s + j] & 0xF];
            k->q[32 * s + j + 16] = quant_kvalues_iq4nl[b[8 + 16 * s + j] >> 4];
        }
    }
}

/* 32-value blocks: low nibbles (or bytes) are values 0..15, high nibbles 16..31. */
static void nibbles(const uint8_t *qs, int offset, bint *o) {
    for (int j = 0; j < 16; j++) {
        o->q[j] = (int16_t)((qs[j] & 0xF) + offset);
        o->q[j + 16] = (int16_t)((qs[j] >> 4) + offset);
    }
}
static void fifth_bits(uint32_t qh, bint *o) {
    for (int j = 0; j < 32; j++) o->q[j] = (int16_t)(o->q[j] + 16 * (int)((qh >> j) & 1));
}
static void bint_q4_0(const uint8_t *b, bint *o) {
    o->d = rd_f16(b), o->m = 0, nibbles(b + 2, -8, o);
}
static void bint_q4_1(const uint8_t *b, bint *o) {
    o->d = rd_f16(b), o->m = rd_f16(b + 2), nibbles(b + 4, 0, o);
}
static void bint_q5_0(const uint8_t *b, bint *o) {
    o->d = rd_f16(b), o->m = 0;
    nibbles(b + 6, -16, o);
    fifth_bits(quant_rd32(b + 2), o);
}
static void bint_q5_1(const uint8_t *b, bint *o) {
    o->d = rd_f16(b), o->m = rd_f16(b + 2);
    nibbles(b + 8, 0, o);
    fifth_bits(quant_rd32(b + 4), o);
}
static void bint_q8_0(const uint8_t *b, bint *o) {
    o->d = rd_f16(b), o->m = 0;
    for (int j = 0; j < 32; j++) o->q[j] = (int8_t)b[2 + j];
}
static void bint_iq4_nl(const uint8_t *b, bint *o) {
    o->d = rd_f16(b), o->m = 0;
    for (int j = 0; j < 16; j++) {
        o->q[j] = quant_kvalues_iq4nl[b[2 + j] & 0xF];
        o->q[j + 16] = quant_kvalues_iq4nl[b[2 + j] >> 4];
    }
}
static void bint_mxfp4(const uint8_t *b, bint *o) {
    o->d = quant_e8m0_half(b[0]), o->m = 0;
    for (int j = 0; j < 16; j++) {
        o->q[j] = quant_kvalues_mxfp4[b[1 + j] & 0xF];
        o->q[j + 16] = quant_kvalues_mxfp4[b[1 + j] >> 4];
    }
}

/* ---- reference dot products ----------------------------------------------------------------- */

typedef void (*kint_fn)(const uint8_t *b, kint *k);
typedef void (*bint_fn)(const uint8_t *b, bint *o);

/* 256-value types: exact integer sums per block in int64, one float expression per block. */
static float dot_k(const uint8_t *row, const uint8_t *xq, int64_t n, int bytes, kint_fn dec) {
    const int16_t *xv = q16_vals(xq);
    const float *dx = q16_scales(xq, n);
    const int32_t *s = q16_sums(xq, n);
    float sum = 0;
    for (int64_t g = 0; g < n / QK_K; g++, row += bytes) {
        kint k;
        dec(row, &k);
        int64_t a = 0, b = 0;
        for (int i = 0; i < QK_K; i++) a += (int64_t)k.sc[i / 16] * k.q[i] * xv[QK_K * g + i];
        for (int j = 0; j < 16; j++) b += (int64_t)k.m[j] * s[16 * g + j];
        sum += dx[g] * (k.d * (float)a - k.dmin * (float)b);
    }
    return sum;
}

/* 32-value types: exact sums per block, summed in float over a q16 group, then scaled. */
static float dot_b32(const uint8_t *row, const uint8_t *xq, int64_t n, int bytes, bint_fn dec) {
    const int16_t *xv = q16_vals(xq);
    const float *dx = q16_scales(xq, n);
    const int32_t *s = q16_sums(xq, n);
    float sum = 0;
    for (int64_t g = 0; g < q16_groups(n); g++) {
        float gsum = 0;
        for (int64_t i = g * Q16_GROUP; i < n && i < (g + 1) * Q16_GROUP; i += 32, row += bytes) {
            bint o;
            dec(row, &o);
            int32_t a = 0;
            for (int j = 0; j < 32; j++) a += o.q[j] * xv[i + j];
            gsum += o.d * (float)a + o.m * (float)(s[i / 16] + s[i / 16 + 1]);
        }
        sum += dx[g] * gsum;
    }
    return sum;
}

#define REF_K(name, BYTES)                                                                         \
    static float dot_q16_##name(const void *row, const void *xq, int64_t n) {                      \
        return dot_k(row, xq, n, BYTES, kint_##name);                                              \
    }
#define REF_B32(name, BYTES)                                                                       \
    static float dot_q16_##name(const void *row, const void *xq, int64_t n) {                      \
        return dot_b32(row, xq, n, BYTES, bint_##name);                                            \
    }
REF_K(q2_k, QB_Q2_K)
REF_K(q3_k, QB_Q3_K)
REF_K(q4_k, QB_Q4_K)
REF_K(q5_k, QB_Q5_K)
REF_K(q6_k, QB_Q6_K)
REF_K(iq4_xs, QB_IQ4_XS)
REF_B32(q4_0, QB_Q4_0)
REF_B32(q4_1, QB_Q4_1)
REF_B32(q5_0, QB_Q5_0)
REF_B32(q5_1, QB_Q5_1)
REF_B32(q8_0, QB_Q8_0)
REF_B32(iq4_nl, QB_IQ4_NL)
REF_B32(mxfp4, QB_MXFP4)

/* The scalar matrix product: one dot per (row, token). */
static void matmul_ref(quant_dot_q16_fn dot, const uint8_t *w, size_t row_bytes, int64_t n,
                       int64_t r0, int64_t r1, const void *const *x, int n_tok, float *y,
                       int64_t ldy) {
    for (int64_t r = r0; r < r1; r++)
        for (int t = 0; t < n_tok; t++) y[t * ldy + r] = dot(w + (size_t)r * row_bytes, x[t], n);
}
#define REF_MM(name)                                                                               \
    static void matmul_q16_##name(const uint8_t *w, size_t row_bytes, int64_t n, int64_t r0,       \
                                  int64_t r1, const void *const *x, int n_tok, float *y,           \
                                  int64_t ldy) {                                                   \
        matmul_ref(dot_q16_##name, w, row_bytes, n, r0, r1, x, n_tok, y, ldy);                     \
    }
#define REF_MM_OF(T, name) REF_MM(name)
Q16_TYPES(REF_MM_OF)

const quant_kernels quant_q16_kernels_scalar = Q16_KERNELS("scalar", quant_q16_quantize_ref);

int quant_has_q16(int type) {
    return type >= 0 && type < MS_TYPE_COUNT && quant_q16_kernels_scalar.dot_q16[type] != NULL;
}

float quant_dot_q16_ref(int type, const void *row, const void *xq, int64_t n) {
    const ms_type_info *ti = quant_info(type);
    assert(quant_has_q16(type) && n % ti->block_size == 0);
    if (!quant_has_q16(type) || n % ti->block_size) return NAN;
    return quant_q16_kernels_scalar.dot_q16[type](row, xq, n);
}
