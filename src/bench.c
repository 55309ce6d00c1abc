/* bench.c - `moestream bench`: llama-bench-style prompt (pp) and generation (tg) tests over
 * random token ids, with repetitions, mean +- sd, the expert store's hit rate and read rate,
 * and the roofline bound beside every number; markdown, JSON or CSV; --sweep-mem runs the
 * generation test at several memory budgets and draws tok/s and hit rate against budget (SVG).
 *
 * A front end: uses include/moestream.h only (plus front.h's option helpers).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "front.h"
#include "moestream.h"

typedef struct bench_opts {
    front_opts f;
    int n_prompt, n_gen, reps, warmup, cold;
    const char *format, *svg;
    uint64_t sweep[32];
    int n_sweep;
    double disk_bw, mem_bw;
} bench_opts;

typedef struct result {
    const char *test;     /* "pp" or "tg" */
    int n;
    uint64_t mem;
    double mean, sd;      /* tok/s */
    double hit_rate, read_gbs, read_mb_tok, roof_tps;
    uint64_t peak_rss;
    const char *io;       /* the residency the run had (the default is chosen at load) */
} result;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t peak_rss(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)ru.ru_maxrss * 1024;
}

static void usage(void) {
    puts("usage: moestream bench -m MODEL [options]\n"
         "  -p N              prompt test of N random tokens in batches (default 512; 0: skip)\n"
         "  -n N              generation test of N tokens one at a time (default 128; 0: skip)\n"
         "  -r N              repetitions (default 3); a warm-up run precedes them unless --no-warmup\n"
         "  -t N              threads (default: all cores)\n"
         "  --io MODE, --mem SIZE, --evict lru|lfu, --[no-]lookahead   expert residency, budget, policy, prefetch\n"
         "  --cold            drop the OS page cache and reload the model before every repetition (root)\n"
         "  --sweep-mem A,B,C run the generation test at each budget; --svg FILE draws the sweep\n"
         "  -o md|json|csv    output format (default md)\n"
         "  --disk-bw GBPS, --mem-bw GBPS   bandwidths for the roofline (default 1.42 and 37)");
}

static void drop_caches(void) {
    sync();
    FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
    if (!f || fputs("3\n", f) < 0 || fclose(f) != 0)
        front_die("--cold needs to drop the page cache (write /proc/sys/vm/drop_caches): %s", strerror(errno));
}

static ms_model *load(const bench_opts *o, uint64_t mem) {
    front_opts fo = o->f;
    fo.mem = mem;
    return front_load_model(&fo);
}

