/* server.c - `moestream serve`: an OpenAI-compatible HTTP server for one model.
 *
 * Endpoints: POST /v1/chat/completions (messages of every role, streaming over SSE or not,
 * sampling options, stop strings, tools with tool_choice, usage), POST /v1/completions,
 * GET /v1/models, GET /health, GET /metrics (Prometheus text).
 *
 * Shape: libmicrohttpd runs a thread per connection; each thread reads and checks its request,
 * renders and tokenizes the prompt, and puts a job on one FIFO queue. One worker thread owns the
 * model's only context and serves the jobs in order, so requests are served fairly, first come
 * first served, and each prompt reuses the longest prefix the context already holds (the
 * previous turn of the same conversation, a shared system prompt). Connection threads wait for
 * their job (or stream its pieces as they come) and watch their socket: a client that leaves
 * cancels its job, queued or running. Every bad request gets an OpenAI-shaped error and its HTTP
 * status; nothing a client sends stops the server.
 *
 * Tool calls: the model's <tool_call> output becomes OpenAI tool_calls; tool messages go back in
 * through the template. tool_choice "required" or naming a function makes the engine write the
 * call's framing itself and sample only the argument values, under constraints that keep them
 * valid JSON of each parameter's type (ms_chat_plan_*, ms_constraint_*).
 *
 * Not here: templates and parsing (chat.c), the generation loop (front.c).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "front.h"

typedef struct server server;

typedef struct job {
    server *srv;
    int chat;               /* /v1/chat/completions, else /v1/completions */
    int stream, include_usage;
    int32_t *ids;
    int n, hist_end, think_open, tools_offered, ignore_eos;
    ms_sampler_params sp;
    int max_tokens;
    char **stop;
    int n_stop;
    char *tools;            /* JSON text of the tools offered, or NULL */
    ms_chat_plan *plan;     /* a required tool call, or NULL */
    char id[48];
    long created;
    int fd;                 /* the client's socket, to notice it leaving */
    /* shared with the worker, under srv->mu */
    pthread_cond_t cv;
    int refs, done;
    int cancel;
    fbuf out;               /* SSE events, or the final body */
    size_t sent;
    unsigned status;
    fbuf streamed;          /* content already streamed */
    struct job *next;
} job;

typedef struct metrics {
    uint64_t requests[2], responses[6]; /* [chat, completions]; [1xx..5xx] by class */
    uint64_t prompt_tokens, reused_tokens, completion_tokens, cancelled;
    double t_prefill, t_decode, last_tps;
    ms_stats stats;
    int context_tokens;
} metrics;

struct server {
    ms_model *m;
    ms_context *c;
    ms_chat *tmpl;
    front_opts o;
    char model_id[256];
    const char *api_key;
    size_t max_body;
    int max_tokens_limit, max_queue;
    struct MHD_Daemon *d;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, *tail;
    int queued, busy, stopping;
    unsigned long next_id;
    metrics mt;
    long started;
};

/* ---- jobs ---- */

static job *job_new(server *s) {
    job *j = calloc(1, sizeof *j);
    if (!j) front_die("out of memory");
    j->srv = s;
    j->refs = 1;
    j->fd = -1;
    pthread_cond_init(&j->cv, NULL);
    return j;
}

static void job_release(job *j) {
    server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (!last) return;
    ms_free_ids(j->ids);
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->stop);
    free(j->tools);
    ms_chat_plan_free(j->plan);
    fbuf_free(&j->out);
    fbuf_free(&j->streamed);
    pthread_cond_destroy(&j->cv);
    free(j);
}

static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return 1;
    char c;
    return (p.revents & POLLIN) && recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* Waits (mu held) up to 100 ms for news on the job. */
static void job_wait(job *j) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&j->cv, &j->srv->mu, &ts);
}

/* ---- JSON helpers ---- */

/* A JSON string from generated text (valid UTF-8 by construction; anything else becomes '?'). */
static json_t *jstr(const char *s, size_t n) {
    json_t *v = json_stringn(s, n);
    if (v) return v;
    char *t = malloc(n + 1);
    if (!t) front_die("out of memory");
    for (size_t i = 0; i < n; i++) t[i] = (unsigned char)s[i] < 0x80 && s[i] ? s[i] : '?';
    v = json_stringn(t, n);
    free(t);
    return v;
}

static char *dumps(json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s) front_die("out of memory");
    return s;
}

/* ---- HTTP responses ---- */

static void count_status(server *s, unsigned status) {
    pthread_mutex_lock(&s->mu);
    if (status / 100 >= 1 && status / 100 <= 5) s->mt.responses[status / 100]++;
    pthread_mutex_unlock(&s->mu);
}

static enum MHD_Result send_body(struct MHD_Connection *conn, server *s, unsigned status, const char *type,
                                 const char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
    if (status == 503) MHD_add_response_header(r, "Retry-After", "1");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    count_status(s, status);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, server *s, unsigned status, json_t *v) {
    char *body = dumps(v);
    json_decref(v);
    enum MHD_Result r = send_body(conn, s, status, "application/json", body, strlen(body));
    free(body);
    return r;
}

/* An error body as OpenAI writes it: {"error": {"message", "type", "param", "code"}}. */
static json_t *error_json(unsigned status, const char *param, const char *code, const char *msg) {
    const char *type = status == 401 ? "authentication_error"
                       : status == 404 && code && !strcmp(code, "model_not_found") ? "invalid_request_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    /* the message may quote what the client sent (a URL, a JSON parser's excerpt cut inside a
     * UTF-8 sequence): never let it make the error itself unwritable */
    return json_pack("{s:{s:o, s:s, s:s?, s:s?}}", "error", "message", jstr(msg, strlen(msg)), "type", type, "param",
                     param, "code", code);
}

