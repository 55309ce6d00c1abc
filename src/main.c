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

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
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
          "  --io MODE                 expert residency: mmap, pagecache, direct or ram (default: direct with --mem;\n"
          "                            else ram, the model read into huge pages at load, when it fits in memory; else mmap)\n"
          "  --mem SIZE                memory budget for the whole process (dense weights + context + expert cache)\n"
          "  --evict lru|lfu           expert cache policy (default lfu)\n"
          "  --io-threads N            expert reads in flight (default 32)\n"
          "  --lookahead, --no-lookahead  prefetch each next layer's predicted experts while this one\n"
          "                            computes (default: on with --io pagecache or direct)\n"
          "  --stats, --timing         print expert hit rate, bytes read, roofline; per-token time breakdown\n"
          "  --disk-bw GBPS, --mem-bw GBPS   bandwidths for the roofline (default 1.42 and 37)\n"
          "  --gpu                     run on the GPU (a build with CUDA=1): dense weights in VRAM, experts\n"
          "                            streamed into a VRAM expert cache\n"
          "  --gpu-mem SIZE            VRAM budget, e.g. 8G (default: what is free); implies --gpu\n"
          "  --gpu-device N            CUDA device index (default 0)\n"
          "  --cpu-share X|auto        GPU decode: the share of the experts not in VRAM that the CPU computes\n"
          "                            from host memory instead of copying them over (default auto: tuned\n"
          "                            while decoding; 0 copies every one)\n"
          "  --no-special              tokenize: treat <|...|> control tokens as plain text\n"
          "  --ids FILE, -o FILE       logits: input token ids and output file\n",
          out);
}

typedef struct opts {
    front_opts f;      /* -m, -c, -b, -t, sampling, --io, --mem, --gpu ... (front.c) */
    const char *prompt, *file, *ids, *out, *text, *preset, *type_name;
    float skew;
    uint64_t split_bytes;
    int layers, n_predict, no_special, ignore_eos, stats, timing;
    double disk_bw, mem_bw;
} opts;

static void parse_opts(int argc, char **argv, opts *o) {
    memset(o, 0, sizeof *o);
    front_opts_default(&o->f);
    o->n_predict = 256;
    o->disk_bw = 1.42e9; /* this machine's measured random-read peak (DESIGN.md); --disk-bw to change */
    o->mem_bw = 37e9;    /* two-core streaming read, measured by bench/bench_quant */
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (front_parse_common(argc, argv, &i, &o->f)) continue;
#define ARG() front_arg(argc, argv, &i)
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = ARG();
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) o->file = ARG();
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) o->n_predict = (int)front_int(a, ARG(), -1, INT_MAX);
        else if (!strcmp(a, "--no-special")) o->no_special = 1;
        else if (!strcmp(a, "--ignore-eos")) o->ignore_eos = 1;
        else if (!strcmp(a, "--stats")) o->stats = o->f.track_residency = 1;
        else if (!strcmp(a, "--timing")) o->timing = 1;
        else if (!strcmp(a, "--disk-bw")) o->disk_bw = front_float(a, ARG()) * 1e9;
        else if (!strcmp(a, "--mem-bw")) o->mem_bw = front_float(a, ARG()) * 1e9;
        else if (!strcmp(a, "--preset")) o->preset = ARG();
        else if (!strcmp(a, "--layers")) o->layers = (int)front_int(a, ARG(), 1, 4096);
        else if (!strcmp(a, "--type")) o->type_name = ARG();
        else if (!strcmp(a, "--skew")) o->skew = front_float(a, ARG());
        else if (!strcmp(a, "--split-size")) o->split_bytes = front_size(a, ARG());
        else if (!strcmp(a, "--ids")) o->ids = ARG();
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) o->out = ARG();
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
        else if (a[0] == '-' && a[1]) front_die("unknown option '%s' (see moestream --help)", a);
        else if (!o->text) o->text = a;
        else front_die("unexpected argument '%s'", a);
#undef ARG
    }
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) front_die("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n + 4096 > cap) buf = realloc(buf, cap *= 2);
        if (!buf) front_die("out of memory reading %s", path);
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) front_die("%s: read error", path);
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static ms_model *load_model(const opts *o) { return front_load_model(&o->f); }

/* A context holding at least min_ctx positions unless -c says otherwise. */
static ms_context *new_context(ms_model *m, const opts *o, int min_ctx) {
    front_opts f = o->f;
    if (!f.n_ctx && min_ctx > 4096) f.n_ctx = min_ctx;
    return front_new_context(m, &f);
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
    } else front_die("tokenize needs TEXT or -f FILE");
    int32_t *ids;
    int n;
    ms_error err;
    if (ms_tokenize(m, text, len, !o->no_special, &ids, &n, &err)) front_die("%s", err.msg);
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    ms_free_ids(ids);
    free(text);
    ms_model_free(m);
    return 0;
}

