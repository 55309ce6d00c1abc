/* bench_quant.c - times the weight kernels per type and kernel set (scalar, avx2, avx512): the
 * f32-activation matvec (decode today), and the q16 integer paths: matvec (n_tok 1) and the
 * matrix product over n_tok tokens (prefill, batched experts), beside the f32 batched product
 * forward.c uses now (dequantize a row once, then one f32 dot per token).
 *
 * Not a test (tests/test_quant.c checks results) and not part of `make`. Weights are random
 * codes with sane block scales, so the timing is that of real rows, not of their values.
 *
 * Build and run from the project root:
 *   make build/bench_quant
 *   ./build/bench_quant                       # all types, all ISAs, 64 MiB, 1 thread
 *   ./build/bench_quant --types Q4_K,Q8_0 --isa avx512 --threads 2 --tok 1,8,32,512 --csv
 * If other modules do not build yet, list the objects instead of the library:
 *   gcc ... bench/bench_quant.c src/quant.c src/quant_q16.c src/util.c build/quant_*avx*.o
 *
 * Output per (type, ISA, path, n_tok): weight GB/s (10^9 bytes of the matrix per second: each
 * pass reads every weight once, whatever n_tok) and GMAC/s (weights times tokens per second),
 * mean +- sd and best over --reps timed passes after --warmup untimed ones; the best matvec
 * also as a fraction of a plain read of the same buffer (the streaming-read peak), the best
 * product as a multiple of the same ISA's best q16 matvec per token. n_tok 1 uses a --mib matrix, larger than the last-level
 * cache; products use the largest matrix up to --mib that keeps a pass near 2 GMAC.
 */
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "util.h"

typedef struct opts {
    double mib;        /* matrix size */
    int64_t n;         /* columns (n_embd-like) */
    int reps, warmup, threads, csv;
    const char *types; /* comma-separated names, or NULL for all supported */
    const char *isas;  /* comma-separated, or NULL for all available */
    const char *toks;  /* comma-separated token counts for the q16 paths; "" for none */
} opts;

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t rng_next(void) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}
static float rng_uniform(void) { return (float)((rng_next() >> 40) / 16777216.0 * 2.0 - 1.0); }

static int in_list(const char *list, const char *name) {
    if (!list) return 1;
    size_t len = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == len && strncmp(p, name, len) == 0) return 1;
        p += l + (e ? 1 : 0);
    }
    return 0;
}

/* Random codes; the f16 scale fields (and MXFP4's exponent) set to small normal values so no
 * infinities, NaNs or subnormal products skew the timing. */
static void fill_weights(int type, uint8_t *w, size_t bytes) {
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t r = rng_next();
        memcpy(w + i, &r, bytes - i < 8 ? bytes - i : 8);
    }
    const ms_type_info *ti = quant_info(type);
    if (type == MS_TYPE_F32 || type == MS_TYPE_F16 || type == MS_TYPE_BF16) {
        for (size_t i = 0; i < bytes; i += (size_t)ti->block_bytes) {
            float f = rng_uniform();
            if (type == MS_TYPE_F32) memcpy(w + i, &f, 4);
            else {
                uint32_t u;
                memcpy(&u, &f, 4);
                uint16_t h = type == MS_TYPE_F16 ? ms_f32_to_f16(f) : (uint16_t)(u >> 16);
                memcpy(w + i, &h, 2);
            }
        }
        return;
    }
    static const struct { int type, off[2], n; } fields[] = {
        {MS_TYPE_Q4_0, {0}, 1},   {MS_TYPE_Q4_1, {0, 2}, 2},  {MS_TYPE_Q5_0, {0}, 1},
        {MS_TYPE_Q5_1, {0, 2}, 2}, {MS_TYPE_Q8_0, {0}, 1},    {MS_TYPE_Q2_K, {80, 82}, 2},
        {MS_TYPE_Q3_K, {108}, 1}, {MS_TYPE_Q4_K, {0, 2}, 2},  {MS_TYPE_Q5_K, {0, 2}, 2},
        {MS_TYPE_Q6_K, {208}, 1}, {MS_TYPE_IQ4_NL, {0}, 1},   {MS_TYPE_IQ4_XS, {0}, 1},
    };
    for (size_t i = 0; i < bytes; i += (size_t)ti->block_bytes) {
        if (type == MS_TYPE_MXFP4) w[i] = (uint8_t)(120 + rng_next() % 8);
        for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
            if (fields[f].type != type) continue;
            for (int k = 0; k < fields[f].n; k++) {
                uint16_t h = ms_f32_to_f16(0.001f + 0.01f * (float)(rng_next() % 100) / 100);
                memcpy(w + i + fields[f].off[k], &h, 2);
            }
        }
    }
}

