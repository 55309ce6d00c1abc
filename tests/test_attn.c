/* test_attn.c - attention over sets of query rows (src/attn.h): the portable reference and the
 * AVX-512 kernel against softmax(q . K^T * scale) . V summed in double, for head sizes from 16 to
 * 256, 1 to 16 rows, and limits that end inside, at and past blocks of ATTN_KB keys. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "quant.h"
#include "testlib.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float uniform(void) { /* in [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 4503599627370496.0 - 1.0);
}

/* The largest |got - want| over the rows, in units of the largest |v|. */
static double run_case(void (*fn)(const attn_rows_args *), int hd, int n, const int *lim, const float *q,
                       const float *k, const float *v, size_t ld, float *out, const double *want, float *scratch) {
    attn_rows_args a = {.n = n, .hd = hd, .k = k, .v = v, .ld = ld, .scale = 1.0f / sqrtf((float)hd), .scratch = scratch};
    for (int i = 0; i < n; i++) {
        a.q[i] = q + (size_t)i * hd;
        a.out[i] = out + (size_t)i * hd;
        a.lim[i] = lim[i];
    }
    fn(&a);
    double err = 0;
    for (size_t i = 0; i < (size_t)n * hd; i++) err = fmax(err, fabs(out[i] - want[i]));
    return err;
}

int main(int argc, char **argv) {
    (void)argc, (void)argv;
    quant_init();
    int have512 = quant_force_isa("avx512") == 0;
    const int hds[] = {16, 48, 64, 128, 256}, ns[] = {1, 2, 7, 16};
    const int max_pos = 300;
    double worst_ref = 0, worst_512 = 0;
    int cases = 0;
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
        int hd = hds[hi];
        size_t ld = (size_t)hd * 3; /* rows of other heads in between, as in the cache */
        float *k = malloc(sizeof(float) * ld * max_pos), *v = malloc(sizeof(float) * ld * max_pos);
        float *q = malloc(sizeof(float) * ATTN_ROWS * hd), *out = malloc(sizeof(float) * ATTN_ROWS * hd);
        double *want = malloc(sizeof(double) * ATTN_ROWS * hd), *w = malloc(sizeof(double) * max_pos);
        float *scratch = aligned_alloc(64, (attn_scratch_floats(hd) * sizeof(float) + 63) / 64 * 64);
        for (size_t i = 0; i < ld * max_pos; i++) k[i] = 2 * uniform(), v[i] = uniform();
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
            for (int pattern = 0; pattern < 4; pattern++) {
                int n = ns[ni], lim[ATTN_ROWS];
                for (int i = 0; i < n; i++) {
                    /* one key; a block and one; rows a token apart (prefill); ragged */
                    static const int base[4] = {1, ATTN_KB + 1, 250, 0};
                    lim[i] = pattern == 3 ? 1 + (i * 97 + 13) % max_pos : pattern == 2 ? base[2] + i : base[pattern];
                }
                for (int i = 0; i < n * hd; i++) q[i] = 3 * uniform();
                double scale = 1.0 / sqrt((double)hd);
                for (int i = 0; i < n; i++) { /* the softmax in double, in one pass over all keys */
                    double mx = -INFINITY, sum = 0;
                    for (int p = 0; p < lim[i]; p++) {
                        double s = 0;
                        for (int d = 0; d < hd; d++) s += (double)q[i * hd + d] * k[(size_t)p * ld + d];
                        w[p] = s * scale;
                        mx = fmax(mx, w[p]);
                    }
                    for (int p = 0; p < lim[i]; p++) sum += (w[p] = exp(w[p] - mx));
                    for (int d = 0; d < hd; d++) {
                        double o = 0;
                        for (int p = 0; p < lim[i]; p++) o += w[p] * v[(size_t)p * ld + d];
                        want[i * hd + d] = o / sum;
                    }
                }
                double e = run_case(attn_rows_ref, hd, n, lim, q, k, v, ld, out, want, scratch);
                CHECK(e < 5e-6, "reference: hd %d, %d rows, pattern %d: off by %.3g", hd, n, pattern, e);
                worst_ref = fmax(worst_ref, e);
#if defined(__x86_64__)
                if (have512) {
                    e = run_case(attn_rows_avx512, hd, n, lim, q, k, v, ld, out, want, scratch);
                    CHECK(e < 5e-6, "avx512: hd %d, %d rows, pattern %d: off by %.3g", hd, n, pattern, e);
                    worst_512 = fmax(worst_512, e);
                }
#endif
                cases++;
            }
        free(k), free(v), free(q), free(out), free(want), free(w), free(scratch);
    }
    printf("  %d cases (head sizes 16-256, 1-16 rows, limits 1 to %d): reference within %.2g of the double sum", cases,
           max_pos, worst_ref);
    if (have512) printf(", avx512 within %.2g\n", worst_512);
    else printf(" (no AVX-512 here: its kernel is not run)\n");
    return t_done("test_attn");
}
