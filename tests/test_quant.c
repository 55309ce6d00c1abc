/* test_quant.c - checks every GGML type's dequantization and dot product against the fixtures
 * made by gguf-py (shared/fixtures/quant), on every kernel set this CPU can run, plus the
 * exact half-precision conversions, the type table and random-block agreement of SIMD kernels
 * with the scalar reference (including types the fixtures lack); and the q16 activation path:
 * quantization bounds, integer dot/matvec/matmul kernels against their scalar reference and
 * against the f32 path (see the q16 section for the three oracles).
 *
 * Not a benchmark (bench/bench_quant.c times the kernels). Fixture shapes are read from each
 * <TYPE>.txt; nothing here knows a fixture's values.
 */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "testlib.h"

static const char *const isa_names[] = {"scalar", "avx2", "avx512"};
enum { N_ISA = 3 };

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void) {
    /* xorshift64*: fixed seed, so failures reproduce. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static float rng_uniform(void) { return (float)((rng_next() >> 40) / 16777216.0 * 2.0 - 1.0); }

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Bitwise equality, except that any NaN equals any NaN. */
static int same_float(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return bits_of(a) == bits_of(b);
}

/* Index of the first element that differs, or -1. */
static int64_t first_diff(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!same_float(a[i], b[i])) return i;
    return -1;
}

/* 64-byte aligned buffers for q16 rows (which need 4-byte alignment; SIMD prefers 64). */
static void *q16_alloc(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64); }
static void q16_free(void *p) { free(p); }

static int type_by_name(const char *name) {
    for (int t = 0; t < MS_TYPE_COUNT; t++) {
        const ms_type_info *ti = quant_info(t);
        if (ti && strcmp(ti->name, name) == 0) return t;
    }
    return -1;
}

/* The dot of n expected floats with x in double, and sum |w x| (the scale of rounding error). */
static double dot_exact(const float *w, const float *x, int64_t n, double *abs_sum) {
    double s = 0, a = 0;
    for (int64_t i = 0; i < n; i++) {
        s += (double)w[i] * x[i];
        a += fabs((double)w[i] * x[i]);
    }
    *abs_sum = a;
    return s;
}

/* Allowed dot error: float reassociation over n terms, about 1e-5 of sum |w x| for a 256-value
 * row, growing like sqrt(n) (random-sign rounding errors) for longer ones. */
static double dot_tol(int64_t n, double abs_sum) {
    double scale = n > 256 ? sqrt((double)n / 256) : 1;
    return 1e-5 * scale * abs_sum + 1e-30;
}

/* ---- fixtures --------------------------------------------------------------------------- */

typedef struct fixture {
    char name[32];
    int type, rows, cols;
    size_t row_bytes;
    uint8_t *raw;   /* [rows][row_bytes] */
    float *want;    /* [rows][cols] */
} fixture;

/* Reads <name>.txt/.raw/.f32; returns 1 if all three are consistent. */
static int fixture_load(fixture *f, const char *name) {
    char rel[96];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    snprintf(rel, sizeof rel, "quant/%s.txt", name);
    char *txt = t_read_file(t_path(rel), NULL);
    CHECK(txt != NULL, "cannot read %s", t_path(rel));
    if (!txt) return 0;
    char tname[32] = "";
    int got = sscanf(txt, "type %31[^:]: %d rows of %d values; %zu bytes per row", tname,
                     &f->rows, &f->cols, &f->row_bytes);
    free(txt);
    CHECK(got == 4, "%s: expected 'type T: R rows of N values; B bytes per row', parsed %d",
          rel, got);
    CHECK(strcmp(tname, name) == 0, "%s names type %s", rel, tname);
    if (got != 4 || strcmp(tname, name) != 0) return 0;
    f->type = type_by_name(name);
    CHECK(f->type >= 0, "%s: type %s is not in the type table", rel, name);
    if (f->type < 0) return 0;

    size_t raw_len = 0, f32_len = 0;
    snprintf(rel, sizeof rel, "quant/%s.raw", name);
    f->raw = t_read_file(t_path(rel), &raw_len);
    snprintf(rel, sizeof rel, "quant/%s.f32", name);
    f->want = t_read_file(t_path(rel), &f32_len);
    CHECK(f->raw && f->want, "%s: cannot read .raw or .f32", name);
    if (!f->raw || !f->want) return 0;
    CHECK(raw_len == (size_t)f->rows * f->row_bytes, "%s.raw: %zu bytes, txt says %d x %zu",
          name, raw_len, f->rows, f->row_bytes);
    CHECK(f32_len == (size_t)f->rows * f->cols * sizeof(float),
          "%s.f32: %zu bytes, txt says %d x %d floats", name, f32_len, f->rows, f->cols);
    return raw_len == (size_t)f->rows * f->row_bytes &&
           f32_len == (size_t)f->rows * f->cols * sizeof(float);
}

static void fixture_free(fixture *f) {
    free(f->raw);
    free(f->want);
}

/* Layout: the table and quant_row_bytes agree with the fixture's byte counts. */
static void check_layout(const fixture *f) {
    const ms_type_info *ti = quant_info(f->type);
    CHECK(ti->supported, "%s is not marked supported", f->name);
    CHECK(f->cols % ti->block_size == 0, "%s: %d values is not whole blocks of %d", f->name,
          f->cols, ti->block_size);
    CHECK((size_t)(f->cols / ti->block_size) * (size_t)ti->block_bytes == f->row_bytes,
          "%s: table says %d blocks of %d bytes, fixture row is %zu bytes", f->name,
          f->cols / ti->block_size, ti->block_bytes, f->row_bytes);
    CHECK(quant_row_bytes(f->type, f->cols) == f->row_bytes, "%s: quant_row_bytes %zu != %zu",
          f->name, quant_row_bytes(f->type, f->cols), f->row_bytes);
    CHECK(strcmp(quant_name(f->type), f->name) == 0, "quant_name(%d) = %s", f->type,
          quant_name(f->type));
}

/* Dequantization of the whole fixture, as one long row and row by row from a misaligned copy,
 * must give exactly the expected floats. `who` names the path for messages. */
