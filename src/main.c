/* main.c - the moestream command line: run, info, tokenize, logits.
 * A thin front end over include/moestream.h; the only place that prints errors and exits. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "front.h"
#include "moestream.h"

/* "20G", "512M", "1.5GiB" -> bytes; 0 on success. */
static int ms_parse_size_cli(const char *s, uint64_t *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1048576.0; end++; break;
    case 'g': case 'G': mul = 1073741824.0; end++; break;
    case 't': case 'T': mul = 1099511627776.0; end++; break;
    }
    if (*end == 'i') end++;
    if (*end == 'B') end++;
    if (*end) return -1;
    *out = (uint64_t)(v * mul);
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("moestream: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void usage(FILE *out) {
    fputs("usage: moestream COMMAND [options]\n"
          "\n"
          "commands:\n"
          "  run       -m MODEL -p TEXT [-n N] [--temp T] [--seed S]   generate text\n"
          "  info      -m MODEL                                        describe a model\n"
          "  tokenize  -m MODEL [--no-special] (-f FILE | TEXT)        print token ids\n"
          "  logits    -m MODEL --ids FILE -o OUT.f32                  logits for every position\n"
          "  chat      -m MODEL [--system TEXT] [--tools bash]         interactive chat (chat --help)\n"
          "  serve     -m MODEL [--host H] [--port N] [--api-key K]    OpenAI-compatible server (serve --help)\n"
          "  bench     -m MODEL [-p 512] [-n 128] [-r 3] [--sweep-mem A,B]  prompt/generation speed (bench --help)\n"
          "  synth     --preset NAME [--layers N] [--type Q4_K] [--skew S] [--split-size SIZE] -o FILE\n"
          "                                                            write a synthetic model of real shapes\n"
          "\n"
          "options:\n"
          "  -m, --model FILE          GGUF model (first part of a split model)\n"
          "  -p, --prompt TEXT         prompt text;  -f, --file FILE: read it from a file\n"
          "  -n, --n-predict N         tokens to generate (default 256; -1: until end or context full)\n"
          "  -t, --threads N           threads (default: all cores)\n"
          "  -c, --ctx-size N          context size (default 4096)\n"
          "  -b, --batch-size N        prompt tokens per forward pass (default 512)\n"
          "  --temp T                  temperature (default 0.8; 0 = greedy)\n"
          "  --top-k N, --top-p P, --min-p P, --repeat-penalty R, --repeat-last-n N, --seed S\n"
          "  --experts-per-token K     route each token to K experts instead of the model's top-k\n"
          "  --ignore-eos              run: keep generating past end-of-generation tokens\n"
          "  --io MODE                 expert residency: mmap, pagecache or direct (default: direct with --mem, else mmap)\n"
          "  --mem SIZE                memory budget for the whole process (dense weights + context + expert cache)\n"
          "  --evict lru|lfu           expert cache policy (default lru)\n"
          "  --io-threads N            expert reads in flight (default 32)\n"
          "  --lookahead               prefetch each next layer's predicted experts while this one computes\n"
          "  --stats, --timing         print expert hit rate, bytes read, roofline; per-token time breakdown\n"
          "  --disk-bw GBPS, --mem-bw GBPS   bandwidths for the roofline (default 1.42 and 37)\n"
          "  --gpu                     run on the GPU (a build with CUDA=1): dense weights in VRAM, experts\n"
          "                            streamed into a VRAM expert cache\n"
          "  --gpu-mem SIZE            VRAM budget, e.g. 8G (default: what is free); implies --gpu\n"
          "  --gpu-device N            CUDA device index (default 0)\n"
          "  --no-special              tokenize: treat <|...|> control tokens as plain text\n"
          "  --ids FILE, -o FILE       logits: input token ids and output file\n",
          out);
}

