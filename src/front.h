/* front.h - what the chat and server front ends share: their entry points, common options, and
 * one turn of generation (prefix reuse, sampling, stop strings, reasoning budget, planned tool
 * calls, cancellation) on top of include/moestream.h.
 *
 * Not here: anything that prints or speaks HTTP (chat_cli.c, server.c), template rendering
 * (chat.c). Front ends only: not part of the library.
 */
#ifndef MS_FRONT_H
#define MS_FRONT_H

#include <stddef.h>
#include <stdint.h>

#include "moestream.h"

/* `moestream chat ...` and `moestream serve ...`: argv[1] is the command. Return the exit status. */
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv); /* bench.c */

/* Checks one POST body for path ("/v1/chat/completions" or "/v1/completions") as the server's
 * connection thread does (JSON, every field, template rendering, tokenization, context fit) but
 * queues nothing and needs no socket: for tests and fuzzing. Returns the HTTP status the request
 * would get before generation (200: it would be queued); for any other, *error_body is the
 * OpenAI-shaped error body (malloc'd, caller frees), else NULL. The server's model id is "model". */
unsigned serve_check_request(ms_model *m, ms_context *c, ms_chat *tmpl, const char *path, const char *body, size_t len,
                             char **error_body);

/* A growable NUL-terminated string; allocation failure is fatal (front ends only). */
typedef struct fbuf {
    char *s;
    size_t len, cap;
} fbuf;
void fbuf_add(fbuf *b, const char *s, size_t n);
void fbuf_adds(fbuf *b, const char *s);
void fbuf_addf(fbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fbuf_free(fbuf *b);

/* Prints "moestream: MESSAGE" on stderr and exits with status 1. */
void front_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

typedef struct front_opts {
    const char *model, *chat_template;
    int n_ctx, n_batch, threads, experts;
    ms_sampler_params sp;
    const char *io, *evict;      /* expert residency and cache policy */
    uint64_t mem;                /* --mem budget (0: none) */
    int io_threads, lookahead;
    int gpu, gpu_device;
    uint64_t gpu_mem;
    float cpu_share;             /* --cpu-share: -1 auto */
    int track_residency;         /* mmap mode: count page-cache hits (run --stats) */
} front_opts;

void front_opts_default(front_opts *o);
/* If argv[*i] is a common option (-m, -c, -b, -t, --temp, --top-k, --top-p, --min-p,
 * --repeat-penalty, --repeat-last-n, --seed, --experts-per-token, --chat-template, --io, --mem,
 * --evict, --io-threads, --lookahead, --gpu, --gpu-mem, --gpu-device, --cpu-share), consumes it and its value
 * (advancing *i) and returns 1; else returns 0. Dies on a bad value. */
int front_parse_common(int argc, char **argv, int *i, front_opts *o);
/* Value of the option at argv[*i] (advancing *i), or dies naming the option. */
const char *front_arg(int argc, char **argv, int *i);
long front_int(const char *flag, const char *v, long lo, long hi);
float front_float(const char *flag, const char *v);
/* "8G", "512M", "1.5GiB" -> bytes, or dies naming the flag. */
uint64_t front_size(const char *flag, const char *v);
/* Loads the model / makes a context as the options say, or dies with the library's message. */
ms_model *front_load_model(const front_opts *o);
ms_context *front_new_context(ms_model *m, const front_opts *o);
/* Reads a whole file (NUL-terminated, caller frees) or dies. */
char *front_read_file(const char *path, size_t *len);

/* One turn of generation after a prompt. */
typedef struct gen_req {
    const int32_t *ids;   /* the whole prompt */
    int n;
    int hist_end;         /* where the history ends and the generation prompt begins (0: unknown):
                             a checkpoint is saved there and at n, for the next turn */
    ms_sampler_params sp;
    int max_tokens;       /* <= 0: until the context is full */
    const char *const *stop; /* stop strings (not included in the output) */
    int n_stop;
    int think_open;       /* the prompt ends inside <think> */
    int tools;            /* tools were offered: <tool_call> text is a call, not shown as text */
    int raw;              /* pass the text on as it is (completions), not split into parts */
    int ignore_eos;       /* keep going past end-of-generation tokens */
    int think_budget;     /* >= 0: close the reasoning after this many tokens */
    ms_chat_plan *plan;   /* a tool call the engine writes with the model, or NULL */
    int (*cancel)(void *ud);                 /* polled between tokens; non-zero stops */
    ms_chat_emit on_text; /* the reply as it is classified (may be NULL) */
    void *ud;
} gen_req;

typedef struct gen_result {
    char *text;           /* everything generated (malloc'd; caller frees) */
    size_t len;
    int n_prompt, n_reused, n_gen;
    double t_prefill, t_decode; /* seconds */
    const char *finish;   /* "stop", "length", "tool_calls" (a planned call) or "cancelled" */
} gen_result;

/* Runs the turn on c. Returns MS_OK (with *out filled) or a status with err filled (the context
 * may then hold part of the prompt; the next turn's prefix reuse copes with that). */
ms_status front_generate(ms_model *m, ms_context *c, const gen_req *r, gen_result *out, ms_error *err);

#endif