static void check_dequant(const fixture *f, const char *who, int reference) {
    int64_t total = (int64_t)f->rows * f->cols;
    float *got = malloc((size_t)total * sizeof(float));
    uint8_t *shifted = malloc((size_t)f->rows * f->row_bytes + 1);
    memcpy(shifted + 1, f->raw, (size_t)f->rows * f->row_bytes);

    memset(got, 0xFF, (size_t)total * sizeof(float));
    if (reference) quant_dequant_ref(f->type, f->raw, got, total);
    else quant_dequant(f->type, f->raw, got, total);
    int64_t d = first_diff(got, f->want, total);
    CHECK(d < 0, "%s %s dequant: value %lld (row %lld col %lld) is %.9g (0x%08x), want %.9g "
          "(0x%08x)", f->name, who, (long long)d, (long long)(d / f->cols),
          (long long)(d % f->cols), d < 0 ? 0 : got[d], d < 0 ? 0 : bits_of(got[d]),
          d < 0 ? 0 : f->want[d], d < 0 ? 0 : bits_of(f->want[d]));

    memset(got, 0xFF, (size_t)total * sizeof(float));
    for (int r = 0; r < f->rows; r++) {
        const uint8_t *row = shifted + 1 + (size_t)r * f->row_bytes;
        if (reference) quant_dequant_ref(f->type, row, got + (int64_t)r * f->cols, f->cols);
        else quant_dequant(f->type, row, got + (int64_t)r * f->cols, f->cols);
    }
    d = first_diff(got, f->want, total);
    CHECK(d < 0, "%s %s dequant of misaligned rows differs at value %lld", f->name, who,
          (long long)d);
    free(shifted);
    free(got);
}

/* Dots of each row, of prefixes of the whole fixture read as one long row (so kernels see
 * 1, 2, 3, ... blocks and their unrolled loops' tails), and matvec, against double-precision
 * dots of the expected floats. Returns the largest error seen as a fraction of the tolerance. */