typedef struct opts {
    const char *model, *prompt, *file, *ids, *out, *text, *preset, *type_name;
    float skew;
    uint64_t split_bytes, seed_synth;
    int layers;
    int n_predict, threads, n_ctx, n_batch, experts, no_special, ignore_eos;
    const char *io, *evict;
    uint64_t mem;
    int io_threads, stats, timing, lookahead;
    double disk_bw, mem_bw;
    int gpu, gpu_device;
    uint64_t gpu_mem;
    ms_sampler_params sp;
} opts;

static long parse_int(const char *flag, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) die("%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, v);
    return x;
}

static float parse_float(const char *flag, const char *v) {
    char *end;
    float x = strtof(v, &end);
    if (end == v || *end) die("%s expects a number, got '%s'", flag, v);
    return x;
}

static void parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    o->n_predict = 256;
    o->disk_bw = 1.42e9; /* this machine's measured random-read peak (DESIGN.md); --disk-bw to change */
    o->mem_bw = 37e9;    /* two-core streaming read, measured by bench/bench_quant */
    o->n_batch = 512;
    ms_sampler_params_default(&o->sp);
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
#define ARG() (i + 1 < argc ? argv[++i] : (die("%s needs a value", a), ""))
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = ARG();
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = ARG();
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) o->file = ARG();
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) o->n_predict = (int)parse_int(a, ARG(), -1, INT_MAX);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) o->threads = (int)parse_int(a, ARG(), 1, 1024);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) o->n_ctx = (int)parse_int(a, ARG(), 1, 1 << 24);
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) o->n_batch = (int)parse_int(a, ARG(), 1, 1 << 16);
        else if (!strcmp(a, "--temp")) o->sp.temperature = parse_float(a, ARG());
        else if (!strcmp(a, "--top-k")) o->sp.top_k = (int)parse_int(a, ARG(), 0, INT_MAX);
        else if (!strcmp(a, "--top-p")) o->sp.top_p = parse_float(a, ARG());
        else if (!strcmp(a, "--min-p")) o->sp.min_p = parse_float(a, ARG());
        else if (!strcmp(a, "--repeat-penalty")) o->sp.repeat_penalty = parse_float(a, ARG());
        else if (!strcmp(a, "--repeat-last-n")) o->sp.repeat_last_n = (int)parse_int(a, ARG(), 0, 1 << 20);
        else if (!strcmp(a, "--seed") || !strcmp(a, "-s")) {
            const char *v = ARG();
            long long s = strtoll(v, NULL, 10);
            o->sp.seed = s < 0 ? MS_SEED_RANDOM : (uint64_t)s;
        } else if (!strcmp(a, "--experts-per-token")) o->experts = (int)parse_int(a, ARG(), 1, 1 << 16);
        else if (!strcmp(a, "--no-special")) o->no_special = 1;
        else if (!strcmp(a, "--ignore-eos")) o->ignore_eos = 1;
        else if (!strcmp(a, "--gpu")) o->gpu = 1;
        else if (!strcmp(a, "--gpu-device")) o->gpu_device = (int)parse_int(a, ARG(), 0, 1024);
        else if (!strcmp(a, "--gpu-mem")) {
            const char *v = ARG();
            if (ms_parse_size_cli(v, &o->gpu_mem) || !o->gpu_mem) die("--gpu-mem expects a size like 8G, got '%s'", v);
            o->gpu = 1;
        }
        else if (!strcmp(a, "--io")) o->io = ARG();
        else if (!strcmp(a, "--evict")) o->evict = ARG();
        else if (!strcmp(a, "--io-threads")) o->io_threads = (int)parse_int(a, ARG(), 1, 1024);
        else if (!strcmp(a, "--stats")) o->stats = 1;
        else if (!strcmp(a, "--lookahead")) o->lookahead = 1;
        else if (!strcmp(a, "--timing")) o->timing = 1;
        else if (!strcmp(a, "--disk-bw")) o->disk_bw = parse_float(a, ARG()) * 1e9;
        else if (!strcmp(a, "--mem-bw")) o->mem_bw = parse_float(a, ARG()) * 1e9;
        else if (!strcmp(a, "--mem")) {
            const char *v = ARG();
            if (ms_parse_size_cli(v, &o->mem) || !o->mem) die("--mem expects a size like 8G, got '%s'", v);
        }
        else if (!strcmp(a, "--preset")) o->preset = ARG();
        else if (!strcmp(a, "--layers")) o->layers = (int)parse_int(a, ARG(), 1, 4096);
        else if (!strcmp(a, "--type")) o->type_name = ARG();
        else if (!strcmp(a, "--skew")) o->skew = parse_float(a, ARG());
        else if (!strcmp(a, "--split-size")) {
            const char *v = ARG();
            if (ms_parse_size_cli(v, &o->split_bytes)) die("--split-size expects a size like 20G, got '%s'", v);
        }
        else if (!strcmp(a, "--ids")) o->ids = ARG();
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) o->out = ARG();
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        else if (a[0] == '-' && a[1]) die("unknown option '%s' (see moestream --help)", a);
        else if (!o->text) o->text = a;
        else die("unexpected argument '%s'", a);