static enum MHD_Result send_error(struct MHD_Connection *conn, server *s, unsigned status, const char *param,
                                  const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static enum MHD_Result send_error(struct MHD_Connection *conn, server *s, unsigned status, const char *param,
                                  const char *code, const char *fmt, ...) {
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_json(conn, s, status, error_json(status, param, code, msg));
}

/* ---- request checking ---- */

/* A request error: where it is and what is wrong, for a 400 (or status) reply. */
typedef struct bad {
    unsigned status;
    char param[64];
    const char *code;
    char msg[600];
} bad;

static int fail(bad *b, unsigned status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(bad *b, unsigned status, const char *param, const char *code, const char *fmt, ...) {
    b->status = status;
    snprintf(b->param, sizeof b->param, "%s", param ? param : "");
    b->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->msg, sizeof b->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* A library call refused the request: the client's fault (400), or the server's (500: out of
 * memory, a read error). */
static int lib_fail(bad *b, ms_status st, const char *param, const ms_error *err) {
    if (st == MS_ERR_ARG || st == MS_ERR_CONTEXT || st == MS_ERR_UNSUPPORTED)
        return fail(b, 400, param, "invalid_value", "%s", err->msg);
    return fail(b, 500, NULL, "internal_error", "%s", err->msg);
}

static const char *jtype(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Reads an optional number field in [lo, hi]; 1 if present, 0 if absent/null, -1 if bad. */
static int opt_number(json_t *req, const char *key, double lo, double hi, double *out, bad *b) {
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return fail(b, 400, key, "invalid_type", "'%s' must be a number, got %s", key, jtype(v));
    double x = json_number_value(v);
    if (x < lo || x > hi) return fail(b, 400, key, "invalid_value", "'%s' must be in [%g, %g], got %g", key, lo, hi, x);
    *out = x;
    return 1;
}

static int opt_int(json_t *req, const char *key, long long lo, long long hi, long long *out, bad *b) {
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return fail(b, 400, key, "invalid_type", "'%s' must be an integer, got %s", key, jtype(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return fail(b, 400, key, "invalid_value", "'%s' must be in [%lld, %lld], got %lld", key, lo, hi, x);
    *out = x;
    return 1;
}

static int opt_bool(json_t *req, const char *key, int *out, bad *b) {
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return fail(b, 400, key, "invalid_type", "'%s' must be a boolean, got %s", key, jtype(v));
    *out = json_is_true(v);
    return 1;
}

/* Message content: a string, null, or an array of {"type": "text", "text": ...} parts. The text
 * is appended to out (parts joined). Returns 0, or -1 with b filled. */
static int content_text(json_t *ct, const char *where, fbuf *out, int *is_null, bad *b) {
    *is_null = 0;
    if (!ct || json_is_null(ct)) {
        *is_null = 1;
        return 0;
    }
    if (json_is_string(ct)) {
        fbuf_add(out, json_string_value(ct), json_string_length(ct));
        return 0;
    }
    if (!json_is_array(ct)) return fail(b, 400, where, "invalid_type", "'%s' must be a string, an array of parts or null, got %s", where, jtype(ct));
    for (size_t i = 0; i < json_array_size(ct); i++) {
        json_t *p = json_array_get(ct, i);
        const char *ty = json_string_value(json_object_get(p, "type"));
        json_t *tx = json_object_get(p, "text");
        if (!json_is_object(p) || !ty) return fail(b, 400, where, "invalid_type", "'%s[%zu]' must be an object with a type", where, i);
        if (strcmp(ty, "text")) return fail(b, 400, where, "unsupported_content", "'%s[%zu]' is of type '%s'; this model takes text only", where, i, ty);
        if (!json_is_string(tx)) return fail(b, 400, where, "invalid_type", "'%s[%zu].text' must be a string", where, i);
        fbuf_add(out, json_string_value(tx), json_string_length(tx));
    }
    return 0;
}

/* Messages and their strings, owned together. */
typedef struct msgs {
    ms_chat_msg *m;
    ms_tool_call *calls;
    char **strs;
    int n, n_calls, n_strs;
} msgs;

static void msgs_free(msgs *x) {
    for (int i = 0; i < x->n_strs; i++) free(x->strs[i]);
    free(x->strs);
    free(x->m);
    free(x->calls);
    memset(x, 0, sizeof *x);
}

static char *keep(msgs *x, char *s) {
    x->strs[x->n_strs++] = s;
    return s;
}

static int parse_messages(json_t *arr, msgs *x, bad *b) {
    if (!arr) return fail(b, 400, "messages", "missing_required_parameter", "'messages' is required");
    if (!json_is_array(arr)) return fail(b, 400, "messages", "invalid_type", "'messages' must be an array, got %s", jtype(arr));
    size_t n = json_array_size(arr);
    if (!n) return fail(b, 400, "messages", "invalid_value", "'messages' must not be empty");
    size_t n_calls = 0;
    for (size_t i = 0; i < n; i++) n_calls += json_array_size(json_object_get(json_array_get(arr, i), "tool_calls"));
    x->m = calloc(n, sizeof *x->m);
    x->calls = calloc(n_calls + 1, sizeof *x->calls);
    x->strs = calloc(n * 2 + n_calls * 3 + 1, sizeof *x->strs);
    if (!x->m || !x->calls || !x->strs) front_die("out of memory");
    x->n = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        char where[64];
        snprintf(where, sizeof where, "messages[%zu]", i);
        if (!json_is_object(o)) return fail(b, 400, where, "invalid_type", "'%s' must be an object, got %s", where, jtype(o));
        json_t *rv = json_object_get(o, "role");
        const char *role = json_string_value(rv);
        snprintf(where, sizeof where, "messages[%zu].role", i);
        if (!role) return fail(b, 400, where, "invalid_type", "'%s' must be a string", where);
        if (!strcmp(role, "developer")) role = "system";
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") && strcmp(role, "tool"))
            return fail(b, 400, where, "invalid_value", "'%s' is '%s'; expected system, developer, user, assistant or tool", where, role);
        ms_chat_msg *mm = &x->m[i];
        mm->role = role;
        snprintf(where, sizeof where, "messages[%zu].content", i);
        fbuf t = {0};
        int is_null;
        fbuf_add(&t, "", 0);
        if (content_text(json_object_get(o, "content"), where, &t, &is_null, b)) {
            fbuf_free(&t);
            return -1;
        }
        mm->content = is_null ? (free(t.s), NULL) : keep(x, t.s);
        json_t *calls = json_object_get(o, "tool_calls");
        if (is_null && strcmp(role, "assistant"))
            return fail(b, 400, where, "invalid_value", "'%s' is required for a %s message", where, role);
        if (calls && !json_is_null(calls)) {
            snprintf(where, sizeof where, "messages[%zu].tool_calls", i);
            if (strcmp(role, "assistant")) return fail(b, 400, where, "invalid_value", "only assistant messages have tool_calls");
            if (!json_is_array(calls)) return fail(b, 400, where, "invalid_type", "'%s' must be an array", where);
            mm->tool_calls = &x->calls[x->n_calls];
            for (size_t k = 0; k < json_array_size(calls); k++) {
                json_t *tc = json_array_get(calls, k), *fn = json_object_get(tc, "function");
                const char *name = json_string_value(json_object_get(fn, "name"));
                json_t *args = json_object_get(fn, "arguments");
                snprintf(where, sizeof where, "messages[%zu].tool_calls[%zu]", i, k);
                if (!json_is_object(tc) || !name)
                    return fail(b, 400, where, "invalid_type", "'%s' must be {\"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": ...}}", where);
                ms_tool_call *c = &x->calls[x->n_calls++];
                c->name = keep(x, strdup(name));
                if (json_is_string(args)) c->arguments = keep(x, strdup(json_string_value(args)));
                else if (json_is_object(args)) c->arguments = keep(x, dumps(args));
                else if (!args || json_is_null(args)) c->arguments = keep(x, strdup("{}"));
                else return fail(b, 400, where, "invalid_type", "'%s.function.arguments' must be a JSON string", where);
                const char *id = json_string_value(json_object_get(tc, "id"));
                if (id) c->id = keep(x, strdup(id));
                mm->n_tool_calls++;
            }
        }
        json_t *rc = json_object_get(o, "reasoning_content");
        if (json_is_string(rc)) mm->reasoning = keep(x, strdup(json_string_value(rc)));
    }
    return 0;
}

/* tools: an array of {"type": "function", "function": {"name": ...}}. */
static int check_tools(json_t *tools, bad *b) {
    if (!json_is_array(tools)) return fail(b, 400, "tools", "invalid_type", "'tools' must be an array, got %s", jtype(tools));
    for (size_t i = 0; i < json_array_size(tools); i++) {
        json_t *t = json_array_get(tools, i), *fn = json_object_get(t, "function");
        const char *ty = json_string_value(json_object_get(t, "type"));
        char where[48];
        snprintf(where, sizeof where, "tools[%zu]", i);
        if (!json_is_object(t) || !json_is_object(fn) || !json_is_string(json_object_get(fn, "name")))
            return fail(b, 400, where, "invalid_type", "'%s' must be {\"type\": \"function\", \"function\": {\"name\": ...}}", where);
        if (ty && strcmp(ty, "function")) return fail(b, 400, where, "invalid_value", "'%s' has type '%s'; only functions are supported", where, ty);
        json_t *params = json_object_get(fn, "parameters");
        if (params && !json_is_object(params) && !json_is_null(params))
            return fail(b, 400, where, "invalid_type", "'%s.function.parameters' must be a JSON schema object", where);
    }
    return 0;
}

/* Sampling, limits and stop strings shared by both endpoints. */
static int parse_common(server *s, json_t *req, job *j, int default_max, bad *b) {
    json_t *model = json_object_get(req, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) return fail(b, 400, "model", "invalid_type", "'model' must be a string, got %s", jtype(model));
        const char *name = json_string_value(model);
        if (*name && strcmp(name, s->model_id))
            return fail(b, 404, "model", "model_not_found", "The model '%s' does not exist (this server has '%s')", name, s->model_id);
    }
    double x;
    long long v;
    int r;
    j->sp = s->o.sp;
    j->sp.seed = s->o.sp.seed;
    if ((r = opt_number(req, "temperature", 0, 2, &x, b)) < 0) return -1;
    if (r) j->sp.temperature = (float)x;
    if ((r = opt_number(req, "top_p", 0, 1, &x, b)) < 0) return -1;
    if (r) j->sp.top_p = (float)x;
    if ((r = opt_number(req, "min_p", 0, 1, &x, b)) < 0) return -1;
    if (r) j->sp.min_p = (float)x;
    if ((r = opt_int(req, "top_k", 0, 1 << 30, &v, b)) < 0) return -1;
    if (r) j->sp.top_k = (int)v;
    if ((r = opt_number(req, "repeat_penalty", 0, 10, &x, b)) < 0) return -1;
    if (r) j->sp.repeat_penalty = (float)x;
    if (opt_number(req, "presence_penalty", -2, 2, &x, b) < 0 || opt_number(req, "frequency_penalty", -2, 2, &x, b) < 0)
        return -1;
    if ((r = opt_int(req, "seed", -(1LL << 62), 1LL << 62, &v, b)) < 0) return -1;
    if (r) j->sp.seed = v < 0 ? MS_SEED_RANDOM : (uint64_t)v;
    if ((r = opt_int(req, "n", 1, 1, &v, b)) < 0) return -1;
    long long mt = default_max;
    int have_max = 0;
    const char *keys[] = {"max_completion_tokens", "max_tokens"};
    for (int k = 0; k < 2 && !have_max; k++) {
        if ((r = opt_int(req, keys[k], 1, s->max_tokens_limit, &mt, b)) < 0) return -1;
        have_max = r;
    }
    j->max_tokens = (int)mt;
    json_t *stop = json_object_get(req, "stop");
    if (stop && !json_is_null(stop)) {
        size_t n = json_is_array(stop) ? json_array_size(stop) : 1;
        if (!json_is_string(stop) && !json_is_array(stop))
            return fail(b, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings, got %s", jtype(stop));
        if (n > 16) return fail(b, 400, "stop", "invalid_value", "'stop' has %zu strings; at most 16", n);
        j->stop = calloc(n + 1, sizeof *j->stop);
        if (!j->stop) front_die("out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_is_array(stop) ? json_array_get(stop, i) : stop;
            if (!json_is_string(e)) return fail(b, 400, "stop", "invalid_type", "'stop[%zu]' must be a string", i);
            if (!json_string_length(e)) continue;
            if (json_string_length(e) > 256) return fail(b, 400, "stop", "invalid_value", "a stop string is longer than 256 bytes");
            j->stop[j->n_stop++] = strdup(json_string_value(e));
        }
    }
    if (opt_bool(req, "stream", &j->stream, b) < 0) return -1;
    if (opt_bool(req, "ignore_eos", &j->ignore_eos, b) < 0) return -1; /* llama.cpp's extension, for benchmarks */
    json_t *so = json_object_get(req, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) return fail(b, 400, "stream_options", "invalid_type", "'stream_options' must be an object");
        if (opt_bool(so, "include_usage", &j->include_usage, b) < 0) return -1;
    }
    json_t *lp = json_object_get(req, "logprobs");
    if (lp && json_is_true(lp)) return fail(b, 400, "logprobs", "unsupported_parameter", "logprobs are not supported");
    if (lp && !json_is_boolean(lp) && !json_is_null(lp) && !json_is_integer(lp))
        return fail(b, 400, "logprobs", "invalid_type", "'logprobs' must be a boolean");
    return 0;
}

/* Tokenizes the prompt and checks it fits, leaving room for at least one token. */
static int tokenize_prompt(server *s, job *j, const char *text, bad *b) {
    ms_error err;
    ms_status st = ms_tokenize(s->m, text, strlen(text), 1, &j->ids, &j->n, &err);
    if (st) return lib_fail(b, st, "messages", &err);
    int n_ctx = ms_context_n_ctx(s->c);
    if (j->n == 0) return fail(b, 400, "prompt", "invalid_value", "the prompt is empty");
    if (j->n >= n_ctx)
        return fail(b, 400, "messages", "context_length_exceeded",
                    "This model's maximum context length is %d tokens. However, your messages resulted in %d tokens.",
                    n_ctx, j->n);
    if (j->max_tokens <= 0 || j->max_tokens > n_ctx - j->n) j->max_tokens = n_ctx - j->n;
    return 0;
}

static int build_chat_job(server *s, json_t *req, job *j, bad *b) {
    j->chat = 1;
    if (parse_common(s, req, j, s->max_tokens_limit, b)) return -1;
    msgs x = {0};
    int rc = -1;
    char *text = NULL, *hist = NULL;
    if (parse_messages(json_object_get(req, "messages"), &x, b)) goto done;
    json_t *tools = json_object_get(req, "tools"), *choice = json_object_get(req, "tool_choice");
    if (tools && json_is_null(tools)) tools = NULL;
    if (tools && check_tools(tools, b)) goto done;
    if (tools && !json_array_size(tools)) tools = NULL;
    const char *forced = NULL;
    int required = 0, none = 0;
    if (choice && !json_is_null(choice)) {
        const char *cs = json_string_value(choice);
        if (cs && !strcmp(cs, "none")) none = 1;
        else if (cs && !strcmp(cs, "required")) required = 1;
        else if (cs && !strcmp(cs, "auto")) ;
        else if (json_is_object(choice) && json_is_string(json_object_get(json_object_get(choice, "function"), "name")))
            forced = json_string_value(json_object_get(json_object_get(choice, "function"), "name"));
        else {
            fail(b, 400, "tool_choice", "invalid_value",
                 "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}");
            goto done;
        }
        if ((required || forced) && !tools) {
            fail(b, 400, "tool_choice", "invalid_value", "'tool_choice' asks for a tool call but no tools were given");
            goto done;
        }
    }
    if (none) tools = NULL;
    json_t *rf = json_object_get(req, "response_format");
    const char *rft = json_string_value(json_object_get(rf, "type"));
    if (rf && !json_is_null(rf) && (!rft || strcmp(rft, "text"))) {
        fail(b, 400, "response_format", "unsupported_parameter", "only response_format {\"type\": \"text\"} is supported");
        goto done;
    }
    ms_chat_params p;
    ms_chat_params_default(&p);
    int thinking = 1;
    json_t *kw = json_object_get(req, "chat_template_kwargs");
    if (json_is_object(kw) && opt_bool(kw, "enable_thinking", &thinking, b) < 0) goto done;
    if (tools) {
        j->tools = dumps(tools);
        p.tools = j->tools;
        j->tools_offered = 1;
    }
    ms_error err;
    if (tools && (required || forced)) {
        ms_status st = ms_chat_plan_new(s->tmpl, j->tools, forced, &j->plan, &err);
        if (st) {
            lib_fail(b, st, "tool_choice", &err);
            goto done;
        }
        thinking = 0; /* the call comes first */
    }
    p.thinking = thinking;
    ms_status st = ms_chat_render(s->tmpl, x.m, x.n, &p, &text, &j->think_open, &err);
    if (st) {
        lib_fail(b, st, "messages", &err);
        goto done;
    }
    if (tokenize_prompt(s, j, text, b)) goto done;
    /* where the history ends: a checkpoint there lets the next turn resume */
    p.add_generation_prompt = 0;
    int32_t *hids = NULL;
    int nh = 0;
    if (ms_chat_render(s->tmpl, x.m, x.n, &p, &hist, NULL, &err) == MS_OK &&
        ms_tokenize(s->m, hist, strlen(hist), 1, &hids, &nh, &err) == MS_OK && nh < j->n &&
        !memcmp(hids, j->ids, sizeof *hids * (size_t)nh))
        j->hist_end = nh;
    ms_free_ids(hids);
    rc = 0;
done:
    ms_chat_text_free(text);
    ms_chat_text_free(hist);
    msgs_free(&x);
    return rc;
}

static int build_completion_job(server *s, json_t *req, job *j, bad *b) {
    if (parse_common(s, req, j, 16, b)) return -1;
    json_t *pr = json_object_get(req, "prompt");
    if (!pr) return fail(b, 400, "prompt", "missing_required_parameter", "'prompt' is required");
    if (json_is_array(pr) && json_array_size(pr) == 1 && json_is_string(json_array_get(pr, 0))) pr = json_array_get(pr, 0);
    const char *unsupported[] = {"suffix", "echo", "best_of"};
    for (int k = 0; k < 3; k++) {
        json_t *v = json_object_get(req, unsupported[k]);
        if (v && !json_is_null(v) && !json_is_false(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
            return fail(b, 400, unsupported[k], "unsupported_parameter", "'%s' is not supported", unsupported[k]);
    }
    if (json_is_string(pr)) return tokenize_prompt(s, j, json_string_value(pr), b);
    if (json_is_array(pr) && json_array_size(pr) && json_is_integer(json_array_get(pr, 0))) {
        size_t n = json_array_size(pr);
        j->ids = malloc(sizeof *j->ids * n);
        if (!j->ids) front_die("out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *v = json_array_get(pr, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= ms_n_vocab(s->m))
                return fail(b, 400, "prompt", "invalid_value", "'prompt[%zu]' is not a token id of this model", i);
            j->ids[i] = (int32_t)json_integer_value(v);
        }
        j->n = (int)n;
        int n_ctx = ms_context_n_ctx(s->c);
        if (j->n >= n_ctx)
            return fail(b, 400, "prompt", "context_length_exceeded",
                        "This model's maximum context length is %d tokens. However, your prompt has %d tokens.", n_ctx, j->n);
        if (j->max_tokens <= 0 || j->max_tokens > n_ctx - j->n) j->max_tokens = n_ctx - j->n;
        return 0;
    }
    return fail(b, 400, "prompt", "invalid_type", "'prompt' must be a string, one string in an array, or an array of token ids");
}

/* The body of a POST: a JSON object, else NULL with b filled for a 400. */
static json_t *parse_body(const char *body, size_t len, bad *b) {
    json_error_t je;
    json_t *req = json_loadb(body ? body : "", len, 0, &je);
    if (!req) {
        fail(b, 400, NULL, "invalid_json", "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(req)) {
        json_decref(req);
        fail(b, 400, NULL, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    return req;
}

unsigned serve_check_request(ms_model *m, ms_context *c, ms_chat *tmpl, const char *path, const char *body, size_t len,
                             char **error_body) {
    server s;
    memset(&s, 0, sizeof s);
    s.m = m;
    s.c = c;
    s.tmpl = tmpl;
    front_opts_default(&s.o);
    snprintf(s.model_id, sizeof s.model_id, "model");
    s.max_tokens_limit = ms_context_n_ctx(c);
    pthread_mutex_init(&s.mu, NULL);
    *error_body = NULL;
    bad b = {0};
    int chat = !strcmp(path, "/v1/chat/completions"), rc = -1;
    if (!chat && strcmp(path, "/v1/completions")) fail(&b, 404, NULL, "not_found", "unknown endpoint POST %s", path);
    else {
        json_t *req = parse_body(body, len, &b);
        if (req) {
            job *j = job_new(&s);
            rc = chat ? build_chat_job(&s, req, j, &b) : build_completion_job(&s, req, j, &b);
            json_decref(req);
            job_release(j);
        }
    }
    pthread_mutex_destroy(&s.mu);
    if (!rc) return 200;
    json_t *err = error_json(b.status, b.param[0] ? b.param : NULL, b.code, b.msg);
    *error_body = dumps(err);
    json_decref(err);
    return b.status;
}

/* ---- the worker ---- */

static void emit_event(fbuf *out, json_t *v) {
    char *s = dumps(v);
    json_decref(v);
    fbuf_adds(out, "data: ");
    fbuf_adds(out, s);
    fbuf_adds(out, "\n\n");
    free(s);
}

static json_t *chunk(job *j, json_t *delta, const char *finish) {
    server *s = j->srv;
    json_t *choice;
    if (j->chat)
        choice = json_pack("{s:i, s:o, s:n, s:s?}", "index", 0, "delta", delta, "logprobs", "finish_reason", finish);
    else {
        const char *text = json_string_value(json_object_get(delta, "content"));
        choice = json_pack("{s:i, s:s, s:n, s:s?}", "index", 0, "text", text ? text : "", "logprobs", "finish_reason", finish);
        json_decref(delta);
    }
    return json_pack("{s:s, s:s, s:i, s:s, s:s, s:[o]}", "id", j->id, "object",
                     j->chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)j->created, "model",
                     s->model_id, "system_fingerprint", "moestream", "choices", choice);
}

/* Streams reasoning and content as they come (tool-call text waits for the end). */
static void on_text(void *ud, ms_chat_part part, const char *text, size_t len) {
    job *j = ud;
    if (!j->stream || part == MS_CHAT_TOOL_CALL || !len) return;
    server *s = j->srv;
    json_t *delta = json_object();
    json_object_set_new(delta, part == MS_CHAT_REASONING ? "reasoning_content" : "content", jstr(text, len));
    json_t *ev = chunk(j, delta, NULL);
    pthread_mutex_lock(&s->mu);
    if (part == MS_CHAT_CONTENT) fbuf_add(&j->streamed, text, len);
    emit_event(&j->out, ev);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&s->mu);
}

static int job_cancelled(void *ud) {
    job *j = ud;
    pthread_mutex_lock(&j->srv->mu); /* connection threads set these under it (TSan) */
    int c = j->cancel || j->srv->stopping;
    pthread_mutex_unlock(&j->srv->mu);
    return c;
}

static json_t *usage_json(const gen_result *r) {
    return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", r->n_prompt, "completion_tokens", r->n_gen,
                     "total_tokens", r->n_prompt + r->n_gen, "prompt_tokens_details", "cached_tokens", r->n_reused);
}

static json_t *calls_json(const ms_chat_reply *rep, int with_index) {
    json_t *arr = json_array();
    for (int i = 0; i < rep->n_tool_calls; i++) {
        const ms_tool_call *c = &rep->tool_calls[i];
        json_t *o = json_pack("{s:s, s:s, s:{s:s, s:o}}", "id", c->id, "type", "function", "function", "name", c->name,
                              "arguments", jstr(c->arguments, strlen(c->arguments)));
        if (with_index) json_object_set_new(o, "index", json_integer(i));
        json_array_append_new(arr, o);
    }
    return arr;
}

static void run_job(server *s, job *j) {
    gen_req req = {0};
    req.ids = j->ids;
    req.n = j->n;
    req.hist_end = j->hist_end;
    req.sp = j->sp;
    req.max_tokens = j->max_tokens;
    req.stop = (const char *const *)j->stop;
    req.n_stop = j->n_stop;
    req.think_open = j->think_open;
    req.think_budget = -1;
    req.tools = j->tools_offered;
    req.raw = !j->chat;
    req.ignore_eos = j->ignore_eos;
    req.plan = j->plan;
    req.cancel = job_cancelled;
    req.on_text = on_text;
    req.ud = j;
    if (j->stream && j->chat) {
        json_t *ev = chunk(j, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL);
        pthread_mutex_lock(&s->mu);
        emit_event(&j->out, ev);
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&s->mu);
    }
    gen_result res;
    ms_error err;
    ms_status st = front_generate(s->m, s->c, &req, &res, &err);
    json_t *final = NULL;
    fbuf events = {0};
    unsigned status = 200;
    int cancelled = st == MS_OK && !strcmp(res.finish, "cancelled");
    if (st != MS_OK) {
        status = st == MS_ERR_CONTEXT ? 400 : 500;
        final = error_json(status, NULL, st == MS_ERR_CONTEXT ? "context_length_exceeded" : "internal_error", err.msg);
    } else if (!cancelled && j->chat) {
        ms_chat_reply rep;
        if (ms_chat_parse(s->tmpl, res.text, res.len, j->think_open, j->tools, &rep, &err)) {
            status = 500;
            final = error_json(500, NULL, "internal_error", err.msg);
        } else {
            const char *finish = rep.n_tool_calls ? "tool_calls" : !strcmp(res.finish, "length") ? "length" : "stop";
            if (j->stream) {
                /* content held back as tool-call text that did not parse */
                size_t done = j->streamed.len;
                if (!rep.n_tool_calls && strlen(rep.content) > done && !strncmp(rep.content, j->streamed.s ? j->streamed.s : "", done))
                    emit_event(&events, chunk(j, json_pack("{s:o}", "content", jstr(rep.content + done, strlen(rep.content) - done)), NULL));
                if (rep.n_tool_calls) emit_event(&events, chunk(j, json_pack("{s:o}", "tool_calls", calls_json(&rep, 1)), NULL));
                emit_event(&events, chunk(j, json_object(), finish));
                if (j->include_usage) {
                    json_t *u = json_pack("{s:s, s:s, s:i, s:s, s:s, s:[], s:o}", "id", j->id, "object",
                                          "chat.completion.chunk", "created", (json_int_t)j->created, "model", s->model_id,
                                          "system_fingerprint", "moestream", "choices", "usage", usage_json(&res));
                    emit_event(&events, u);
                }
            } else {
                json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content",
                                        rep.n_tool_calls && !*rep.content ? json_null() : jstr(rep.content, strlen(rep.content)));
                if (rep.reasoning) json_object_set_new(msg, "reasoning_content", jstr(rep.reasoning, strlen(rep.reasoning)));
                if (rep.n_tool_calls) json_object_set_new(msg, "tool_calls", calls_json(&rep, 0));
                final = json_pack("{s:s, s:s, s:i, s:s, s:s, s:[{s:i, s:o, s:n, s:s}], s:o}", "id", j->id, "object",
                                  "chat.completion", "created", (json_int_t)j->created, "model", s->model_id,
                                  "system_fingerprint", "moestream", "choices", "index", 0, "message", msg, "logprobs",
                                  "finish_reason", finish, "usage", usage_json(&res));
            }
            ms_chat_reply_free(&rep);
        }
    } else if (!cancelled) {
        const char *finish = !strcmp(res.finish, "length") ? "length" : "stop";
        if (j->stream) {
            emit_event(&events, chunk(j, json_pack("{s:s}", "content", ""), finish));
            if (j->include_usage)
                emit_event(&events, json_pack("{s:s, s:s, s:i, s:s, s:[], s:o}", "id", j->id, "object", "text_completion",
                                           "created", (json_int_t)j->created, "model", s->model_id, "choices", "usage",
                                           usage_json(&res)));
        } else
            final = json_pack("{s:s, s:s, s:i, s:s, s:s, s:[{s:o, s:i, s:n, s:s}], s:o}", "id", j->id, "object",
                              "text_completion", "created", (json_int_t)j->created, "model", s->model_id,
                              "system_fingerprint", "moestream", "choices", "text", jstr(res.text, res.len), "index", 0,
                              "logprobs", "finish_reason", finish, "usage", usage_json(&res));
    }
    ms_stats stats;
    ms_context_stats(s->c, &stats);
    pthread_mutex_lock(&s->mu);
    if (j->stream) {
        if (final) emit_event(&j->out, final), final = NULL;
        if (events.s) fbuf_add(&j->out, events.s, events.len);
        if (!cancelled) fbuf_adds(&j->out, "data: [DONE]\n\n");
    } else if (final) {
        char *body = dumps(final);
        json_decref(final);
        fbuf_adds(&j->out, body);
        free(body);
    }
    j->status = status;
    j->done = 1;
    metrics *mt = &s->mt;
    if (st == MS_OK) {
        mt->prompt_tokens += (uint64_t)res.n_prompt;
        mt->reused_tokens += (uint64_t)res.n_reused;
        mt->completion_tokens += (uint64_t)res.n_gen;
        mt->t_prefill += res.t_prefill;
        mt->t_decode += res.t_decode;
        if (res.n_gen > 1 && res.t_decode > 0) mt->last_tps = res.n_gen / res.t_decode;
    }
    if (cancelled) mt->cancelled++;
    mt->stats = stats;
    mt->context_tokens = ms_context_pos(s->c);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&s->mu);
    fbuf_free(&events);
    free(res.text);
}

static void *worker(void *arg) {
    server *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->head && !s->stopping) pthread_cond_wait(&s->cv, &s->mu);
        job *j = s->head;
        if (!j) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        s->head = j->next;
        if (!s->head) s->tail = NULL;
        s->queued--;
        s->busy = 1;
        int skip = j->cancel || s->stopping;
        if (skip) {
            j->done = 1;
            s->mt.cancelled++;
            pthread_cond_broadcast(&j->cv);
        }
        pthread_mutex_unlock(&s->mu);
        if (!skip) run_job(s, j);
        pthread_mutex_lock(&s->mu);
        s->busy = 0;
        pthread_mutex_unlock(&s->mu);
        job_release(j);
    }
    return NULL;
}