static double check_dot(const fixture *f, const char *who, int reference) {
    int64_t total = (int64_t)f->rows * f->cols;
    const ms_type_info *ti = quant_info(f->type);
    float *x = malloc((size_t)total * sizeof(float));
    for (int64_t i = 0; i < total; i++) x[i] = rng_uniform();
    double worst = 0;

    float *y = malloc((size_t)(f->rows + 2) * sizeof(float));
    for (int r = 0; r < f->rows; r++) {
        const uint8_t *row = f->raw + (size_t)r * f->row_bytes;
        const float *xr = x + (int64_t)r * f->cols; /* a different x per row */
        double abs_sum, want = dot_exact(f->want + (int64_t)r * f->cols, xr, f->cols, &abs_sum);
        float got = reference ? quant_dot_ref(f->type, row, xr, f->cols)
                              : quant_dot(f->type, row, xr, f->cols);
        double err = fabs(got - want);
        worst = fmax(worst, err / dot_tol(f->cols, abs_sum));
        CHECK(err <= dot_tol(f->cols, abs_sum), "%s %s dot row %d: %.9g, want %.9g (sum|wx| %g)",
              f->name, who, r, got, want, abs_sum);
    }

    /* Prefixes of 1..20 blocks, then every 7th count up to the whole fixture. */
    int64_t nblk = total / ti->block_size;
    for (int64_t k = 1; k <= nblk; k = k < 20 ? k + 1 : k + 7 * (1 + k / 64)) {
        int64_t n = k * ti->block_size;
        double abs_sum, want = dot_exact(f->want, x, n, &abs_sum);
        float got = reference ? quant_dot_ref(f->type, f->raw, x, n)
                              : quant_dot(f->type, f->raw, x, n);
        double err = fabs(got - want);
        worst = fmax(worst, err / dot_tol(n, abs_sum));
        CHECK(err <= dot_tol(n, abs_sum), "%s %s dot of %lld values: %.9g, want %.9g", f->name,
              who, (long long)n, got, want);
    }

    if (!reference) {
        /* matvec over rows [1, rows-1) must equal the per-row dot and leave y[0], y[rows-1]. */
        const float sentinel = -12345.0f;
        for (int r = 0; r < f->rows + 2; r++) y[r] = sentinel;
        quant_matvec(f->type, f->raw, f->row_bytes, x, y, f->cols, 1, f->rows - 1);
        CHECK(y[0] == sentinel && y[f->rows - 1] == sentinel, "%s %s matvec wrote outside [r0,r1)",
              f->name, who);
        for (int r = 1; r < f->rows - 1; r++) {
            float d = quant_dot(f->type, f->raw + (size_t)r * f->row_bytes, x, f->cols);
            CHECK(same_float(y[r], d), "%s %s matvec row %d: %.9g, dot gives %.9g", f->name, who,
                  r, y[r], d);
        }
    }
    free(y);
    free(x);
    return worst;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_fixtures(void) {
    const char *dir_path = t_path("quant");
    DIR *dir = opendir(dir_path);
    CHECK(dir != NULL, "cannot open %s", dir_path);
    if (!dir) return;
    char *names[64];
    int n_names = 0;
    struct dirent *de;
    while ((de = readdir(dir)) && n_names < 64) {
        size_t len = strlen(de->d_name);
        if (len > 4 && len < 32 && strcmp(de->d_name + len - 4, ".txt") == 0) {
            names[n_names] = malloc(len - 3);
            memcpy(names[n_names], de->d_name, len - 4);
            names[n_names][len - 4] = 0;
            n_names++;
        }
    }
    closedir(dir);
    qsort(names, (size_t)n_names, sizeof names[0], cmp_str);
    CHECK(n_names > 0, "no <TYPE>.txt fixtures in %s", dir_path);
    printf("  fixture  rows x n    worst dot error as a fraction of its tolerance, for the "
           "reference and each kernel set\n");

    for (int i = 0; i < n_names; i++) {
        fixture f;
        if (fixture_load(&f, names[i])) {
            check_layout(&f);
            quant_force_isa("scalar");
            check_dequant(&f, "reference", 1);
            double worst_ref = check_dot(&f, "reference", 1);
            printf("  %-7s %3d x %4d  ref %.3f", f.name, f.rows, f.cols, worst_ref);
            for (int k = 0; k < N_ISA; k++) {
                if (quant_force_isa(isa_names[k]) != 0) continue;
                check_dequant(&f, isa_names[k], 0);
                printf("  %s %.3f", isa_names[k], check_dot(&f, isa_names[k], 0));
            }
            printf("\n");
        }
        fixture_free(&f);
        free(names[i]);
    }
}

/* ---- random blocks: SIMD against the reference, for every supported type ----------------- */

/* Offsets of the f16 scale fields in each type's block, so random blocks get finite scales
 * (random bytes there would make infinities and NaNs, whose payloads are not the point). */
static void sanitize_block(int type, uint8_t *b) {
    static const struct { int type; int off[2]; int n; } fields[] = {
        {MS_TYPE_Q4_0, {0}, 1},     {MS_TYPE_Q4_1, {0, 2}, 2}, {MS_TYPE_Q5_0, {0}, 1},
        {MS_TYPE_Q5_1, {0, 2}, 2},  {MS_TYPE_Q8_0, {0}, 1},    {MS_TYPE_Q2_K, {80, 82}, 2},
        {MS_TYPE_Q3_K, {108}, 1},   {MS_TYPE_Q4_K, {0, 2}, 2}, {MS_TYPE_Q5_K, {0, 2}, 2},
        {MS_TYPE_Q6_K, {208}, 1},   {MS_TYPE_IQ4_NL, {0}, 1},  {MS_TYPE_IQ4_XS, {0}, 1},
        {MS_TYPE_F16, {0}, 1},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (fields[i].type != type) continue;
        for (int k = 0; k < fields[i].n; k++) {
            /* exponent field 0..29: subnormal and normal halves up to 2^15, either sign */
            uint16_t h = (uint16_t)((rng_next() & 0x83FF) | (rng_next() % 30) << 10);
            b[fields[i].off[k]] = (uint8_t)h;
            b[fields[i].off[k] + 1] = (uint8_t)(h >> 8);
        }
    }
    if (type == MS_TYPE_MXFP4) b[0] = (uint8_t)(rng_next() % 200); /* 0, 1: subnormal scales */
    if (type == MS_TYPE_BF16) b[1] = (uint8_t)((b[1] & 0x80) | (0x30 + rng_next() % 32));
    if (type == MS_TYPE_F32) b[3] = (uint8_t)((b[3] & 0x80) | (0x30 + rng_next() % 32));
}

static void test_random_blocks(void) {
    for (int type = 0; type < MS_TYPE_COUNT; type++) {
        const ms_type_info *ti = quant_info(type);
        if (!ti || !ti->supported) continue;
        /* 37 blocks (at least 37*32 values for the 1-value types): odd counts reach tails. */
        int64_t n = (int64_t)ti->block_size * (ti->block_size == 1 ? 37 * 32 + 5 : 37);
        size_t bytes = quant_row_bytes(type, n);
        uint8_t *raw = malloc(bytes);
        float *want = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
        float *x = malloc((size_t)n * sizeof(float));
        for (size_t i = 0; i < bytes; i++) raw[i] = (uint8_t)rng_next();
        for (size_t i = 0; i < bytes; i += (size_t)ti->block_bytes) sanitize_block(type, raw + i);
        for (int64_t i = 0; i < n; i++) x[i] = rng_uniform();
        quant_dequant_ref(type, raw, want, n);
        for (int k = 0; k < N_ISA; k++) {
            if (quant_force_isa(isa_names[k]) != 0) continue;
            /* every length from 1 block up to 37, so each tail path runs */
            for (int64_t len = ti->block_size; len <= n; len += ti->block_size) {
                memset(got, 0xFF, (size_t)len * sizeof(float));
                quant_dequant(type, raw, got, len);
                int64_t d = first_diff(got, want, len);
                CHECK(d < 0, "random %s %s dequant of %lld values: value %lld is %.9g, want %.9g",
                      ti->name, isa_names[k], (long long)len, (long long)d, d < 0 ? 0 : got[d],
                      d < 0 ? 0 : want[d]);
                double abs_sum, w = dot_exact(want, x, len, &abs_sum);
                float g = quant_dot(type, raw, x, len);
                CHECK(fabs(g - w) <= dot_tol(len, abs_sum), "random %s %s dot of %lld: %.9g, "
                      "want %.9g", ti->name, isa_names[k], (long long)len, g, w);
                if (d >= 0) break;
            }
        }
        free(raw);
        free(want);
        free(got);
        free(x);
    }
}


/* ---- q16: 16-bit activations and the integer dot products ---------------------------------
 * Three oracles, from tight to loose:
 *  1. the scalar q16 reference against the double-precision dot of the dequantized weights
 *     (checked against gguf-py above) with the dequantized q16 values: only float rounding
 *     separates them, so a wrong code, scale or min term in the integer decoders shows;
 *  2. every SIMD dot, matvec and matmul against that reference, to the same tight tolerance;
 *  3. the q16 dot against the f32-activation dot, within the bound the activation rounding
 *     allows: sum |w_i| * d_i / 2, with d_i the q16 scale of x_i. */

/* Activation-like values: mostly small, a few large outliers, some exact zeros. */
static void fill_activations(float *x, int64_t n, int positive) {
    for (int64_t i = 0; i < n; i++) {
        float v = (rng_uniform() + rng_uniform() + rng_uniform()) / 3;
        uint64_t r = rng_next() % 64;
        if (r == 0) v *= 40; /* outlier */
        if (r == 1) v = 0;
        x[i] = positive ? fabsf(v) : v;
    }
}

/* Float rounding allowed between two q16 dots of the same integers (summation order, lanes
 * converted to float separately): 1e-6 of sum |w x| for 256 values, growing like sqrt(n). */
static double q16_tol(int64_t n, double abs_sum) {
    double scale = n > 256 ? sqrt((double)n / 256) : 1;
    return 1e-6 * scale * abs_sum + 1e-30;
}

static void test_q16_quantize(void) {
    /* 9 groups of 256 and a partial one of 96; group 3 all zeros, group 4 tiny, group 6 holds an
     * infinity, group 7 a NaN, group 8 spans +-1e4. */
    int64_t n = 9 * 256 + 96;
    size_t bytes = quant_q16_bytes(n);
    float *x = malloc((size_t)n * sizeof(float)), *back = malloc((size_t)n * sizeof(float));
    uint8_t *want = q16_alloc(bytes), *got = q16_alloc(bytes);
    fill_activations(x, n, 0);
    for (int i = 0; i < 256; i++) x[3 * 256 + i] = 0, x[4 * 256 + i] = 1e-31f * rng_uniform();
    x[6 * 256 + 17] = INFINITY;
    x[7 * 256 + 200] = NAN;
    for (int i = 0; i < 256; i++) x[8 * 256 + i] *= 1e4f;
    CHECK(bytes % 64 == 0 && bytes >= (size_t)(2 * n + 4 * 10 + n / 4), "q16 bytes %zu", bytes);
    CHECK(quant_q16_bytes(33) == 0 && quant_q16_bytes(32) == 128, "q16 bytes of 33, 32");

    memset(want, 0xAB, bytes);
    quant_q16_quantize_ref(x, n, want);
    quant_q16_dequant(want, back, n);
    const int16_t *q = (const int16_t *)want;
    const float *d = (const float *)(want + 2 * n);
    const int32_t *s = (const int32_t *)(want + 2 * n + 4 * 10);
    int bad_err = 0, bad_sum = 0, bad_max = 0;
    double err_sum = 0, err_cnt = 0;
    for (int64_t g = 0; g < 10; g++) {
        int64_t len = g < 9 ? 256 : 96;
        int peak = 0;
        for (int64_t i = g * 256; i < g * 256 + len; i++) {
            if (abs(q[i]) > peak) peak = abs(q[i]);
            if (g == 6 || g == 7 || g == 3 || g == 4) continue;
            /* rounding to the nearest step, up to the float rounding of the scale: 0.5 + 1e-3 */
            double e = fabs((double)x[i] - back[i]);
            if (e > 0.501 * d[g]) bad_err++;
            err_sum += e / d[g], err_cnt++;
        }
        if (g == 3 || g == 4 || g == 6 || g == 7) {
            CHECK(peak == 0, "q16 group %lld should be zeros, max |q| %d", (long long)g, peak);
            CHECK(g >= 6 ? isnan(d[g]) : d[g] == 0, "q16 group %lld scale %g", (long long)g, d[g]);
        } else if (peak != 32767) bad_max++;
    }
    for (int64_t k = 0; k < n / 16; k++) {
        int32_t sum = 0;
        for (int j = 0; j < 16; j++) sum += q[16 * k + j];
        if (sum != s[k]) bad_sum++;
    }
    int pad_ok = 1;
    for (size_t i = (size_t)(2 * n + 40 + n / 4); i < bytes; i++) pad_ok &= want[i] == 0;
    CHECK(bad_err == 0, "%d q16 values off by more than half a step", bad_err);
    /* uniform rounding error averages a quarter step; truncation would average a half */
    CHECK(fabs(err_sum / err_cnt - 0.25) < 0.02, "q16 mean |error| %.4f steps, want ~0.25",
          err_sum / err_cnt);
    CHECK(bad_max == 0, "%d q16 groups do not reach +-32767", bad_max);
    CHECK(bad_sum == 0, "%d q16 sums differ from the values' sums", bad_sum);
    CHECK(pad_ok, "q16 padding not zeroed");

    for (int k = 0; k < N_ISA; k++) {
        if (quant_force_isa(isa_names[k]) != 0) continue;
        for (int64_t len = 32; len <= n; len += len < 600 ? 32 : 256) {
            size_t b = quant_q16_bytes(len);
            quant_q16_quantize_ref(x, len, want);
            memset(got, 0xCD, b);
            quant_q16_quantize(x, len, got);
            size_t i = 0;
            while (i < b && got[i] == want[i]) i++;
            CHECK(i == b, "%s q16 quantize of %lld values differs from the reference at byte %zu",
                  isa_names[k], (long long)len, i);
        }
    }
    q16_free(want);
    q16_free(got);
    free(x);
    free(back);
}

/* One weight row (n values) against one activation row, on the kernel set in use: checks
 * oracles 1-3 and returns the error against the f32 path as a fraction of its bound. */
static double check_q16_dot(int type, const uint8_t *row, const float *x, int64_t n,
                            const char *who) {
    const ms_type_info *ti = quant_info(type);
    size_t bytes = quant_q16_bytes(n);
    uint8_t *xq = q16_alloc(bytes);
    float *w = malloc((size_t)n * sizeof(float)), *xh = malloc((size_t)n * sizeof(float));
    quant_q16_quantize(x, n, xq);
    quant_q16_dequant(xq, xh, n);
    quant_dequant_ref(type, row, w, n);
    const float *dq = (const float *)(xq + 2 * n);

    double abs_sum, exact = dot_exact(w, xh, n, &abs_sum), round_bound = 0, f32_abs;
    for (int64_t i = 0; i < n; i++) round_bound += fabs(w[i]) * dq[i / 256] * 0.501;
    double f32_exact = dot_exact(w, x, n, &f32_abs);
    float ref = quant_dot_q16_ref(type, row, xq, n), got = quant_dot_q16(type, row, xq, n);
    double tol = q16_tol(n, abs_sum);
    CHECK(fabs(ref - exact) <= tol, "%s reference q16 dot of %lld: %.9g, want %.9g (tol %.3g)",
          ti->name, (long long)n, ref, exact, tol);
    CHECK(fabs(got - ref) <= tol, "%s %s q16 dot of %lld: %.9g, reference %.9g (tol %.3g)",
          ti->name, who, (long long)n, got, ref, tol);
    double f32_tol = round_bound + dot_tol(n, f32_abs);
    double err = fabs(got - f32_exact);
    CHECK(err <= f32_tol, "%s %s q16 dot of %lld: %.9g, f32 dot %.9g, beyond the rounding bound "
          "%.3g", ti->name, who, (long long)n, got, f32_exact, f32_tol);
    q16_free(xq);
    free(w);
    free(xh);
    return err / f32_tol;
}

/* A control that the checks above can fail: flipping one bit of value 0's code must move every
 * kernel's q16 dot by that weight's change times its activation, a change that is far larger
 * than the tolerance the checks allow. */
static void check_q16_sensitivity(int type, const uint8_t *row, const float *x, int64_t n) {
    /* offset in the first block of the byte holding the low bits of value 0's code */
    static const struct { int type, off; } code0[] = {
        {MS_TYPE_Q4_0, 2},  {MS_TYPE_Q4_1, 4},  {MS_TYPE_Q5_0, 6},    {MS_TYPE_Q5_1, 8},
        {MS_TYPE_Q8_0, 2},  {MS_TYPE_Q2_K, 16}, {MS_TYPE_Q3_K, 32},   {MS_TYPE_Q4_K, 16},
        {MS_TYPE_Q5_K, 48}, {MS_TYPE_Q6_K, 0},  {MS_TYPE_IQ4_NL, 2},  {MS_TYPE_IQ4_XS, 8},
        {MS_TYPE_MXFP4, 1},
    };
    int off = -1;
    for (size_t i = 0; i < sizeof code0 / sizeof code0[0]; i++)
        if (code0[i].type == type) off = code0[i].off;
    CHECK(off >= 0, "%s: no code byte known for the sensitivity control", quant_name(type));
    if (off < 0) return;
    size_t bytes = quant_row_bytes(type, n);
    uint8_t *flip = malloc(bytes), *xq = q16_alloc(quant_q16_bytes(n));
    float *w0 = malloc((size_t)n * sizeof(float)), *w1 = malloc((size_t)n * sizeof(float));
    float *xh = malloc((size_t)n * sizeof(float)), *xs = malloc((size_t)n * sizeof(float));
    memcpy(flip, row, bytes);
    flip[off] ^= 1;
    memcpy(xs, x, (size_t)n * sizeof(float));
    xs[0] = 8; /* a large activation where the weight changes */
    quant_q16_quantize_ref(xs, n, xq);
    quant_q16_dequant(xq, xh, n);
    quant_dequant_ref(type, row, w0, n);
    quant_dequant_ref(type, flip, w1, n);
    double abs_sum, change = ((double)w1[0] - w0[0]) * xh[0];
    dot_exact(w0, xh, n, &abs_sum);
    double tol = q16_tol(n, abs_sum);
    if (fabs(change) > 100 * tol) { /* else the flipped code happens to change little */
        for (int k = 0; k < N_ISA; k++) {
            if (quant_force_isa(isa_names[k]) != 0) continue;
            double got = (double)quant_dot_q16(type, flip, xq, n) - quant_dot_q16(type, row, xq, n);
            CHECK(fabs(got - change) <= 2 * tol, "%s %s: a flipped code moved the q16 dot by %.9g, "
                  "want %.9g", quant_name(type), isa_names[k], got, change);
        }
    }
    free(flip);
    q16_free(xq);
    free(w0), free(w1), free(xh), free(xs);
}

/* Random blocks (all bytes random but the scales), several lengths, plus the fixtures' rows. */
static void test_q16_dots(void) {
    printf("  q16 dot error against the f32 path as a fraction of the activation-rounding bound"
           " (worst):\n");
    for (int type = 0; type < MS_TYPE_COUNT; type++) {
        if (!quant_has_q16(type)) continue;
        const ms_type_info *ti = quant_info(type);
        /* 37 blocks of 32 is 4 groups and a partial one; 9 blocks of 256 is 9 groups */
        int64_t n = (int64_t)ti->block_size * (ti->block_size == 32 ? 37 : 9);
        size_t bytes = quant_row_bytes(type, n);
        uint8_t *raw = malloc(bytes);
        float *x = malloc((size_t)n * sizeof(float));
        for (size_t i = 0; i < bytes; i++) raw[i] = (uint8_t)rng_next();
        for (size_t i = 0; i < bytes; i += (size_t)ti->block_bytes) sanitize_block(type, raw + i);
        printf("    %-7s", ti->name);
        for (int k = 0; k < N_ISA; k++) {
            if (quant_force_isa(isa_names[k]) != 0) continue;
            double worst = 0;
            for (int pass = 0; pass < 4; pass++) {
                fill_activations(x, n, pass == 1);
                for (int64_t len = ti->block_size; len <= n; len += ti->block_size)
                    worst = fmax(worst, check_q16_dot(type, raw, x, len, isa_names[k]));
            }
            printf("  %s %.3f", isa_names[k], worst);
        }
        printf("\n");
        int controls = t_checks;
        for (int rep = 0; rep < 8; rep++) { /* the row from block rep on: 8 first blocks */
            fill_activations(x, n, 0);
            check_q16_sensitivity(type, raw + (size_t)rep * ti->block_bytes, x,
                                  n - (int64_t)rep * ti->block_size);
        }
        CHECK(t_checks > controls, "%s: the sensitivity control never ran", ti->name);
        free(raw);
        free(x);
    }

    /* gguf-py's rows: real scales, as one long row and row by row */
    for (int type = 0; type < MS_TYPE_COUNT; type++) {
        if (!quant_has_q16(type)) continue;
        char rel[64];
        snprintf(rel, sizeof rel, "quant/%s.txt", quant_name(type));
        if (!t_exists(t_path(rel))) continue;
        fixture f;
        if (fixture_load(&f, quant_name(type))) {
            int64_t total = (int64_t)f.rows * f.cols;
            float *x = malloc((size_t)total * sizeof(float));
            fill_activations(x, total, 0);
            for (int k = 0; k < N_ISA; k++) {
                if (quant_force_isa(isa_names[k]) != 0) continue;
                check_q16_dot(type, f.raw, x, total, isa_names[k]);
                for (int r = 0; r < f.rows; r++)
                    check_q16_dot(type, f.raw + (size_t)r * f.row_bytes, x + (int64_t)r * f.cols,
                                  f.cols, isa_names[k]);
            }
            free(x);
        }
        fixture_free(&f);
    }
}

/* The largest integer products each layout allows, with activations at +-32767: the int32
 * lanes of the SIMD kernels are exact only if they never hold more than their share. */
static void test_q16_extremes(void) {
    static const struct { int type; float want; } cases[] = {
        {MS_TYPE_Q6_K, 256.0f * 4096},     /* q - 32 = -32, scale -128 */
        {MS_TYPE_IQ4_XS, 256.0f * 4064},   /* code -127, scale -32 */
        {MS_TYPE_Q5_K, 256.0f * 31 * 63},  /* code 31, scale 63, no min */
        {MS_TYPE_Q4_K, 256.0f * 15 * 63},
        {MS_TYPE_Q3_K, 256.0f * 128},      /* code -4, scale -32 */
        {MS_TYPE_Q2_K, 256.0f * 45},       /* code 3, scale 15 */
        {MS_TYPE_Q8_0, 256.0f * -128},     /* code -128 */
    };
    enum { NB = 4 };
    uint8_t blk[NB * 8 * 34]; /* the largest: Q8_0's 8 blocks per 256 values */
    float x[NB * 256];
    _Alignas(64) uint8_t xq[4 * NB * 256];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int type = cases[c].type;
        const ms_type_info *ti = quant_info(type);
        int bb = ti->block_bytes, per = 256 / ti->block_size; /* blocks per 256 values */
        memset(blk, 0, sizeof blk);
        for (int i = 0; i < NB * per; i++) {
            uint8_t *b = blk + i * bb;
            switch (type) {
            case MS_TYPE_Q6_K: memset(b + 192, 0x80, 16), b[209] = 0x3C; break; /* d = 1 */
            case MS_TYPE_IQ4_XS: b[1] = 0x3C; break;
            case MS_TYPE_Q4_K:
            case MS_TYPE_Q5_K:
                /* d = 1, dmin = 0; six-bit scales 63 and mins 0; codes all ones */
                b[1] = 0x3C;
                memset(b + 4, 0xFF, 4), memset(b + 12, 0x0F, 4);
                memset(b + 16, 0xFF, (size_t)bb - 16);
                break;
            case MS_TYPE_Q3_K: b[109] = 0x3C; break;
            case MS_TYPE_Q2_K: memset(b, 0x0F, 16), memset(b + 16, 0xFF, 64), b[81] = 0x3C; break;
            case MS_TYPE_Q8_0: b[1] = 0x3C, memset(b + 2, 0x80, 32); break;
            }
        }
        for (int i = 0; i < NB * 256; i++) x[i] = 1.0f;
        for (int k = 0; k < N_ISA; k++) {
            if (quant_force_isa(isa_names[k]) != 0) continue;
            for (int sign = 1; sign >= -1; sign -= 2) {
                for (int i = 0; i < NB * 256; i++) x[i] = (float)sign;
                quant_q16_quantize(x, NB * 256, xq);
                float want = sign * NB * cases[c].want, y[2] = {0, 0};
                float got = quant_dot_q16(type, blk, xq, NB * 256);
                quant_matmul_q16(type, blk, (size_t)(NB * per * bb), NB * 256, 0, 1, xq, 1, y, 1);
                CHECK(fabsf(got - want) <= 1e-6f * fabsf(want) && fabsf(y[0] - want) <= 1e-6f * fabsf(want),
                      "%s %s q16 extreme block: dot %.9g, matmul %.9g, want %.9g", ti->name,
                      isa_names[k], got, y[0], want);
            }
        }
    }
}