#undef ARG
    }
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n + 4096 > cap) buf = realloc(buf, cap *= 2);
        if (!buf) die("out of memory reading %s", path);
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) die("%s: read error", path);
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static ms_model *load_model(const opts *o) {
    if (!o->model) die("no model given (use -m FILE)");
    ms_model_params mp;
    ms_model_params_default(&mp);
    mp.n_expert_used = o->experts;
    mp.io = o->io;
    mp.mem_budget = o->mem;
    mp.evict = o->evict;
    mp.io_threads = o->io_threads;
    mp.track_residency = o->stats;
    ms_model *m;
    ms_error err;
    if (ms_model_load(o->model, &mp, &m, &err)) die("%s", err.msg);
    if (o->experts) {
        ms_model_info info;
        ms_model_get_info(m, &info);
        if (info.n_expert_used != info.n_expert_used_model)
            fprintf(stderr, "moestream: note: routing each token to %d experts instead of the model's %d changes the output\n",
                    info.n_expert_used, info.n_expert_used_model);
    }
    return m;
}

static ms_context *new_context(ms_model *m, const opts *o, int min_ctx) {
    ms_context_params cp;
    ms_context_params_default(&cp);
    if (o->n_ctx) cp.n_ctx = o->n_ctx;
    else if (min_ctx > cp.n_ctx) cp.n_ctx = min_ctx;
    cp.n_batch = o->n_batch;
    cp.n_threads = o->threads;
    cp.lookahead = o->lookahead;
    cp.gpu = o->gpu;
    cp.gpu_mem = o->gpu_mem;
    cp.gpu_device = o->gpu_device;
    ms_context *c;
    ms_error err;
    if (ms_context_new(m, &cp, &c, &err)) die("%s", err.msg);
    return c;
}

static void human_bytes(uint64_t b, char *out, size_t n) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4) v /= 1024, i++;
    snprintf(out, n, "%.2f %s", v, u[i]);
}