static int cmd_logits(const opts *o) {
    if (!o->ids || !o->out) front_die("logits needs --ids FILE and -o OUT.f32");
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
            front_die("%s: not a token id: '%.*s'", o->ids, w, p);
        }
        if (n == cap) ids = realloc(ids, sizeof(int32_t) * (cap *= 2));
        ids[n++] = (int32_t)v;
        p = end;
    }
    free(txt);
    if (!n) front_die("%s: no token ids", o->ids);
    ms_context *c = new_context(m, o, n);
    FILE *out = fopen(o->out, "wb");
    if (!out) front_die("%s: cannot create: %s", o->out, strerror(errno));
    int nv = ms_n_vocab(m);
    ms_error err;
    for (int done = 0; done < n;) {
        int b = n - done < o->f.n_batch ? n - done : o->f.n_batch;
        if (ms_eval(c, ids + done, b, 1, &err)) front_die("%s", err.msg);
        for (int i = 0; i < b; i++)
            if (fwrite(ms_logits(c, i), sizeof(float), (size_t)nv, out) != (size_t)nv) front_die("%s: write error", o->out);
        done += b;
    }
    if (fclose(out)) front_die("%s: write error", o->out);
    fprintf(stderr, "moestream: wrote %d x %d logits to %s\n", n, nv, o->out);
    free(ids);
    ms_context_free(c);
    ms_model_free(m);
    return 0;
}

static int cmd_synth(const opts *o) {
    if (!o->preset) front_die("synth needs --preset NAME (presets: %s)", ms_synth_presets());
    if (!o->out) front_die("synth needs -o FILE");
    ms_synth_params sp = {0};
    sp.preset = o->preset;
    sp.n_layer = o->layers;
    sp.type = ms_type_from_name(o->type_name ? o->type_name : "Q4_K");
    if (sp.type < 0) front_die("unknown tensor type '%s'", o->type_name);
    sp.skew = o->skew;
    sp.split_bytes = o->split_bytes;
    sp.seed = o->f.sp.seed == MS_SEED_RANDOM ? 1 : o->f.sp.seed;
    uint64_t bytes = ms_synth_size(&sp);
    double t0 = now();
    ms_error err;
    fprintf(stderr, "moestream: writing %s (%.2f GB of tensors)...\n", o->out, bytes / 1e9);
    if (ms_synth(&sp, o->out, &bytes, &err)) front_die("%s", err.msg);
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
static void print_stats(const ms_model *m, const ms_context *c, const opts *o, const ms_stats *a, const ms_stats *b,
                        int tokens, double secs) {
    if (tokens <= 0) return;
    double tk = tokens;
    if (o->timing) {
        double at = b->t_attn - a->t_attn, rt = b->t_route - a->t_route, wt = b->t_expert_wait - a->t_expert_wait;
        double ct = b->t_expert_compute - a->t_expert_compute, ot = b->t_other - a->t_other;
        fprintf(stderr, "moestream: per token: attention+norms %.2f ms, routing %.2f ms, expert wait %.2f ms, expert compute %.2f ms, "
                        "output %.2f ms (wall %.2f ms)\n",
                1e3 * at / tk, 1e3 * rt / tk, 1e3 * wt / tk, 1e3 * ct / tk, 1e3 * ot / tk, 1e3 * secs / tk);
    }
    if (o->timing && c) {
        /* per layer over the whole run (prompt included): where the time goes */
        int n_layer = 0;
        double t[4];
        while (ms_context_layer_timing(c, n_layer, t) == 0) n_layer++;
        if (n_layer) fprintf(stderr, "moestream: per layer (ms over the run): attention | routing | expert wait | expert compute\n");
        for (int il = 0; il < n_layer; il++) {
            ms_context_layer_timing(c, il, t);
            fprintf(stderr, "  layer %3d  %8.1f %8.1f %8.1f %8.1f\n", il, 1e3 * t[0], 1e3 * t[1], 1e3 * t[2], 1e3 * t[3]);
        }
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
    if (o->f.mem) fprintf(stderr, " (budget %.2f GiB)", o->f.mem / 1073741824.0);
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
    } else front_die("run needs a prompt (-p TEXT or -f FILE)");
    int32_t *ids;
    int n;
    ms_error err;
    if (ms_tokenize(m, text, len, 1, &ids, &n, &err)) front_die("%s", err.msg);
    free(text);
    if (n == 0) front_die("the prompt is empty");
    ms_context *c = new_context(m, o, 0);
    if (n >= ms_context_n_ctx(c))
        front_die("the prompt has %d tokens but the context holds %d (raise -c)", n, ms_context_n_ctx(c));
    ms_sampler *s = ms_sampler_new(m, &o->f.sp);
    if (!s) front_die("out of memory");
    double t_load = now() - t0;
    for (int i = 0; i < n; i++) ms_sampler_accept(s, ids[i]);
    double t1 = now();
    if (ms_eval(c, ids, n, 0, &err)) front_die("%s", err.msg);
    double t_prompt = now() - t1;
    ms_stats st0;
    ms_context_stats(c, &st0);
    ms_detok *d = ms_detok_new(m, 0);
    if (!d) front_die("out of memory");
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
        if (ms_eval(c, &tok, 1, 0, &err)) front_die("%s", err.msg);
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
        print_stats(m, c, o, &st0, &st1, n_eval, t_gen);
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
    front_die("unknown command '%s' (commands: run, info, tokenize, logits, chat, serve)", cmd);
    return 1;
}