/* MXFP4 blocks whose E8M0 scale is 0 or 1 have subnormal scales (2^-128, 2^-127); beside normal
 * blocks they vanish under any relative tolerance, so a row of only those checks them. */
static void test_q16_mxfp4_subnormal(void) {
    enum { NB = 19 }; /* two full q16 groups and a partial one */
    uint8_t row[NB * 17];
    float x[NB * 32], y[2];
    _Alignas(64) uint8_t xq[4096];
    for (int i = 0; i < NB * 17; i++) row[i] = (uint8_t)rng_next();
    for (int b = 0; b < NB; b++) row[17 * b] = (uint8_t)(b % 2);
    fill_activations(x, NB * 32, 0);
    quant_q16_quantize_ref(x, NB * 32, xq);
    float *w = malloc(NB * 32 * sizeof(float)), *xh = malloc(NB * 32 * sizeof(float));
    quant_dequant_ref(MS_TYPE_MXFP4, row, w, NB * 32);
    quant_q16_dequant(xq, xh, NB * 32);
    double abs_sum, want = dot_exact(w, xh, NB * 32, &abs_sum);
    for (int k = 0; k < N_ISA; k++) {
        if (quant_force_isa(isa_names[k]) != 0) continue;
        float got = quant_dot_q16(MS_TYPE_MXFP4, row, xq, NB * 32);
        const void *rows[2] = {xq, xq};
        quant_matmul_q16_rows(MS_TYPE_MXFP4, row, sizeof row, NB * 32, 0, 1, rows, 2, y, 1);
        double tol = 1e-5 * abs_sum; /* relative only: q16_tol's floor would swamp 2^-128 */
        CHECK(abs_sum > 0 && fabs(got - want) <= tol && fabs(y[0] - want) <= tol &&
                  fabs(y[1] - want) <= tol,
              "MXFP4 %s subnormal scales: dot %.9g, matmul %.9g %.9g, want %.9g", isa_names[k],
              got, y[0], y[1], want);
    }
    free(w);
    free(xh);
}