static int cmd_info(const opts *o) {
    ms_model *m = load_model(o);
    ms_model_info in;
    ms_model_get_info(m, &in);
    char b1[32], b2[32], b3[32], b4[32];
    printf("architecture      %s%s%s\n", in.arch, in.name[0] ? "  name: " : "", in.name);
    printf("files             %d part%s, %lld tensors\n", in.n_parts, in.n_parts == 1 ? "" : "s", (long long)in.n_tensors);
    printf("layers            %d (%d full attention, %d Gated DeltaNet)\n", in.n_layer, in.n_layer_attn, in.n_layer_linear);
    printf("n_embd            %d\n", in.n_embd);
    printf("n_vocab           %d\n", in.n_vocab);
    printf("context (train)   %d\n", in.n_ctx_train);
    printf("attention         %d heads, %d kv heads, head_dim %d, rope dims %d, rope base %g\n", in.n_head,
           in.n_head_kv, in.head_dim, in.n_rot, in.rope_base);
    if (in.n_layer_linear)
        printf("gated deltanet    %d key heads, %d value heads, state %d, conv %d\n", in.n_k_heads, in.n_v_heads,
               in.d_state, in.d_conv);
    printf("experts           %d routed, %d used per token", in.n_expert, in.n_expert_used);
    if (in.n_expert_used != in.n_expert_used_model) printf(" (model: %d)", in.n_expert_used_model);
    printf(", n_ff_exp %d", in.n_ff_exp);
    if (in.n_ff_shexp) printf(", shared expert n_ff %d", in.n_ff_shexp);
    printf("\nrms norm eps      %g\n", in.norm_eps);
    human_bytes(in.bytes_total, b1, sizeof b1);
    human_bytes(in.bytes_dense, b2, sizeof b2);
    human_bytes(in.bytes_experts, b3, sizeof b3);
    human_bytes(in.bytes_per_expert, b4, sizeof b4);
    printf("weights           %s total: %s dense (resident), %s routed experts\n", b1, b2, b3);
    printf("per expert        %s (gate + up + down of one expert in one layer)\n", b4);
    printf("per token         %s of routed experts at top-%d\n", (human_bytes(in.bytes_per_expert * (uint64_t)in.n_expert_used * in.n_layer, b4, sizeof b4), b4), in.n_expert_used);
    printf("tensor types:\n");
    for (int t = 0; t < MS_N_TYPES; t++) {
        if (!in.type_count[t]) continue;
        human_bytes(in.type_bytes[t], b1, sizeof b1);
        printf("  %-8s %5lld tensors  %12s  %5.1f%%\n", ms_type_name(t), (long long)in.type_count[t], b1,
               100.0 * in.type_bytes[t] / (double)(in.bytes_total ? in.bytes_total : 1));
    }
    ms_model_free(m);
    return 0;
}

static int cmd_tokenize(const opts *o) {
    ms_model *m = load_model(o);
    size_t len;
    char *text;
    if (o->file) text = read_file(o->file, &len);
    else if (o->text || o->prompt) {
        text = strdup(o->text ? o->text : o->prompt);
        len = strlen(text);
    } else die("tokenize needs TEXT or -f FILE");
    int32_t *ids;
    int n;
    ms_error err;
    if (ms_tokenize(m, text, len, !o->no_special, &ids, &n, &err)) die("%s", err.msg);
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    ms_free_ids(ids);
    free(text);
    ms_model_free(m);
    return 0;
}

static int cmd_logits(const opts *o) {
    if (!o->ids || !o->out) die("logits needs --ids FILE and -o OUT.f32");
    ms_model *m = load_model(o);
    size_t len;
    char *txt = read_file(o->ids, &len);
    int n = 0, cap = 256;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    for (char *p = txt;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            int w = 0;
            while (w < 20 && p[w] && p[w] != ' ' && p[w] != '\n' && p[w] != '\t' && p[w] != '\r') w++;
            die("%s: not a token id: '%.*s'", o->ids, w, p);
        }
        if (n == cap) ids = realloc(ids, sizeof(int32_t) * (cap *= 2));
        ids[n++] = (int32_t)v;
        p = end;
    }
    free(txt);
    if (!n) die("%s: no token ids", o->ids);
    ms_context *c = new_context(m, o, n);
    FILE *out = fopen(o->out, "wb");
    if (!out) die("%s: cannot create: %s", o->out, strerror(errno));
    int nv = ms_n_vocab(m);
    ms_error err;
    for (int done = 0; done < n;) {
        int b = n - done < o->n_batch ? n - done : o->n_batch;
        if (ms_eval(c, ids + done, b, 1, &err)) die("%s", err.msg);
        for (int i = 0; i < b; i++)
            if (fwrite(ms_logits(c, i), sizeof(float), (size_t)nv, out) != (size_t)nv) die("%s: write error", o->out);
        done += b;
    }
    if (fclose(out)) die("%s: write error", o->out);
    fprintf(stderr, "moestream: wrote %d x %d logits to %s\n", n, nv, o->out);
    free(ids);
    ms_context_free(c);
    ms_model_free(m);
    return 0;
}