/* ---- HTTP handling ---- */

typedef struct conn_ctx {
    fbuf body;
    int too_big, started;
    job *j;
} conn_ctx;

/* The streamed response: SSE bytes as the worker writes them. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    job *j = cls;
    server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    while (j->sent == j->out.len && !j->done) {
        if (client_gone(j->fd)) j->cancel = 1;
        if (j->cancel) break;
        job_wait(j);
    }
    size_t n = j->out.len - j->sent;
    if (n > max) n = max;
    if (n) memcpy(buf, j->out.s + j->sent, n);
    j->sent += n;
    if (j->sent == j->out.len) j->sent = j->out.len = 0; /* all sent: reuse the buffer */
    int end = !n && (j->done || j->cancel);
    int err = !n && j->cancel && !j->done;
    pthread_mutex_unlock(&s->mu);
    if (err) return MHD_CONTENT_READER_END_WITH_ERROR;
    if (end) return MHD_CONTENT_READER_END_OF_STREAM;
    return (ssize_t)n;
}

static void stream_done(void *cls) {
    job *j = cls;
    pthread_mutex_lock(&j->srv->mu);
    if (!j->done) j->cancel = 1; /* the client left mid-stream */
    pthread_mutex_unlock(&j->srv->mu);
    job_release(j);
}