/* matvec and matmul against the reference dots: rows [r0, r1) of a matrix, tokens in any order
 * (and repeated), y rows ldy apart; nothing outside the written range may change. The matrix
 * is large enough that the kernels' blocking shows: several K-slices per row and several row
 * blocks (quant_q16_avx512.c: MM_L1_BYTES, MM_L2_BYTES), with a partial q16 group for the
 * 32-value types. */
static void test_q16_matmul(void) {
    enum { MAX_TOK = 19, PAD = 3 };
    static const int tok_counts[] = {1, 2, 3, 8, 9, 19};
    for (int type = 0; type < MS_TYPE_COUNT; type++) {
        if (!quant_has_q16(type)) continue;
        const ms_type_info *ti = quant_info(type);
        int64_t n = ti->block_size == 32 ? 32 * (8 * 9 + 3) : 256 * 9;
        size_t row_bytes = quant_row_bytes(type, n), xb = quant_q16_bytes(n);
        int rows = (int)(3 * 65536 / row_bytes) + 5, ldy = rows + PAD;
        uint8_t *w = malloc(row_bytes * rows);
        uint8_t *xq = q16_alloc(xb * MAX_TOK);
        float *x = malloc((size_t)n * sizeof(float)), *wf = malloc((size_t)n * sizeof(float));
        float *xf = malloc((size_t)n * MAX_TOK * sizeof(float));
        float *y = malloc(sizeof(float) * ldy * MAX_TOK);
        float *ref = malloc(sizeof(float) * rows * MAX_TOK), *tol = malloc(sizeof(float) * rows * MAX_TOK);
        for (size_t i = 0; i < row_bytes * rows; i++) w[i] = (uint8_t)rng_next();
        for (size_t i = 0; i < row_bytes * rows; i += (size_t)ti->block_bytes) sanitize_block(type, w + i);
        for (int t = 0; t < MAX_TOK; t++) {
            fill_activations(x, n, t % 3 == 1);
            quant_q16_quantize_ref(x, n, xq + xb * t);
            quant_q16_dequant(xq + xb * t, xf + n * t, n);
        }
        for (int r = 0; r < rows; r++) {
            quant_dequant_ref(type, w + row_bytes * r, wf, n);
            for (int t = 0; t < MAX_TOK; t++) {
                double abs_sum;
                dot_exact(wf, xf + n * t, n, &abs_sum);
                ref[r * MAX_TOK + t] = quant_dot_q16_ref(type, w + row_bytes * r, xq + xb * t, n);
                tol[r * MAX_TOK + t] = (float)q16_tol(n, abs_sum);
            }
        }
        for (int k = 0; k < N_ISA; k++) {
            if (quant_force_isa(isa_names[k]) != 0) continue;
            int bad = 0, bad_out = 0;
            for (size_t c = 0; c < sizeof tok_counts / sizeof tok_counts[0]; c++) {
                int nt = tok_counts[c], r0 = (int)(c % 3), r1 = rows - (int)(c % 2);
                const void *xrows[MAX_TOK];
                int which[MAX_TOK];
                for (int t = 0; t < nt; t++) {
                    which[t] = c % 2 ? (t * 7 + (int)c) % MAX_TOK : t;
                    if (c % 2 && t == 2) which[t] = which[0]; /* a repeated token */
                    xrows[t] = xq + xb * which[t];
                }
                for (int i = 0; i < ldy * MAX_TOK; i++) y[i] = -1234.5f;
                if (c % 2) quant_matmul_q16_rows(type, w, row_bytes, n, r0, r1, xrows, nt, y, ldy);
                else quant_matmul_q16(type, w, row_bytes, n, r0, r1, xq, nt, y, ldy);
                for (int t = 0; t < MAX_TOK; t++)
                    for (int r = 0; r < ldy; r++) {
                        float v = y[t * ldy + r];
                        if (t >= nt || r < r0 || r >= r1) {
                            bad_out += v != -1234.5f;
                            continue;
                        }
                        float want = ref[r * MAX_TOK + which[t]];
                        if (!(fabsf(v - want) <= tol[r * MAX_TOK + which[t]]) && bad++ < 3)
                            fprintf(stderr, "  %s %s matmul n_tok %d: y[%d][%d] = %.9g, reference "
                                    "%.9g\n", ti->name, isa_names[k], nt, t, r, v, want);
                    }
            }
            CHECK(bad == 0, "%s %s q16 matmul: %d values beyond tolerance", ti->name, isa_names[k], bad);
            CHECK(bad_out == 0, "%s %s q16 matmul wrote %d values outside its rows/tokens", ti->name,
                  isa_names[k], bad_out);
            /* matvec: one token, rows [2, rows - 1) */
            for (int i = 0; i < rows; i++) y[i] = -1234.5f;
            quant_matvec_q16(type, w, row_bytes, xq, y, n, 2, rows - 1);
            CHECK(y[1] == -1234.5f && y[rows - 1] == -1234.5f, "%s %s matvec wrote outside [r0, r1)",
                  ti->name, isa_names[k]);
            int bad_mv = 0;
            for (int r = 2; r < rows - 1; r++)
                bad_mv += !(fabsf(y[r] - ref[r * MAX_TOK]) <= tol[r * MAX_TOK]);
            CHECK(bad_mv == 0, "%s %s q16 matvec: %d rows beyond tolerance", ti->name, isa_names[k], bad_mv);
        }
        free(w);
        q16_free(xq);
        free(x);
        free(wf);
        free(xf);
        free(y);
        free(ref);
        free(tol);
    }
    CHECK(!quant_has_q16(MS_TYPE_F32) && !quant_has_q16(MS_TYPE_F16) && !quant_has_q16(MS_TYPE_BF16)
          && !quant_has_q16(MS_TYPE_Q8_K) && !quant_has_q16(-1) && quant_has_q16(MS_TYPE_Q4_K),
          "quant_has_q16 covers the quantized block types only");
}