static uint64_t rng_next(uint64_t *s) {
    *s += 0x9e3779b97f4a7c15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One test (pp or tg of n tokens) with o->reps repetitions at budget mem. */
static result run_test(const bench_opts *o, const char *test, int n, uint64_t mem) {
    result r = {.test = test, .n = n, .mem = mem};
    double *tps = calloc((size_t)o->reps, sizeof(double));
    ms_model *m = NULL;
    ms_context *c = NULL;
    ms_stats a, b, first = {0}, last = {0};
    double total_t = 0;
    int total_tok = 0;
    uint64_t seed = 1234;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    ms_error err;
    for (int rep = -1; rep < o->reps; rep++) {
        if (rep < 0 && (!o->warmup || o->cold)) continue;
        if (!m || o->cold) {
            ms_context_free(c);
            ms_model_free(m);
            if (o->cold) drop_caches();
            m = load(o, mem);
            front_opts fo = o->f;
            fo.n_ctx = (strcmp(test, "pp") ? n : n) + 8;
            c = front_new_context(m, &fo);
        }
        ms_context_reset(c);
        int nv = ms_n_vocab(m);
        for (int i = 0; i < n; i++) ids[i] = (int32_t)(rng_next(&seed) % (uint64_t)nv);
        int count = n; /* the warm-up is a whole run, so "warm" means after one run, as for llama.cpp */
        ms_context_stats(c, &a);
        double t0 = now();
        if (!strcmp(test, "pp")) {
            if (ms_eval(c, ids, count, 0, &err)) front_die("%s", err.msg);
        } else {
            for (int i = 0; i < count; i++)
                if (ms_eval(c, ids + i, 1, 0, &err)) front_die("%s", err.msg);
        }
        double dt = now() - t0;
        ms_context_stats(c, &b);
        if (rep < 0) continue;
        tps[rep] = count / dt;
        if (rep == 0) first = a;
        last = b;
        total_t += dt;
        total_tok += count;
    }
    double sum = 0, sq = 0;
    for (int i = 0; i < o->reps; i++) sum += tps[i];
    r.mean = sum / o->reps;
    for (int i = 0; i < o->reps; i++) sq += (tps[i] - r.mean) * (tps[i] - r.mean);
    r.sd = o->reps > 1 ? sqrt(sq / (o->reps - 1)) : 0;
    /* with mmap the OS keeps no count of hits: no hit rate, no roofline */
    r.io = last.io ? last.io : "mmap";
    int known = strcmp(r.io, "mmap") != 0;
    if (!o->cold) {
        /* stats over the timed repetitions (cold runs reload the model, so take the last one) */
        ms_roofline rf;
        ms_roofline_of(m, &first, &last, total_tok, o->disk_bw, o->mem_bw, &rf);
        r.hit_rate = rf.hit_rate;
        r.read_mb_tok = rf.read_bytes / 1e6;
        r.read_gbs = rf.read_bytes * total_tok / total_t / 1e9;
        r.roof_tps = !strcmp(test, "tg") && rf.seconds > 0 && known ? 1.0 / rf.seconds : 0;
    } else {
        ms_roofline rf;
        ms_roofline_of(m, &a, &b, n, o->disk_bw, o->mem_bw, &rf);
        r.hit_rate = rf.hit_rate;
        r.read_mb_tok = rf.read_bytes / 1e6;
        r.read_gbs = rf.read_bytes * n / (n / tps[o->reps - 1]) / 1e9;
        r.roof_tps = !strcmp(test, "tg") && rf.seconds > 0 && known ? 1.0 / rf.seconds : 0;
    }
    if (!known) r.hit_rate = -1;
    r.peak_rss = peak_rss();
    free(ids);
    free(tps);
    ms_context_free(c);
    ms_model_free(m);
    return r;
}

static void human(uint64_t b, char *out, size_t n) {
    if (!b) snprintf(out, n, "-");
    else snprintf(out, n, "%.1fG", b / 1073741824.0);
}

static void print_results(const bench_opts *o, const ms_model_info *in, const result *rs, int n) {
    char model[96];
    snprintf(model, sizeof model, "%s %.1fGB", in->arch, in->bytes_total / 1e9);
    const char *io = rs[0].io;
    if (!strcmp(o->format, "json")) {
        printf("[\n");
        for (int i = 0; i < n; i++) {
            const result *r = &rs[i];
            printf("  {\"model\": \"%s\", \"model_bytes\": %llu, \"io\": \"%s\", \"mem\": %llu, \"threads\": %d, \"cold\": %s, "
                   "\"test\": \"%s%d\", \"tok_s\": %.3f, \"tok_s_sd\": %.3f, \"hit_rate\": %.4f, \"read_gb_s\": %.3f, "
                   "\"read_mb_per_token\": %.3f, \"roofline_tok_s\": %.3f, \"peak_rss\": %llu, \"experts_per_token\": %d}%s\n",
                   model, (unsigned long long)in->bytes_total, io, (unsigned long long)r->mem, o->f.threads,
                   o->cold ? "true" : "false", r->test, r->n, r->mean, r->sd, r->hit_rate, r->read_gbs, r->read_mb_tok,
                   r->roof_tps, (unsigned long long)r->peak_rss, in->n_expert_used, i + 1 < n ? "," : "");
        }
        printf("]\n");
        return;
    }
    if (!strcmp(o->format, "csv")) {
        printf("model,io,mem,threads,cold,test,tok_s,tok_s_sd,hit_rate,read_gb_s,read_mb_per_token,roofline_tok_s,peak_rss\n");
        for (int i = 0; i < n; i++) {
            const result *r = &rs[i];
            printf("%s,%s,%llu,%d,%d,%s%d,%.3f,%.3f,%.4f,%.3f,%.3f,%.3f,%llu\n", model, io, (unsigned long long)r->mem,
                   o->f.threads, o->cold, r->test, r->n, r->mean, r->sd, r->hit_rate, r->read_gbs, r->read_mb_tok,
                   r->roof_tps, (unsigned long long)r->peak_rss);
        }
        return;
    }
    printf("| model | io | mem | threads | k | run | test | t/s | hit %% | read GB/s | roofline t/s | %% of roof | peak RSS |\n");
    printf("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < n; i++) {
        const result *r = &rs[i];
        char mem[32], rss[32], roof[32], pct[32];
        human(r->mem, mem, sizeof mem);
        human(r->peak_rss, rss, sizeof rss);
        snprintf(roof, sizeof roof, r->roof_tps > 0 ? "%.2f" : "-", r->roof_tps);
        snprintf(pct, sizeof pct, r->roof_tps > 0 ? "%.0f%%" : "-", 100.0 * r->mean / r->roof_tps);
        char hit[32];
        snprintf(hit, sizeof hit, r->hit_rate >= 0 ? "%.1f" : "-", 100.0 * r->hit_rate);
        printf("| %s | %s | %s | %d | %d | %s | %s%d | %.2f ± %.2f | %s | %.2f | %s | %s | %s |\n", model, io, mem,
               o->f.threads, in->n_expert_used, o->cold ? "cold" : "warm", r->test, r->n, r->mean, r->sd, hit,
               r->read_gbs, roof, pct, rss);
    }
}

/* tok/s and hit rate against budget, two y axes. */
static void write_svg(const char *path, const result *rs, int n, const char *title) {
    FILE *f = fopen(path, "w");
    if (!f) front_die("%s: cannot create: %s", path, strerror(errno));
    const double W = 720, H = 420, L = 70, R = 70, T = 50, B = 60;
    double xmax = 0, ymax = 0;
    for (int i = 0; i < n; i++) {
        xmax = fmax(xmax, rs[i].mem / 1073741824.0);
        ymax = fmax(ymax, rs[i].mean);
    }
    xmax *= 1.05;
    ymax = ymax > 0 ? ymax * 1.15 : 1;
#define X(v) (L + (v) / xmax * (W - L - R))
#define Y(v, mx) (H - B - (v) / (mx) * (H - T - B))
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' font-family='sans-serif' font-size='12'>\n", W, H);
    fprintf(f, "<rect width='100%%' height='100%%' fill='white'/>\n<text x='%.0f' y='25' font-size='15'>%s</text>\n", L, title);
    fprintf(f, "<line x1='%.0f' y1='%.0f' x2='%.0f' y2='%.0f' stroke='black'/>\n", L, H - B, W - R, H - B);
    fprintf(f, "<line x1='%.0f' y1='%.0f' x2='%.0f' y2='%.0f' stroke='black'/>\n", L, T, L, H - B);
    fprintf(f, "<line x1='%.0f' y1='%.0f' x2='%.0f' y2='%.0f' stroke='black'/>\n", W - R, T, W - R, H - B);
    for (int i = 0; i <= 5; i++) {
        double xv = xmax * i / 5, yv = ymax * i / 5;
        fprintf(f, "<text x='%.1f' y='%.0f' text-anchor='middle'>%.1f</text>\n", X(xv), H - B + 18, xv);
        fprintf(f, "<text x='%.0f' y='%.1f' text-anchor='end' fill='#1f5fbf'>%.2f</text>\n", L - 6, Y(yv, ymax) + 4, yv);
        fprintf(f, "<text x='%.0f' y='%.1f' fill='#c0392b'>%d%%</text>\n", W - R + 6, Y(20.0 * i, 100.0) + 4, 20 * i);
    }
    fprintf(f, "<text x='%.0f' y='%.0f' text-anchor='middle'>memory budget (GiB)</text>\n", (L + W - R) / 2, H - 20);
    fprintf(f, "<text x='18' y='%.0f' fill='#1f5fbf' transform='rotate(-90 18 %.0f)' text-anchor='middle'>tokens/s</text>\n",
            (T + H - B) / 2, (T + H - B) / 2);
    fprintf(f, "<text x='%.0f' y='%.0f' fill='#c0392b' transform='rotate(90 %.0f %.0f)' text-anchor='middle'>expert hit rate</text>\n",
            W - 18, (T + H - B) / 2, W - 18, (T + H - B) / 2);
    for (int s = 0; s < 2; s++) {
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2' points='", s ? "#c0392b" : "#1f5fbf");
        for (int i = 0; i < n; i++)
            fprintf(f, "%.1f,%.1f ", X(rs[i].mem / 1073741824.0), s ? Y(100 * rs[i].hit_rate, 100.0) : Y(rs[i].mean, ymax));
        fprintf(f, "'/>\n");
        for (int i = 0; i < n; i++)
            fprintf(f, "<circle cx='%.1f' cy='%.1f' r='3' fill='%s'/>\n", X(rs[i].mem / 1073741824.0),
                    s ? Y(100 * rs[i].hit_rate, 100.0) : Y(rs[i].mean, ymax), s ? "#c0392b" : "#1f5fbf");
    }
    fprintf(f, "</svg>\n");
#undef X
#undef Y
    if (fclose(f)) front_die("%s: write error", path);
}

int cmd_bench(int argc, char **argv) {
    bench_opts o;
    memset(&o, 0, sizeof o);
    front_opts_default(&o.f);
    o.n_prompt = 512;
    o.n_gen = 128;
    o.reps = 3;
    o.warmup = 1;
    o.format = "md";
    o.disk_bw = 1.42e9;
    o.mem_bw = 37e9;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (front_parse_common(argc, argv, &i, &o.f)) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        else if (!strcmp(a, "-p")) o.n_prompt = (int)front_int(a, front_arg(argc, argv, &i), 0, 1 << 20);
        else if (!strcmp(a, "-n")) o.n_gen = (int)front_int(a, front_arg(argc, argv, &i), 0, 1 << 20);
        else if (!strcmp(a, "-r")) o.reps = (int)front_int(a, front_arg(argc, argv, &i), 1, 1000);
        else if (!strcmp(a, "--no-warmup")) o.warmup = 0;
        else if (!strcmp(a, "--cold")) o.cold = 1;
        else if (!strcmp(a, "-o")) o.format = front_arg(argc, argv, &i);
        else if (!strcmp(a, "--svg")) o.svg = front_arg(argc, argv, &i);
        else if (!strcmp(a, "--disk-bw")) o.disk_bw = front_float(a, front_arg(argc, argv, &i)) * 1e9;
        else if (!strcmp(a, "--mem-bw")) o.mem_bw = front_float(a, front_arg(argc, argv, &i)) * 1e9;
        else if (!strcmp(a, "--sweep-mem")) {
            char *list = strdup(front_arg(argc, argv, &i));
            for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
                if (o.n_sweep == 32) front_die("--sweep-mem takes at most 32 budgets");
                o.sweep[o.n_sweep++] = front_size("--sweep-mem", tok);
            }
            free(list);
        } else front_die("unknown option '%s' (see moestream bench --help)", a);
    }
    if (!o.f.model) front_die("no model given (use -m FILE)");
    if (strcmp(o.format, "md") && strcmp(o.format, "json") && strcmp(o.format, "csv"))
        front_die("-o takes md, json or csv, not '%s'", o.format);
    if (o.svg && !o.n_sweep) front_die("--svg draws a --sweep-mem");
    if (!o.f.threads) o.f.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    ms_model *m = load(&o, o.n_sweep ? o.sweep[0] : o.f.mem);
    ms_model_info in;
    ms_model_get_info(m, &in);
    static char arch[64];
    snprintf(arch, sizeof arch, "%s", in.arch);
    in.arch = arch; /* the info points into the model, which goes now */
    in.name = "";
    ms_model_free(m);
    char budget[32];
    if (o.n_sweep) snprintf(budget, sizeof budget, "swept");
    else if (o.f.mem) snprintf(budget, sizeof budget, "%.2f GiB", o.f.mem / 1073741824.0);
    else snprintf(budget, sizeof budget, "none");
    fprintf(stderr, "moestream bench: %s, %d threads, io %s, budget %s, %s, %d repetitions%s\n", o.f.model, o.f.threads,
            o.f.io ? o.f.io : (o.f.mem || o.n_sweep) ? "direct" : "ram if it fits, else mmap", budget, o.cold ? "cold" : "warm", o.reps,
            o.warmup && !o.cold ? " after a warm-up" : "");
    result rs[64];
    int n = 0;
    if (o.n_sweep) {
        for (int i = 0; i < o.n_sweep && o.n_gen; i++) {
            rs[n++] = run_test(&o, "tg", o.n_gen, o.sweep[i]);
            fprintf(stderr, "  budget %.1f GiB: %.2f tok/s, hit rate %.1f%%\n", o.sweep[i] / 1073741824.0, rs[n - 1].mean,
                    100 * rs[n - 1].hit_rate);
        }
    } else {
        if (o.n_prompt) rs[n++] = run_test(&o, "pp", o.n_prompt, o.f.mem);
        if (o.n_gen) rs[n++] = run_test(&o, "tg", o.n_gen, o.f.mem);
    }
    print_results(&o, &in, rs, n);
    if (o.svg) {
        char title[256];
        snprintf(title, sizeof title, "%s: tg%d at 2 threads, %s", in.arch, o.n_gen, o.cold ? "cold" : "warm");
        write_svg(o.svg, rs, n, title);
        fprintf(stderr, "moestream bench: wrote %s\n", o.svg);
    }
    return 0;
}