static enum MHD_Result serve_job(struct MHD_Connection *conn, server *s, conn_ctx *cc, json_t *req, int chat) {
    job *j = job_new(s);
    cc->j = j;
    bad b = {0};
    int rc = chat ? build_chat_job(s, req, j, &b) : build_completion_job(s, req, j, &b);
    json_decref(req);
    if (rc) return send_json(conn, s, b.status, error_json(b.status, b.param[0] ? b.param : NULL, b.code, b.msg));
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->fd = ci ? ci->connect_fd : -1;
    j->created = (long)time(NULL);
    pthread_mutex_lock(&s->mu);
    if (s->queued >= s->max_queue || s->stopping) {
        int q = s->queued;
        pthread_mutex_unlock(&s->mu);
        return send_error(conn, s, 503, NULL, "server_busy", "the server is busy (%d requests waiting); retry later", q);
    }
    snprintf(j->id, sizeof j->id, "%s-%lx%06lx", chat ? "chatcmpl" : "cmpl", (unsigned long)j->created, ++s->next_id);
    s->mt.requests[chat ? 0 : 1]++;
    j->refs++; /* the worker's */
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->queued++;
    pthread_cond_signal(&s->cv);
    if (j->stream) {
        j->refs++; /* the response's */
        pthread_mutex_unlock(&s->mu);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, j, stream_done);
        if (!r) {
            stream_done(j);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
        enum MHD_Result ret = MHD_queue_response(conn, 200, r);
        MHD_destroy_response(r);
        count_status(s, 200);
        return ret;
    }
    while (!j->done) {
        if (!j->cancel && client_gone(j->fd)) j->cancel = 1;
        if (j->cancel && !j->done) {
            /* nobody to answer; the worker drops or stops the job */
            pthread_mutex_unlock(&s->mu);
            return MHD_NO;
        }
        job_wait(j);
    }
    pthread_mutex_unlock(&s->mu);
    if (!j->out.len) return send_error(conn, s, 503, NULL, "server_stopping", "the server is stopping");
    return send_body(conn, s, j->status, "application/json", j->out.s, j->out.len);
}