/* ---- hand-made blocks for types without fixtures ----------------------------------------- */

/* Builds one block per type from the layout in ggml-common.h and checks named values, so a
 * type no fixture covers still has an oracle that is not the code under test. */
static void test_known_blocks(void) {
    static const int iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                  1,    13,   25,  38,  53,  69,  89,  113};
    float y[32];
    uint8_t b[32];
    quant_force_isa("scalar");

    /* Q4_1: d = 0.5 (0x3800), m = -2 (0xC000); byte j = j | (15 - j) << 4. */
    b[0] = 0x00, b[1] = 0x38, b[2] = 0x00, b[3] = 0xC0;
    for (int j = 0; j < 16; j++) b[4 + j] = (uint8_t)(j | (15 - j) << 4);
    quant_dequant_ref(MS_TYPE_Q4_1, b, y, 32);
    for (int j = 0; j < 16; j++) {
        CHECK(y[j] == 0.5f * j - 2, "Q4_1 value %d = %g", j, y[j]);
        CHECK(y[16 + j] == 0.5f * (15 - j) - 2, "Q4_1 value %d = %g", 16 + j, y[16 + j]);
    }

    /* Q5_0: d = 0.25 (0x3400); fifth bits qh = 0xF00FA5A5 (little-endian), nibbles as above. */
    uint32_t qh = 0xF00FA5A5u;
    b[0] = 0x00, b[1] = 0x34;
    for (int k = 0; k < 4; k++) b[2 + k] = (uint8_t)(qh >> (8 * k));
    for (int j = 0; j < 16; j++) b[6 + j] = (uint8_t)(j | (15 - j) << 4);
    quant_dequant_ref(MS_TYPE_Q5_0, b, y, 32);
    for (int j = 0; j < 32; j++) {
        int nib = j < 16 ? j : 15 - (j - 16);
        int q = nib + 16 * (int)((qh >> j) & 1);
        CHECK(y[j] == 0.25f * (q - 16), "Q5_0 value %d = %g, want %g", j, y[j], 0.25f * (q - 16));
    }

    /* Q5_1: d = 2 (0x4000), m = 1 (0x3C00), same qh and nibbles. */
    b[0] = 0x00, b[1] = 0x40, b[2] = 0x00, b[3] = 0x3C;
    for (int k = 0; k < 4; k++) b[4 + k] = (uint8_t)(qh >> (8 * k));
    for (int j = 0; j < 16; j++) b[8 + j] = (uint8_t)(j | (15 - j) << 4);
    quant_dequant_ref(MS_TYPE_Q5_1, b, y, 32);
    for (int j = 0; j < 32; j++) {
        int nib = j < 16 ? j : 15 - (j - 16);
        int q = nib + 16 * (int)((qh >> j) & 1);
        CHECK(y[j] == 2.0f * q + 1, "Q5_1 value %d = %g, want %d", j, y[j], 2 * q + 1);
    }

    /* IQ4_NL: d = 1; byte j = j | (15 - j) << 4 reads out the code book forwards, backwards. */
    b[0] = 0x00, b[1] = 0x3C;
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(j | (15 - j) << 4);
    quant_dequant_ref(MS_TYPE_IQ4_NL, b, y, 32);
    for (int j = 0; j < 16; j++) {
        CHECK(y[j] == iq4nl[j], "IQ4_NL value %d = %g, want %d", j, y[j], iq4nl[j]);
        CHECK(y[16 + j] == iq4nl[15 - j], "IQ4_NL value %d = %g", 16 + j, y[16 + j]);
    }

    /* MXFP4: scale byte 127 means 2^0; E2M1 codes 0..7 are 0 .5 1 1.5 2 3 4 6, 8..15 negative. */
    static const float e2m1[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.f, -.5f, -1, -1.5f, -2, -3, -4, -6};
    b[0] = 127;
    for (int j = 0; j < 16; j++) b[1 + j] = (uint8_t)(j | (15 - j) << 4);
    quant_dequant_ref(MS_TYPE_MXFP4, b, y, 32);
    for (int j = 0; j < 16; j++) {
        CHECK(y[j] == e2m1[j], "MXFP4 value %d = %g, want %g", j, y[j], e2m1[j]);
        CHECK(y[16 + j] == e2m1[15 - j], "MXFP4 value %d = %g", 16 + j, y[16 + j]);
    }
    b[0] = 0; /* smallest scale: 2^-127, and 6 * 2^-127 is still representable (subnormal) */
    quant_dequant_ref(MS_TYPE_MXFP4, b, y, 32);
    CHECK(y[7] == ldexpf(6, -127), "MXFP4 with e=0: %g, want %g", y[7], ldexpf(6, -127));
}