/* What one timed pass runs. */
enum path { PATH_F32, PATH_Q16 };

typedef struct job {
    int type, path, n_tok;
    const uint8_t *w;
    size_t row_bytes;
    const float *x;    /* [n_tok][n] f32 activations */
    const void *xq;    /* [n_tok] q16 rows */
    float *y;          /* [n_tok][rows] */
    float *scratch;    /* n floats per thread (the f32 batched path's dequantized row) */
    int64_t n, rows, r0, r1;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    if (j->path == PATH_Q16) {
        if (j->n_tok == 1) quant_matvec_q16(j->type, j->w, j->row_bytes, j->xq, j->y, j->n, j->r0, j->r1);
        else quant_matmul_q16(j->type, j->w, j->row_bytes, j->n, j->r0, j->r1, j->xq, j->n_tok, j->y, j->rows);
    } else if (j->n_tok == 1) {
        quant_matvec(j->type, j->w, j->row_bytes, j->x, j->y, j->n, j->r0, j->r1);
    } else {
        /* forward.c's mm_rows today: each row dequantized once, then an f32 dot per token */
        for (int64_t r = j->r0; r < j->r1; r++) {
            quant_dequant(j->type, j->w + (size_t)r * j->row_bytes, j->scratch, j->n);
            for (int t = 0; t < j->n_tok; t++)
                j->y[t * j->rows + r] = quant_dot(MS_TYPE_F32, j->scratch, j->x + t * j->n, j->n);
        }
    }
    return NULL;
}

/* One pass of a job split by rows over `threads` threads (the calling one included); returns
 * seconds. */
static double timed_pass(const job *proto, int threads) {
    job jobs[64];
    pthread_t tid[64];
    for (int t = 0; t < threads; t++) {
        jobs[t] = *proto;
        jobs[t].r0 = proto->rows * t / threads;
        jobs[t].r1 = proto->rows * (t + 1) / threads;
        jobs[t].scratch = proto->scratch + t * proto->n;
    }
    double t0 = ms_time();
    for (int t = 1; t < threads; t++) pthread_create(&tid[t], NULL, run_job, &jobs[t]);
    run_job(&jobs[0]);
    for (int t = 1; t < threads; t++) pthread_join(tid[t], NULL);
    return ms_time() - t0;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* 32-byte loads into four independent xors: as close to the memory system's streaming-read
 * rate as one core gets, so the kernels' GB/s can be read against it. */
__attribute__((target("avx2"))) static uint64_t read_bytes_avx2(const uint8_t *p, size_t bytes) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= bytes; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    return (uint64_t)_mm256_extract_epi64(a, 0) ^ (uint64_t)_mm256_extract_epi64(a, 3);
}
#endif

static uint64_t read_bytes(const uint8_t *p, size_t bytes) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) return read_bytes_avx2(p, bytes);
#endif
    uint64_t s[8] = {0}, w;
    for (size_t i = 0; i + 64 <= bytes; i += 64)
        for (int k = 0; k < 8; k++) memcpy(&w, p + i + 8 * k, 8), s[k] ^= w;
    return s[0] ^ s[1] ^ s[2] ^ s[3] ^ s[4] ^ s[5] ^ s[6] ^ s[7];
}

static void *read_job(void *arg) {
    job *j = arg;
    j->y[0] = (float)read_bytes(j->w + j->r0, (size_t)(j->r1 - j->r0));
    return NULL;
}

static double read_peak(const uint8_t *buf, size_t bytes, int threads, int reps) {
    job jobs[64];
    pthread_t tid[64];
    float sink[64];
    double best = 0;
    for (int r = 0; r < reps + 1; r++) {
        for (int t = 0; t < threads; t++)
            jobs[t] = (job){.w = buf, .y = &sink[t], .r0 = (int64_t)(bytes / 64 * t / threads * 64),
                            .r1 = (int64_t)(bytes / 64 * (t + 1) / threads * 64)};
        double t0 = ms_time();
        for (int t = 1; t < threads; t++) pthread_create(&tid[t], NULL, read_job, &jobs[t]);
        read_job(&jobs[0]);
        for (int t = 1; t < threads; t++) pthread_join(tid[t], NULL);
        double gbs = (double)bytes / (ms_time() - t0) / 1e9;
        if (r > 0 && gbs > best) best = gbs; /* first pass warms the pages */
    }
    return best;
}