static void metrics_text(server *s, fbuf *o) {
    pthread_mutex_lock(&s->mu);
    metrics mt = s->mt;
    int queued = s->queued, busy = s->busy;
    pthread_mutex_unlock(&s->mu);
    double hit = mt.stats.expert_requests ? (double)mt.stats.expert_hits / (double)mt.stats.expert_requests : 0;
#define GAUGE(name, help, fmt, v) fbuf_addf(o, "# HELP moestream_" name " " help "\n# TYPE moestream_" name " gauge\nmoestream_" name " " fmt "\n", v)
#define COUNTER(name, help, fmt, v) fbuf_addf(o, "# HELP moestream_" name " " help "\n# TYPE moestream_" name " counter\nmoestream_" name " " fmt "\n", v)
    fbuf_addf(o, "# HELP moestream_requests_total Completion requests accepted.\n# TYPE moestream_requests_total counter\n"
                 "moestream_requests_total{endpoint=\"chat\"} %llu\nmoestream_requests_total{endpoint=\"completions\"} %llu\n",
              (unsigned long long)mt.requests[0], (unsigned long long)mt.requests[1]);
    fbuf_adds(o, "# HELP moestream_responses_total HTTP responses by status class.\n# TYPE moestream_responses_total counter\n");
    for (int k = 2; k <= 5; k++) fbuf_addf(o, "moestream_responses_total{class=\"%dxx\"} %llu\n", k, (unsigned long long)mt.responses[k]);
    COUNTER("requests_cancelled_total", "Requests whose client left before they finished.", "%llu", (unsigned long long)mt.cancelled);
    COUNTER("prompt_tokens_total", "Prompt tokens of served requests.", "%llu", (unsigned long long)mt.prompt_tokens);
    COUNTER("prompt_tokens_reused_total", "Prompt tokens reused from the context (not evaluated again).", "%llu", (unsigned long long)mt.reused_tokens);
    COUNTER("completion_tokens_total", "Generated tokens.", "%llu", (unsigned long long)mt.completion_tokens);
    COUNTER("prefill_seconds_total", "Time spent evaluating prompts.", "%.6f", mt.t_prefill);
    COUNTER("decode_seconds_total", "Time spent generating.", "%.6f", mt.t_decode);
    GAUGE("decode_tokens_per_second", "Generation speed of the last request.", "%.3f", mt.last_tps);
    GAUGE("decode_tokens_per_second_avg", "Generated tokens over generation time, all requests.", "%.3f", mt.t_decode > 0 ? mt.completion_tokens / mt.t_decode : 0.0);
    GAUGE("requests_waiting", "Requests in the queue.", "%d", queued);
    GAUGE("requests_running", "Requests being generated (0 or 1).", "%d", busy);
    GAUGE("context_tokens", "Tokens held in the context.", "%d", mt.context_tokens);
    COUNTER("tokens_evaluated_total", "Tokens through the model (prompts and generation).", "%llu", (unsigned long long)mt.stats.tokens);
    COUNTER("expert_requests_total", "Routed experts asked for.", "%llu", (unsigned long long)mt.stats.expert_requests);
    COUNTER("expert_hits_total", "Routed experts found resident.", "%llu", (unsigned long long)mt.stats.expert_hits);
    GAUGE("expert_hit_rate", "Expert hits over requests.", "%.6f", hit);
    COUNTER("expert_bytes_read_total", "Expert bytes read from storage.", "%llu", (unsigned long long)mt.stats.bytes_read);
#undef GAUGE
#undef COUNTER
}