static int cmd_synth(const opts *o) {
    if (!o->preset) die("synth needs --preset NAME (presets: %s)", ms_synth_presets());
    if (!o->out) die("synth needs -o FILE");
    ms_synth_params sp = {0};
    sp.preset = o->preset;
    sp.n_layer = o->layers;
    sp.type = ms_type_from_name(o->type_name ? o->type_name : "Q4_K");
    if (sp.type < 0) die("unknown tensor type '%s'", o->type_name);
    sp.skew = o->skew;
    sp.split_bytes = o->split_bytes;
    sp.seed = o->sp.seed == MS_SEED_RANDOM ? 1 : o->sp.seed;
    uint64_t bytes = ms_synth_size(&sp);
    double t0 = now();
    ms_error err;
    fprintf(stderr, "moestream: writing %s (%.2f GB of tensors)...\n", o->out, bytes / 1e9);
    if (ms_synth(&sp, o->out, &bytes, &err)) die("%s", err.msg);
    double dt = now() - t0;
    fprintf(stderr, "moestream: wrote %.2f GB in %.1f s (%.2f GB/s)\n", bytes / 1e9, dt, bytes / 1e9 / dt);
    return 0;
}

/* Peak resident set of this process, bytes. */
static uint64_t peak_rss(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)ru.ru_maxrss * 1024;
}

/* --stats and --timing for the tokens decoded between snapshots a and b. */
static void print_stats(const ms_model *m, const opts *o, const ms_stats *a, const ms_stats *b, int tokens, double secs) {
    if (tokens <= 0) return;
    double tk = tokens;
    if (o->timing) {
        double at = b->t_attn - a->t_attn, rt = b->t_route - a->t_route, wt = b->t_expert_wait - a->t_expert_wait;
        double ct = b->t_expert_compute - a->t_expert_compute, ot = b->t_other - a->t_other;
        fprintf(stderr, "moestream: per token: attention+norms %.2f ms, routing %.2f ms, expert wait %.2f ms, expert compute %.2f ms, "
                        "output %.2f ms (wall %.2f ms)\n",
                1e3 * at / tk, 1e3 * rt / tk, 1e3 * wt / tk, 1e3 * ct / tk, 1e3 * ot / tk, 1e3 * secs / tk);
    }
    if (!o->stats) return;
    ms_roofline r;
    ms_roofline_of(m, a, b, tk, o->disk_bw, o->mem_bw, &r);
    fprintf(stderr, "moestream: experts (%s): %.1f needed per token, hit rate %.1f%%, read %.2f MB per token", b->io,
            r.experts_needed, 100.0 * r.hit_rate, r.read_bytes / 1e6);
    if (r.read_bytes > 0) fprintf(stderr, ", %.2f GB/s achieved", r.read_bytes * tk / secs / 1e9);
    if (b->cache_slots) fprintf(stderr, ", cache %llu experts (%.2f GiB)", (unsigned long long)b->cache_slots, b->cache_bytes / 1073741824.0);
    if (b->prefetches > a->prefetches)
        fprintf(stderr, ", prefetch accuracy %.1f%%",
                100.0 * (double)(b->prefetch_used - a->prefetch_used) / (double)(b->prefetches - a->prefetches));
    fprintf(stderr, "\n");
    fprintf(stderr, "moestream: roofline: %.1f MB missed / %.2f GB/s disk + %.1f MB resident / %.0f GB/s memory = %.2f ms/token "
                    "-> at most %.2f tok/s (achieved %.2f, %.0f%%)\n",
            r.missed_bytes / 1e6, o->disk_bw / 1e9, r.resident_bytes / 1e6, o->mem_bw / 1e9, 1e3 * r.seconds,
            1.0 / r.seconds, tk / secs, 100.0 * (tk / secs) * r.seconds);
    fprintf(stderr, "moestream: memory: peak RSS %.2f GiB", peak_rss() / 1073741824.0);
    if (o->mem) fprintf(stderr, " (budget %.2f GiB)", o->mem / 1073741824.0);
    fprintf(stderr, ", dense %.2f GiB, context %.2f GiB\n", b->bytes_dense / 1073741824.0, b->bytes_context / 1073741824.0);
}