/* ---- half precision --------------------------------------------------------------------- */

/* Value of a half from its fields, in double: the definition, not the code under test. */
static double half_value(uint16_t h) {
    int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    double v = exp == 0 ? ldexp(mant, -24) : ldexp(1024 + mant, exp - 25);
    return (h & 0x8000) ? -v : v;
}

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#endif

static void test_f16(void) {
    int bad_value = 0, bad_trip = 0, bad_round = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ms_f16_to_f32((uint16_t)h);
        int exp = (h >> 10) & 0x1F;
        if (exp == 0x1F) {
            int nan = (h & 0x3FF) != 0;
            if (nan != (isnan(f) != 0) || (!nan && f != ((h & 0x8000) ? -INFINITY : INFINITY)) ||
                (nan && (signbit(f) != 0) != ((h & 0x8000) != 0)))
                bad_value++;
            uint16_t back = ms_f32_to_f16(f);
            /* a NaN stays a NaN of the same sign; quiet ones keep their bits */
            if (nan ? ((back & 0x7C00) != 0x7C00 || !(back & 0x3FF) ||
                       ((back ^ h) & 0x8000) || ((h & 0x200) && back != h))
                    : back != h)
                bad_trip++;
            continue;
        }
        if ((double)f != half_value((uint16_t)h) || (h == 0x8000 && !signbit(f))) bad_value++;
        if (ms_f32_to_f16(f) != h) bad_trip++;
        /* Rounding: the midpoint to the next half up goes to the even one, and a float either
         * side of it goes to the nearer one. 0x7BFF's upper neighbour is infinity, 2^16. */
        if ((h & 0x7FFF) < 0x7C00) {
            double lo = half_value((uint16_t)h), hi = half_value((uint16_t)(h + 1));
            float mid = (float)((lo + hi) / 2); /* exact: 12 significant bits */
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            float toward_zero = nextafterf(mid, 0), away = nextafterf(mid, 2 * mid);
            if (ms_f32_to_f16(mid) != even || ms_f32_to_f16(toward_zero) != h ||
                ms_f32_to_f16(away) != (uint16_t)(h + 1))
                bad_round++;
        }
    }
    CHECK(bad_value == 0, "%d halves convert to the wrong float", bad_value);
    CHECK(bad_trip == 0, "%d halves do not survive f16 -> f32 -> f16", bad_trip);
    CHECK(bad_round == 0, "%d halfway cases round wrong", bad_round);
    CHECK(ms_f32_to_f16(1e-9f) == 0 && ms_f32_to_f16(-1e-9f) == 0x8000, "tiny floats -> +-0");
    CHECK(ms_f32_to_f16(1e6f) == 0x7C00 && ms_f32_to_f16(-INFINITY) == 0xFC00, "overflow -> inf");
    CHECK(ms_bf16_to_f32(0x3F80) == 1.0f && ms_bf16_to_f32(0xC040) == -3.0f, "bf16");

