/* bench_quant.c - times quant_matvec per weight type and kernel set (scalar, avx2, avx512) over
 * a matrix larger than the last-level cache, the shape of one decode step's weight stream.
 *
 * Not a test (tests/test_quant.c checks results) and not part of `make`. Weights are random
 * codes with sane block scales, so the timing is that of real rows, not of their values.
 *
 * Build and run from the project root:
 *   make build/libmoestream.a && gcc -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -Iinclude \
 *       -Isrc -pthread bench/bench_quant.c build/libmoestream.a -lm -o build/bench_quant
 *   ./build/bench_quant                       # all types, all ISAs, 64 MiB, 1 thread
 *   ./build/bench_quant --types Q4_K,Q8_0 --isa avx512 --threads 2 --csv
 * If other modules do not build yet, list the objects instead of the library:
 *   gcc ... bench/bench_quant.c src/quant.c src/util.c build/quant_avx2.o build/quant_avx512.o
 *
 * Output per (type, ISA): weight GB/s (10^9 bytes of the matrix per second) and GFLOP/s
 * (2 per weight), mean ± sd over --reps timed passes after --warmup untimed ones, and the
 * ratio to a plain read of a buffer of the same size (the machine's streaming-read peak).
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

typedef struct job {
    int type;
    const uint8_t *w;
    size_t row_bytes;
    const float *x;
    float *y;
    int64_t n, r0, r1;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    quant_matvec(j->type, j->w, j->row_bytes, j->x, j->y, j->n, j->r0, j->r1);
    return NULL;
}

/* One full matvec split over `threads` threads (the calling one included); returns seconds. */
static double timed_matvec(int type, const uint8_t *w, size_t row_bytes, const float *x,
                           float *y, int64_t n, int64_t rows, int threads) {
    job jobs[64];
    pthread_t tid[64];
    for (int t = 0; t < threads; t++)
        jobs[t] = (job){type, w, row_bytes, x, y, n, rows * t / threads, rows * (t + 1) / threads};
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
                    "[--threads 1] [--types Q4_K,...] [--isa avx512,...] [--csv]\n");
    exit(2);
}

int main(int argc, char **argv) {
    opts o = {.mib = 64, .n = 4096, .reps = 10, .warmup = 2, .threads = 1};
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
        else usage();
        i++;
    }
    if (o.n <= 0 || o.n % 256 || o.reps < 2 || o.threads < 1 || o.threads > 64) usage();

    quant_init();
    size_t max_bytes = (size_t)(o.mib * 1048576);
    uint8_t *w = ms_malloc_aligned(max_bytes + 4096);
    float *x = ms_malloc_aligned((size_t)o.n * sizeof(float));
    float *y = ms_malloc_aligned((max_bytes / 16 + 64) * sizeof(float));
    if (!w || !x || !y) {
        fprintf(stderr, "bench_quant: cannot allocate %.0f MiB\n", o.mib);
        return 1;
    }
    for (int64_t i = 0; i < o.n; i++) x[i] = rng_uniform();
    memset(w, 1, max_bytes);
    double peak = read_peak(w, max_bytes, o.threads, 5);

    print_cpu();
    printf("# matrix %.0f MiB, n = %lld columns, %d thread(s), %d warm-up + %d timed passes; "
           "best kernels: %s\n", o.mib, (long long)o.n, o.threads, o.warmup, o.reps, quant_isa());
    printf("# streaming read peak: %.1f GB/s\n", peak);
    if (o.csv) printf("type,isa,rows,n,mib,threads,gbps_mean,gbps_sd,gflops_mean,frac_of_peak\n");
    else printf("%-7s %-7s %7s %17s %14s %8s\n", "type", "isa", "rows", "GB/s", "GFLOP/s", "of peak");

    static const char *const isas[] = {"scalar", "avx2", "avx512"};
    for (int type = 0; type < MS_TYPE_COUNT; type++) {
        const ms_type_info *ti = quant_info(type);
        if (!ti || !ti->supported || !in_list(o.types, ti->name)) continue;
        size_t row_bytes = quant_row_bytes(type, o.n);
        int64_t rows = (int64_t)(max_bytes / row_bytes);
        size_t bytes = (size_t)rows * row_bytes;
        fill_weights(type, w, bytes);
        for (int k = 0; k < 3; k++) {
            if (!in_list(o.isas, isas[k]) || quant_force_isa(isas[k]) != 0) continue;
            for (int r = 0; r < o.warmup; r++) timed_matvec(type, w, row_bytes, x, y, o.n, rows, o.threads);
            double sum = 0, sum2 = 0;
            for (int r = 0; r < o.reps; r++) {
                double gbs = (double)bytes / timed_matvec(type, w, row_bytes, x, y, o.n, rows, o.threads) / 1e9;
                sum += gbs;
                sum2 += gbs * gbs;
            }
            double mean = sum / o.reps, sd = sqrt(fmax(0, (sum2 - sum * mean) / (o.reps - 1)));
            /* 2 flops per weight; weights per byte = block_size / block_bytes */
            double gflops = mean * 2.0 * ti->block_size / ti->block_bytes;
            if (o.csv)
                printf("%s,%s,%lld,%lld,%.1f,%d,%.3f,%.3f,%.3f,%.3f\n", ti->name, isas[k],
                       (long long)rows, (long long)o.n, (double)bytes / 1048576, o.threads, mean,
                       sd, gflops, mean / peak);
            else
                printf("%-7s %-7s %7lld %8.2f ± %6.2f %14.2f %7.0f%%\n", ti->name, isas[k],
                       (long long)rows, mean, sd, gflops, 100 * mean / peak);
            fflush(stdout);
        }
    }
    ms_free_aligned(w);
    ms_free_aligned(x);
    ms_free_aligned(y);
    return 0;
}