static int cmd_run(const opts *o) {
    double t0 = now();
    ms_model *m = load_model(o);
    size_t len;
    char *text;
    if (o->file) text = read_file(o->file, &len);
    else if (o->prompt || o->text) {
        text = strdup(o->prompt ? o->prompt : o->text);
        len = strlen(text);
    } else die("run needs a prompt (-p TEXT or -f FILE)");
    int32_t *ids;
    int n;
    ms_error err;
    if (ms_tokenize(m, text, len, 1, &ids, &n, &err)) die("%s", err.msg);
    free(text);
    if (n == 0) die("the prompt is empty");
    ms_context *c = new_context(m, o, 0);
    if (n >= ms_context_n_ctx(c))
        die("the prompt has %d tokens but the context holds %d (raise -c)", n, ms_context_n_ctx(c));
    ms_sampler *s = ms_sampler_new(m, &o->sp);
    if (!s) die("out of memory");
    double t_load = now() - t0;
    for (int i = 0; i < n; i++) ms_sampler_accept(s, ids[i]);
    double t1 = now();
    if (ms_eval(c, ids, n, 0, &err)) die("%s", err.msg);
    double t_prompt = now() - t1;
    ms_stats st0;
    ms_context_stats(c, &st0);
    ms_detok *d = ms_detok_new(m, 0);
    if (!d) die("out of memory");
    int gen = 0, n_eval = 0;
    double t2 = now();
    int limit = o->n_predict < 0 ? INT_MAX : o->n_predict;
    while (gen < limit && ms_context_pos(c) < ms_context_n_ctx(c)) {
        int32_t tok = ms_sample(s, ms_logits(c, -1));
        ms_sampler_accept(s, tok);
        gen++;
        if (!o->ignore_eos && ms_token_is_eog(m, tok)) break;
        size_t k;
        const char *piece = ms_detok_push(d, tok, &k);
        fwrite(piece, 1, k, stdout);
        fflush(stdout);
        if (gen == limit) break;
        if (ms_eval(c, &tok, 1, 0, &err)) die("%s", err.msg);
        n_eval++;
    }
    size_t k;
    const char *rest = ms_detok_flush(d, &k);
    fwrite(rest, 1, k, stdout);
    printf("\n");
    ms_detok_free(d);
    double t_gen = now() - t2;
    fprintf(stderr, "\nmoestream: load %.2f s | prompt %d tokens, %.2f tok/s | generation %d tokens, %.2f tok/s\n", t_load,
            n, n / t_prompt, gen, n_eval ? n_eval / t_gen : 0.0);
    if (o->stats || o->timing) {
        ms_stats st1;
        ms_context_stats(c, &st1);
        print_stats(m, o, &st0, &st1, n_eval, t_gen);
    }
    free(ids);
    ms_sampler_free(s);
    ms_context_free(c);
    ms_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2;
    }
    ms_install_sigbus_handler();
    if (!strcmp(argv[1], "chat")) return cmd_chat(argc, argv);
    if (!strcmp(argv[1], "serve")) return cmd_serve(argc, argv);
    if (!strcmp(argv[1], "bench")) return cmd_bench(argc, argv);
    opts o;
    parse_opts(argc, argv, &o);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "run")) return cmd_run(&o);
    if (!strcmp(cmd, "info")) return cmd_info(&o);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(&o);
    if (!strcmp(cmd, "logits")) return cmd_logits(&o);
    if (!strcmp(cmd, "synth")) return cmd_synth(&o);
    die("unknown command '%s' (commands: run, info, tokenize, logits, chat, serve)", cmd);
    return 1;
}