static void print_cpu(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256], model[256] = "unknown";
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) snprintf(model, sizeof model, "%s", c + 2);
            model[strcspn(model, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
    printf("# cpu: %s\n", model);
}

static void usage(void) {
    fprintf(stderr, "usage: bench_quant [--mib 64] [--n 4096] [--reps 10] [--warmup 2] "
                    "[--threads 1] [--types Q4_K,...] [--isa avx512,...] [--tok 1,8,32,512] [--csv]\n");
    exit(2);
}

/* Mean, sd and best of GB/s over the timed passes. The best pass is the one least disturbed
 * by whatever else the machine runs (interference only ever slows a pass down). */
static void measure(const job *j, size_t bytes, const opts *o, double *mean, double *sd,
                    double *best) {
    for (int r = 0; r < o->warmup; r++) timed_pass(j, o->threads);
    double sum = 0, sum2 = 0;
    *best = 0;
    for (int r = 0; r < o->reps; r++) {
        double gbs = (double)bytes / timed_pass(j, o->threads) / 1e9;
        sum += gbs;
        sum2 += gbs * gbs;
        *best = fmax(*best, gbs);
    }
    *mean = sum / o->reps;
    *sd = sqrt(fmax(0, (sum2 - sum * *mean) / (o->reps - 1)));
}

int main(int argc, char **argv) {
    opts o = {.mib = 64, .n = 4096, .reps = 10, .warmup = 2, .threads = 1, .toks = "1,8,32,512"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--csv") == 0) { o.csv = 1; continue; }
        if (!v) usage();
        if (strcmp(a, "--mib") == 0) o.mib = atof(v);
        else if (strcmp(a, "--n") == 0) o.n = atoll(v);
        else if (strcmp(a, "--reps") == 0) o.reps = atoi(v);
        else if (strcmp(a, "--warmup") == 0) o.warmup = atoi(v);
        else if (strcmp(a, "--threads") == 0) o.threads = atoi(v);
        else if (strcmp(a, "--types") == 0) o.types = v;
        else if (strcmp(a, "--isa") == 0) o.isas = v;
        else if (strcmp(a, "--tok") == 0) o.toks = v;
        else usage();
        i++;
    }
    if (o.n <= 0 || o.n % 256 || o.reps < 2 || o.threads < 1 || o.threads > 64) usage();
    int toks[16], n_toks = 0, max_tok = 1;
    for (const char *p = o.toks; *p && n_toks < 16;) {
        toks[n_toks] = atoi(p);
        if (toks[n_toks] < 1) usage();
        if (toks[n_toks] > max_tok) max_tok = toks[n_toks];
        n_toks++;
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }

    quant_init();
    size_t max_bytes = (size_t)(o.mib * 1048576), xq_bytes = quant_q16_bytes(o.n);
    uint8_t *w = ms_malloc_aligned(max_bytes + 4096);
    float *x = ms_malloc_aligned((size_t)max_tok * o.n * sizeof(float));
    uint8_t *xq = ms_malloc_aligned((size_t)max_tok * xq_bytes);
    /* y holds the largest of: a matvec's rows, a product's rows times tokens (2 GMAC) */
    size_t y_len = max_bytes / 16 + 64 + (size_t)(2.2e9 / o.n) + 64 * (size_t)max_tok;
    float *y = ms_malloc_aligned(y_len * sizeof(float));
    float *scratch = ms_malloc_aligned((size_t)o.threads * o.n * sizeof(float));
    if (!w || !x || !xq || !y || !scratch) {
        fprintf(stderr, "bench_quant: cannot allocate %.0f MiB\n", o.mib);
        return 1;
    }
    for (int64_t i = 0; i < (int64_t)max_tok * o.n; i++) x[i] = rng_uniform();
    memset(w, 1, max_bytes);
    double peak = read_peak(w, max_bytes, o.threads, 5);

    print_cpu();
    printf("# matrix up to %.0f MiB, n = %lld columns, %d thread(s), %d warm-up + %d timed passes; "
           "best kernels: %s\n", o.mib, (long long)o.n, o.threads, o.warmup, o.reps, quant_isa());
    printf("# streaming read peak: %.1f GB/s\n", peak);
    /* the per-token cost of the q16 paths beside the weights: quantizing the activation row */
    static const char *const isa_list[] = {"scalar", "avx2", "avx512"};
    printf("# q16 quantize of one %lld-value row:", (long long)o.n);
    for (int k = 0; k < 3; k++) {
        if (!in_list(o.isas, isa_list[k]) || quant_force_isa(isa_list[k]) != 0) continue;
        double best = 1e30;
        for (int r = 0; r < 200; r++) {
            double t0 = ms_time();
            quant_q16_quantize(x, o.n, xq);
            best = fmin(best, ms_time() - t0);
        }
        printf(" %s %.2f us", isa_list[k], best * 1e6);
    }
    printf("\n");
    if (o.csv)
        printf("type,isa,path,n_tok,rows,n,mib,threads,gbps_mean,gbps_sd,gbps_best,gmacs_mean,"
               "gmacs_best,frac_of_peak,x_q16_matvec\n");
    else
        printf("%-7s %-7s %-4s %5s %7s %17s %6s %17s %8s\n", "type", "isa", "path", "n_tok", "rows",
               "GB/s mean ± sd", "best", "GMAC/s mean best", "vs");

    static const char *const isas[] = {"scalar", "avx2", "avx512"};
    for (int type = 0; type < MS_TYPE_COUNT; type++) {
        const ms_type_info *ti = quant_info(type);
        if (!ti || !ti->supported || !in_list(o.types, ti->name)) continue;
        size_t row_bytes = quant_row_bytes(type, o.n);
        int64_t max_rows = (int64_t)(max_bytes / row_bytes);
        fill_weights(type, w, (size_t)max_rows * row_bytes);
        double wpb = (double)ti->block_size / ti->block_bytes; /* weights per byte */
        for (int k = 0; k < 3; k++) {
            if (!in_list(o.isas, isas[k]) || quant_force_isa(isas[k]) != 0) continue;
            for (int t = 0; t < max_tok; t++) quant_q16_quantize(x + t * o.n, o.n, xq + t * xq_bytes);
            double q16_matvec = 0; /* GB/s, the per-token reference for products */
            for (int p = -1; p < n_toks; p++) {
                /* p = -1: the f32 matvec; then each token count on q16, and beside each
                 * product the f32 batched path */
                int nt = p < 0 ? 1 : toks[p];
                for (int path = PATH_Q16; path >= PATH_F32; path--) {
                    int run = p < 0 ? path == PATH_F32 : path == PATH_Q16 || nt > 1;
                    if (!run || (path == PATH_Q16 && !quant_has_q16(type))) continue;
                    int64_t rows = nt == 1 ? max_rows : (int64_t)(2e9 / ((double)o.n * nt));
                    if (rows > max_rows) rows = max_rows;
                    if (rows < 4 * o.threads) rows = 4 * o.threads;
                    job j = {type, path, nt, w, row_bytes, x, xq, y, scratch, o.n, rows, 0, rows};
                    size_t bytes = (size_t)rows * row_bytes;
                    double mean, sd, best;
                    measure(&j, bytes, &o, &mean, &sd, &best);
                    double gmacs = mean * wpb * nt, gmacs_best = best * wpb * nt;
                    if (path == PATH_Q16 && nt == 1) q16_matvec = best;
                    /* matvecs: best as a fraction of the read peak; products: best per-token
                     * speed-up over the best q16 matvec */
                    double vs = nt == 1 ? best / peak : q16_matvec > 0 ? best * nt / q16_matvec : 0;
                    const char *pname = path == PATH_Q16 ? "q16" : "f32";
                    if (o.csv)
                        printf("%s,%s,%s,%d,%lld,%lld,%.1f,%d,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f\n",
                               ti->name, isas[k], pname, nt, (long long)rows, (long long)o.n,
                               (double)bytes / 1048576, o.threads, mean, sd, best, gmacs,
                               gmacs_best, nt == 1 ? best / peak : 0, nt == 1 ? 0 : vs);
                    else
                        printf("%-7s %-7s %-4s %5d %7lld %8.2f ± %6.2f %6.2f %8.2f %8.2f %7.2f%s\n",
                               ti->name, isas[k], pname, nt, (long long)rows, mean, sd, best, gmacs,
                               gmacs_best, nt == 1 ? 100 * vs : vs, nt == 1 ? "%" : "x");
                    fflush(stdout);
                }
            }
        }
    }
    ms_free_aligned(w);
    ms_free_aligned(x);
    ms_free_aligned(xq);
    ms_free_aligned(y);
    ms_free_aligned(scratch);
    return 0;
}