static int authorized(struct MHD_Connection *conn, server *s) {
    if (!s->api_key) return 1;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    return h && !strncmp(h, "Bearer ", 7) && !strcmp(h + 7, s->api_key);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    server *s = cls;
    conn_ctx *cc = *con_cls;
    int post = !strcmp(method, "POST");
    if (!cc) {
        cc = calloc(1, sizeof *cc);
        if (!cc) return MHD_NO;
        *con_cls = cc;
        if (post) {
            /* an oversized body is read and dropped so the client gets its 413; only an absurd
             * one is refused before it is read (the connection then closes) */
            const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
            if (cl && strtoull(cl, NULL, 10) > s->max_body && strtoull(cl, NULL, 10) > (256u << 20)) {
                cc->too_big = 2;
                return send_error(conn, s, 413, NULL, "request_too_large", "the request body is larger than %zu bytes", s->max_body);
            }
            return MHD_YES;
        }
    }
    if (cc->too_big == 2) {
        *upload_size = 0; /* answered already; the rest is dropped */
        return MHD_YES;
    }
    if (*upload_size) {
        if (cc->body.len + *upload_size > s->max_body) cc->too_big = 1;
        else fbuf_add(&cc->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (cc->started) return MHD_YES;
    cc->started = 1;
    if (!strcmp(method, "OPTIONS")) {
        struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
        enum MHD_Result ret = MHD_queue_response(conn, 204, r);
        MHD_destroy_response(r);
        return ret;
    }
    int get = !strcmp(method, "GET");
    const char *path = url;
    if (!strcmp(path, "/health")) {
        if (!get) return send_error(conn, s, 405, NULL, "method_not_allowed", "use GET /health");
        return send_json(conn, s, 200, json_pack("{s:s}", "status", "ok"));
    }
    if (!strcmp(path, "/metrics")) {
        if (!get) return send_error(conn, s, 405, NULL, "method_not_allowed", "use GET /metrics");
        fbuf o = {0};
        metrics_text(s, &o);
        enum MHD_Result r = send_body(conn, s, 200, "text/plain; version=0.0.4", o.s, o.len);
        fbuf_free(&o);
        return r;
    }
    int is_models = !strcmp(path, "/v1/models"), is_model = !strncmp(path, "/v1/models/", 11);
    int is_chat = !strcmp(path, "/v1/chat/completions"), is_compl = !strcmp(path, "/v1/completions");
    if (!is_models && !is_model && !is_chat && !is_compl)
        return send_error(conn, s, 404, NULL, "not_found", "unknown endpoint %s %s", method, path);
    if (!authorized(conn, s))
        return send_error(conn, s, 401, NULL, "invalid_api_key", "missing or wrong API key (send Authorization: Bearer KEY)");
    if (is_models || is_model) {
        if (!get) return send_error(conn, s, 405, NULL, "method_not_allowed", "use GET %s", path);
        json_t *mo = json_pack("{s:s, s:s, s:i, s:s}", "id", s->model_id, "object", "model", "created",
                               (json_int_t)s->started, "owned_by", "moestream");
        if (is_model) {
            if (strcmp(path + 11, s->model_id)) {
                json_decref(mo);
                return send_error(conn, s, 404, "model", "model_not_found", "The model '%s' does not exist", path + 11);
            }
            return send_json(conn, s, 200, mo);
        }
        return send_json(conn, s, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", mo));
    }
    if (!post) return send_error(conn, s, 405, NULL, "method_not_allowed", "use POST %s", path);
    if (cc->too_big)
        return send_error(conn, s, 413, NULL, "request_too_large", "the request body is larger than %zu bytes", s->max_body);
    bad b = {0};
    json_t *req = parse_body(cc->body.s, cc->body.len, &b);
    if (!req) return send_json(conn, s, b.status, error_json(b.status, NULL, b.code, b.msg));
    return serve_job(conn, s, cc, req, is_chat);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)conn, (void)toe;
    conn_ctx *cc = *con_cls;
    if (!cc) return;
    if (cc->j) {
        pthread_mutex_lock(&cc->j->srv->mu);
        if (!cc->j->done && !cc->j->stream) cc->j->cancel = 1;
        pthread_mutex_unlock(&cc->j->srv->mu);
        job_release(cc->j);
    }
    fbuf_free(&cc->body);
    free(cc);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls, (void)fmt, (void)ap; /* libmicrohttpd's own notes (closed connections, ...) are not errors here */
}

/* ---- the command ---- */

static void serve_usage(void) {
    fputs("usage: moestream serve -m MODEL [options]\n"
          "  --host ADDR               address to listen on (default 127.0.0.1)\n"
          "  --port N                  port (default 8080; 0 picks a free one)\n"
          "  --api-key KEY             require Authorization: Bearer KEY on /v1/*\n"
          "  --alias NAME              model id in the API (default: the file name without .gguf)\n"
          "  --max-body BYTES          largest request body (default 8M)\n"
          "  --max-tokens N            largest max_tokens a request may ask (default: the context size)\n"
          "  --max-queue N             requests that may wait (default 64; more get 503)\n"
          "  --chat-template NAME      chatml, qwen3 or qwen35 instead of the model's template\n"
          "  -c N, -b N, -t N          context size, batch size, threads\n"
          "  --temp T, --top-k N, --top-p P, --min-p P, --repeat-penalty R, --seed S: defaults for requests\n",
          stdout);
}

static uint64_t parse_bytes(const char *flag, const char *v) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    double mul = 1;
    if (*end == 'k' || *end == 'K') mul = 1024, end++;
    else if (*end == 'm' || *end == 'M') mul = 1024.0 * 1024, end++;
    else if (*end == 'g' || *end == 'G') mul = 1024.0 * 1024 * 1024, end++;
    if (errno || end == v || *end || x <= 0 || x * mul > 1e12) front_die("%s expects a size like 8M, got '%s'", flag, v);
    return (uint64_t)(x * mul);
}

int cmd_serve(int argc, char **argv) {
    static server srv; /* one per process: the signal wait below owns it until exit */
    server *s = &srv;
    front_opts_default(&s->o);
    const char *host = "127.0.0.1", *alias = NULL;
    int port = 8080;
    s->max_body = 8u << 20;
    s->max_queue = 64;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (front_parse_common(argc, argv, &i, &s->o)) continue;
        if (!strcmp(a, "--host")) host = front_arg(argc, argv, &i);
        else if (!strcmp(a, "--port")) port = (int)front_int(a, front_arg(argc, argv, &i), 0, 65535);
        else if (!strcmp(a, "--api-key")) s->api_key = front_arg(argc, argv, &i);
        else if (!strcmp(a, "--alias")) alias = front_arg(argc, argv, &i);
        else if (!strcmp(a, "--max-body")) s->max_body = (size_t)parse_bytes(a, front_arg(argc, argv, &i));
        else if (!strcmp(a, "--max-tokens")) s->max_tokens_limit = (int)front_int(a, front_arg(argc, argv, &i), 1, 1 << 30);
        else if (!strcmp(a, "--max-queue")) s->max_queue = (int)front_int(a, front_arg(argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            serve_usage();
            return 0;
        } else front_die("unknown option '%s' (see moestream serve --help)", a);
    }
    if (s->api_key && !*s->api_key) front_die("--api-key is empty");
    /* signals go to the main thread only (every thread started from here on inherits the mask),
     * which waits for them at the end */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO;
    if (strchr(host, ':')) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1) front_die("--host '%s' is not an IP address", host);
        flags |= MHD_USE_IPv6;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        if (!strcmp(host, "localhost")) host = "127.0.0.1";
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) front_die("--host '%s' is not an IP address", host);
    }

    s->m = front_load_model(&s->o);
    ms_error err;
    if (ms_chat_new(s->m, s->o.chat_template, &s->tmpl, &err)) front_die("%s", err.msg);
    s->c = front_new_context(s->m, &s->o);
    if (!s->max_tokens_limit) s->max_tokens_limit = ms_context_n_ctx(s->c);
    const char *base = strrchr(s->o.model, '/');
    snprintf(s->model_id, sizeof s->model_id, "%s", alias ? alias : base ? base + 1 : s->o.model);
    size_t idl = strlen(s->model_id);
    if (!alias && idl > 5 && !strcmp(s->model_id + idl - 5, ".gguf")) s->model_id[idl - 5] = 0;
    json_t *idv = jstr(s->model_id, strlen(s->model_id)); /* every response carries it: make it valid UTF-8 */
    snprintf(s->model_id, sizeof s->model_id, "%s", json_string_value(idv));
    json_decref(idv);
    s->started = (long)time(NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);

    pthread_t wt;
    if (pthread_create(&wt, NULL, worker, s)) front_die("cannot start the worker thread");
    s->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handle, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_CONNECTION_LIMIT, 256u,
                            MHD_OPTION_CONNECTION_TIMEOUT, 600u, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                            MHD_OPTION_END);
    if (!s->d) front_die("cannot listen on %s port %d: %s", host, port, errno ? strerror(errno) : "address in use?");
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    int bound = di ? di->port : port;
    fprintf(stderr, "moestream: serving '%s' on http://%s%s%s:%d (template %s, context %d, %s)\n", s->model_id,
            strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", bound, ms_chat_name(s->tmpl),
            ms_context_n_ctx(s->c), s->api_key ? "API key required" : "no API key");
    fflush(stderr);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "moestream: stopping (%s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    for (job *j = s->head; j; j = j->next) j->cancel = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(wt, NULL);
    MHD_stop_daemon(s->d);
    ms_chat_free(s->tmpl);
    ms_context_free(s->c);
    ms_model_free(s->m);
    return 0;
}