#if defined(__x86_64__)
    /* The SIMD kernels convert with vcvtph2ps, so the two must agree bit for bit, NaNs too. */
    if (__builtin_cpu_supports("f16c")) {
        int bad_hw = 0, bad_hw_back = 0;
        for (uint32_t h = 0; h < 65536; h++)
            if (bits_of(ms_f16_to_f32((uint16_t)h)) != bits_of(hw_f16_to_f32((uint16_t)h)))
                bad_hw++;
        for (int i = 0; i < 1 << 20; i++) {
            uint32_t u = (uint32_t)rng_next();
            if (i < 512) u = (u & 0x807FFFFF) | (uint32_t)(0x66 + i % 0x1A) << 23 | (i & 256u) << 22;
            if (i >= 512 && i < 1024) u |= 0x7F800000; /* NaNs and infinities */
            if (ms_f32_to_f16(float_of(u)) != hw_f32_to_f16(float_of(u))) bad_hw_back++;
        }
        CHECK(bad_hw == 0, "%d halves differ from vcvtph2ps", bad_hw);
        CHECK(bad_hw_back == 0, "%d floats differ from vcvtps2ph", bad_hw_back);
    }
#endif
}

/* ---- table and dispatch ------------------------------------------------------------------ */

static void test_table(void) {
    static const struct { int type, block_size, block_bytes; } known[] = {
        {MS_TYPE_F32, 1, 4},      {MS_TYPE_F16, 1, 2},      {MS_TYPE_BF16, 1, 2},
        {MS_TYPE_Q4_0, 32, 18},   {MS_TYPE_Q4_1, 32, 20},   {MS_TYPE_Q5_0, 32, 22},
        {MS_TYPE_Q5_1, 32, 24},   {MS_TYPE_Q8_0, 32, 34},   {MS_TYPE_Q8_1, 32, 36},
        {MS_TYPE_Q2_K, 256, 84},  {MS_TYPE_Q3_K, 256, 110}, {MS_TYPE_Q4_K, 256, 144},
        {MS_TYPE_Q5_K, 256, 176}, {MS_TYPE_Q6_K, 256, 210}, {MS_TYPE_Q8_K, 256, 292},
        {MS_TYPE_IQ4_NL, 32, 18}, {MS_TYPE_IQ4_XS, 256, 136}, {MS_TYPE_MXFP4, 32, 17},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        const ms_type_info *ti = quant_info(known[i].type);
        CHECK(ti && ti->block_size == known[i].block_size && ti->block_bytes == known[i].block_bytes,
              "layout of type %d", known[i].type);
    }
    CHECK(quant_info(4) == NULL && quant_info(-1) == NULL && quant_info(MS_TYPE_COUNT) == NULL,
          "removed/out-of-range type numbers are unknown");
    CHECK(strcmp(quant_name(4), "type4") == 0, "quant_name(4) = %s", quant_name(4));
    CHECK(strcmp(quant_name(MS_TYPE_IQ4_XS), "IQ4_XS") == 0, "IQ4_XS name");
    CHECK(quant_info(16) && !quant_info(16)->supported, "IQ2_XXS is known, not supported");
    CHECK(quant_row_bytes(MS_TYPE_Q4_K, 100) == 0, "partial block");
    CHECK(quant_row_bytes(MS_TYPE_Q4_K, 512) == 288, "two Q4_K blocks");
    CHECK(quant_row_bytes(99, 32) == 0, "unknown type");

    quant_init();
    const char *best = quant_isa();
    CHECK(quant_force_isa("no-such-isa") == -1, "unknown ISA name refused");
    CHECK(quant_force_isa("scalar") == 0 && strcmp(quant_isa(), "scalar") == 0, "scalar ISA");
    const char *widest = "scalar";
    printf("  kernels: chosen %s; available:", best);
    for (int k = 0; k < N_ISA; k++)
        if (quant_force_isa(isa_names[k]) == 0) printf(" %s", widest = isa_names[k]);
    printf("\n");
    CHECK(strcmp(best, widest) == 0, "quant_init chose %s, but %s is available", best, widest);
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    test_table();
    test_f16();
    test_known_blocks();
    test_fixtures();
    test_random_blocks();
    test_q16_quantize();
    test_q16_dots();
    test_q16_extremes();
    test_q16_mxfp4_subnormal();
    test_q16_matmul();
    return t_done("test_quant");
}
