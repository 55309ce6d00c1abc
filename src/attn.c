/* attn.c - attention over a set of query rows (see attn.h): the portable reference and the
 * choice of kernel. */
#include "attn.h"

#include <math.h>
#include <string.h>

#include "quant.h"

size_t attn_scratch_floats(int hd) {
    /* the AVX-512 kernel's: queries transposed [hd][16], scores [ATTN_KB][16], outputs [16][hd] */
    return (size_t)hd * ATTN_ROWS * 2 + (size_t)ATTN_KB * ATTN_ROWS;
}

static void axpy(float *restrict y, const float *restrict x, float a, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* One row at a time: scores of a block of keys, then the running max, sum and output rescaled. */
void attn_rows_ref(const attn_rows_args *a) {
    int hd = a->hd;
    float *acc = a->scratch, *sc = acc + hd;
    for (int i = 0; i < a->n; i++) {
        float mx = -INFINITY, l = 0;
        memset(acc, 0, sizeof(float) * (size_t)hd);
        for (int p0 = 0; p0 < a->lim[i]; p0 += ATTN_KB) {
            int pe = p0 + ATTN_KB < a->lim[i] ? p0 + ATTN_KB : a->lim[i];
            float m = mx;
            for (int p = p0; p < pe; p++) {
                sc[p - p0] = quant_dot(MS_TYPE_F32, a->q[i], a->k + (size_t)p * a->ld, hd) * a->scale;
                m = fmaxf(m, sc[p - p0]);
            }
            float corr = expf(mx - m);
            if (corr != 1.0f) {
                l *= corr;
                for (int d = 0; d < hd; d++) acc[d] *= corr;
            }
            for (int p = p0; p < pe; p++) {
                float w = expf(sc[p - p0] - m);
                l += w;
                axpy(acc, a->v + (size_t)p * a->ld, w, hd);
            }
            mx = m;
        }
        float inv = 1.0f / l;
        for (int d = 0; d < hd; d++) a->out[i][d] = acc[d] * inv;
    }
}

void attn_rows(const attn_rows_args *a) {
#if defined(__x86_64__)
    if (a->hd % 16 == 0 && !strcmp(quant_isa(), "avx512")) {
        attn_rows_avx512(a);
        return;
    }
#endif
    attn_rows_ref(a);
}
