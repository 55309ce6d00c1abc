/* moestream.h - the public API of the moestream engine.
 *
 * moestream runs Mixture-of-Experts language models stored as GGUF files, keeping the dense
 * weights resident and reading the routed experts on demand. Front ends (CLI, chat, server,
 * bench) use only this header. Handles are opaque; every _open/_new has a _free, and _free(NULL)
 * is a no-op. Functions that can fail return an ms_status and leave a one-line message that
 * ms_last_error-style accessors return; the library never prints and never exits.
 */
#ifndef MOESTREAM_H
#define MOESTREAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ms_status {
    MS_OK = 0,
    MS_ERR_IO = 1,          /* a file could not be opened or read */
    MS_ERR_FORMAT = 2,      /* the file is not valid GGUF, or is truncated or inconsistent */
    MS_ERR_UNSUPPORTED = 3, /* valid, but an architecture / tensor type / feature we lack */
    MS_ERR_NOMEM = 4,       /* an allocation failed */
    MS_ERR_ARG = 5,         /* bad argument from the caller */
    MS_ERR_CONTEXT = 6,     /* the context window is full */
    MS_ERR_BUDGET = 7,      /* the memory budget cannot hold what is required */
} ms_status;

/* A short name for a status ("I/O error", ...). Never NULL. */
const char *ms_status_name(ms_status s);

/* A status plus a readable one-line message (what was expected and what was found). */
typedef struct ms_error {
    ms_status status;
    char msg[512];
} ms_error;

typedef struct ms_model ms_model;     /* weights, tokenizer, expert store: shared by contexts */
typedef struct ms_context ms_context; /* one sequence: KV cache, recurrent state, scratch */
typedef struct ms_sampler ms_sampler;

/* ---- models ---- */

typedef struct ms_model_params {
    int n_expert_used;   /* 0: the model's top-k; otherwise replaces it (changes the output) */
    const char *io;      /* expert residency: "mmap", "pagecache", "direct" or "ram" (the whole
                          * model read into memory, huge pages where the kernel gives them, at
                          * load); NULL: the default (direct with a memory budget; else ram when
                          * the model fits in the memory available with room to spare and the
                          * kernel offers transparent huge pages; else mmap) */
    uint64_t mem_budget; /* bytes the process may use: dense weights + context + expert cache;
                          * 0: no limit. Needs io pagecache or direct. */
    const char *evict;   /* expert cache policy: "lru" or "lfu"; NULL: lfu */
    int io_threads;      /* reads in flight (0: 32) */
    int track_residency; /* mmap mode: count page-cache hits with mincore (for --stats) */
} ms_model_params;

void ms_model_params_default(ms_model_params *p);

/* Opens a GGUF file (the first part of a split model) and validates it. On success *out owns
 * the model (free with ms_model_free); on failure returns a status and fills err. */
ms_status ms_model_load(const char *path, const ms_model_params *p, ms_model **out, ms_error *err);
void ms_model_free(ms_model *m);

#define MS_N_TYPES 43

typedef struct ms_model_info {
    const char *arch;       /* "qwen35moe" */
    const char *name;       /* general.name or "" */
    int n_vocab, n_embd, n_layer, n_ctx_train;
    int n_head, n_head_kv, head_dim, n_rot;
    int n_layer_attn, n_layer_linear; /* full attention vs Gated DeltaNet layers */
    int n_expert, n_expert_used, n_expert_used_model, n_ff_exp, n_ff_shexp;
    int n_k_heads, n_v_heads, d_state, d_conv;
    float rope_base, norm_eps;
    uint64_t bytes_total, bytes_dense, bytes_experts, bytes_per_expert; /* per expert, one layer */
    uint64_t bytes_embd;    /* the token embedding (a row per token is read, not all of it) */
    int64_t n_tensors;
    int n_parts;
    uint64_t type_bytes[MS_N_TYPES];  /* tensor-type histogram */
    int64_t type_count[MS_N_TYPES];
} ms_model_info;

void ms_model_get_info(const ms_model *m, ms_model_info *out);
/* Name of a GGML tensor type number ("Q4_K"). */
const char *ms_type_name(int type);

/* Makes a SIGBUS (a memory-mapped model file truncated or unreadable while in use) print a
 * one-line error and exit(1) instead of crashing. For front ends; process-wide. */
void ms_install_sigbus_handler(void);

/* ---- tokens ---- */

int ms_n_vocab(const ms_model *m);
/* Tokenizes text. parse_special: match control tokens like <|im_start|> in the text. On success
 * *ids is allocated (release with ms_free_ids) and *n_ids set. */
ms_status ms_tokenize(const ms_model *m, const char *text, size_t len, int parse_special, int32_t **ids,
                      int *n_ids, ms_error *err);
void ms_free_ids(int32_t *ids);
/* Raw bytes of a token's text (control tokens give their text). Returns the byte count (may exceed
 * cap, in which case buf holds the first cap bytes), or -1 for an invalid id. */
int ms_token_bytes(const ms_model *m, int32_t id, char *buf, int cap);
/* 1 if the token ends generation (end of sequence / turn). */
int ms_token_is_eog(const ms_model *m, int32_t id);
/* The id of a token with exactly this text, or -1. */
int32_t ms_token_find(const ms_model *m, const char *text);

/* Streaming detokenizer: push ids one at a time and get back only whole UTF-8 characters; a
 * character split across tokens is held until it completes. render_special shows control tokens'
 * text. The returned text is NUL-terminated, owned by d, valid until the next call on d.
 * ms_detok_flush ends the stream (what is held comes out as U+FFFD) and resets d. */
typedef struct ms_detok ms_detok;
ms_detok *ms_detok_new(const ms_model *m, int render_special);
const char *ms_detok_push(ms_detok *d, int32_t id, size_t *len);
const char *ms_detok_flush(ms_detok *d, size_t *len);
void ms_detok_free(ms_detok *d);

/* ---- contexts ---- */

typedef struct ms_context_params {
    int n_ctx;         /* positions (default 4096) */
    int n_batch;       /* tokens per forward pass (default 512) */
    int n_threads;     /* 0: every online CPU */
    int lookahead;     /* 1: run each next layer's router early and prefetch its experts; 0: no;
                        * -1 (the default): on where experts are read into a cache (--io
                        * pagecache or direct), where it measured faster, off with mmap */
    int gpu;           /* 1: the CUDA backend (needs a CUDA build) */
    int gpu_device;    /* CUDA device index */
    uint64_t gpu_mem;  /* VRAM budget in bytes for the GPU backend (0: what is free) */
    float gpu_cpu_share; /* GPU decode: the share of the experts not in VRAM that the CPU computes
                          * from host memory instead of copying them; -1 (the default) tunes it
                          * while decoding, 0 copies every one */
} ms_context_params;

void ms_context_params_default(ms_context_params *p);
ms_status ms_context_new(ms_model *m, const ms_context_params *p, ms_context **out, ms_error *err);
void ms_context_free(ms_context *c);

/* Evaluates n tokens after those already in the context. Logits are kept for the last token,
 * or for every token when all_logits (then n <= n_batch). MS_ERR_CONTEXT if they do not fit.
 * After a failure part way (MS_ERR_IO, MS_ERR_NOMEM, ...) the context is at a position whose
 * state is whole: the tokens before it are evaluated, those after are not; a model with recurrent
 * layers may have gone back to an earlier checkpoint (or to 0) for that, so read
 * ms_context_pos() before going on (ms_chat_prefill does). */
ms_status ms_eval(ms_context *c, const int32_t *tokens, int n, int all_logits, ms_error *err);
/* Logits [n_vocab] of row i of the last ms_eval (i = -1: the last row), or NULL. */
const float *ms_logits(const ms_context *c, int i);
int ms_context_pos(const ms_context *c);
int ms_context_n_ctx(const ms_context *c);
/* Forgets the sequence (position 0). */
void ms_context_reset(ms_context *c);
/* "cpu" or "cuda". */
const char *ms_context_backend(const ms_context *c);

/* Prefix reuse (a chat's next turn, a server's next request). The ids evaluated so far are
 * ms_context_tokens()[0..pos). To continue from a shared prefix of length n, move back with
 * ms_context_rewind(c, ms_context_resume_point(c, n)) and evaluate the rest. Models with
 * recurrent layers (qwen3next, qwen35moe) can only return to positions saved with
 * ms_context_checkpoint (the last few are kept) or to 0; attention-only models to any position. */
const int32_t *ms_context_tokens(const ms_context *c);
ms_status ms_context_checkpoint(ms_context *c, ms_error *err);
int ms_context_resume_point(const ms_context *c, int n);
ms_status ms_context_rewind(ms_context *c, int pos, ms_error *err);

typedef struct ms_stats {
    uint64_t tokens;
    double t_attn, t_route, t_expert_wait, t_expert_compute, t_other; /* seconds */
    uint64_t expert_requests, expert_hits, bytes_read, reads;
    double read_seconds;            /* summed over reads (they overlap) */
    uint64_t prefetches, prefetch_used;
    uint64_t cache_slots, cache_bytes, bytes_dense, bytes_context;
    const char *io;                 /* residency mode in use */
    uint64_t gpu_requests, gpu_hits, gpu_bytes_in; /* GPU backend: VRAM expert cache lookups, hits, bytes copied in */
    uint64_t gpu_prefetches, gpu_prefetch_used;    /* GPU lookahead: experts copied ahead, and those then routed to */
    uint64_t gpu_cpu_experts;                      /* GPU backend: missed experts the CPU computed instead of copying */
} ms_stats;
void ms_context_stats(const ms_context *c, ms_stats *out);
/* Seconds spent in layer il so far: [0] attention and norms, [1] routing, [2] waiting for expert
 * bytes, [3] expert compute. Returns 0, or -1 when the backend does not keep them. */
int ms_context_layer_timing(const ms_context *c, int il, double out[4]);

/* The decode roofline of DESIGN.md over the tokens between two stats snapshots a and b:
 * seconds per token >= missed expert bytes / disk_bw + resident bytes touched / mem_bw, where
 * resident bytes are the dense weights (one embedding row) plus the experts that hit. */
typedef struct ms_roofline {
    double experts_needed, hit_rate;  /* per token; 0..1 */
    double missed_bytes, resident_bytes, read_bytes; /* per token */
    double seconds;                   /* the bound, per token */
} ms_roofline;
void ms_roofline_of(const ms_model *m, const ms_stats *a, const ms_stats *b, double tokens, double disk_bw,
                    double mem_bw, ms_roofline *out);

/* ---- synthetic models ---- */

typedef struct ms_synth_params {
    const char *preset;   /* ms_synth_presets() lists them */
    int n_layer;          /* 0: the preset's layer count */
    int type;             /* GGML type of the matrices, e.g. 12 (Q4_K): see ms_type_from_name */
    float skew;           /* Zipf exponent of expert popularity per layer; 0: uniform routing */
    uint64_t split_bytes; /* 0: one file; else parts PATH-0000i-of-0000N.gguf of at most this */
    uint64_t seed;
} ms_synth_params;

/* Writes a GGUF with a real model's shapes and random, zero-mean, valid weights (and a small
 * tokenizer) at disk speed. *bytes_out (may be NULL) gets the tensor bytes written. */
ms_status ms_synth(const ms_synth_params *p, const char *path, uint64_t *bytes_out, ms_error *err);
/* Tensor bytes the parameters would write (0 if invalid). */
uint64_t ms_synth_size(const ms_synth_params *p);
const char *ms_synth_presets(void);
/* GGML type number of a name ("Q4_K", case-insensitive), or -1. */
int ms_type_from_name(const char *name);

/* ---- sampling ---- */

#define MS_SEED_RANDOM UINT64_MAX

typedef struct ms_sampler_params {
    float temperature;    /* <= 0: greedy */
    int top_k;            /* <= 0: off */
    float top_p;          /* >= 1: off */
    float min_p;          /* <= 0: off */
    float repeat_penalty; /* 1: off */
    int repeat_last_n;
    uint64_t seed;        /* MS_SEED_RANDOM: from the clock */
} ms_sampler_params;

void ms_sampler_params_default(ms_sampler_params *p);
ms_sampler *ms_sampler_new(const ms_model *m, const ms_sampler_params *p);
void ms_sampler_free(ms_sampler *s);
int32_t ms_sample(ms_sampler *s, const float *logits);
void ms_sampler_accept(ms_sampler *s, int32_t token);
void ms_sampler_reset(ms_sampler *s);

/* ---- chat (chat.c, constrain.c) ----
 * Chat templates rendered in C for the families we recognize in tokenizer.chat_template (not a
 * Jinja engine): "chatml" (plain <|im_start|> turns; tools, when given, in the Qwen2.5/Qwen3
 * JSON form), "qwen3" (<think>, JSON <tool_call>s) and "qwen35" (<think>, XML <tool_call>s).
 * Also: splitting a generated reply into reasoning, content and tool calls, planning a tool call
 * the engine must make (OpenAI tool_choice), and constrained sampling of its values. */

typedef struct ms_chat ms_chat;

/* A tool call. In messages given to ms_chat_render the strings are the caller's; in an
 * ms_chat_reply they are owned by the reply. */
typedef struct ms_tool_call {
    char *id;        /* "call_...", may be NULL */
    char *name;      /* the function's name */
    char *arguments; /* JSON text of the arguments object */
} ms_tool_call;

typedef struct ms_chat_msg {
    const char *role;      /* "system", "user", "assistant" or "tool" */
    const char *content;   /* NULL: none */
    const char *reasoning; /* assistant: its reasoning (OpenAI-style reasoning_content), or NULL */
    const ms_tool_call *tool_calls; /* assistant: the calls it made */
    int n_tool_calls;
} ms_chat_msg;

typedef struct ms_chat_params {
    const char *tools;         /* JSON array of OpenAI tools ({"type":"function","function":
                                  {"name","description","parameters"}}), or NULL */
    int add_generation_prompt; /* end with the assistant's opening (default 1) */
    int thinking;              /* 1 (default): let the model reason; 0: close the reasoning block
                                  up front where the template can (qwen3, qwen35) */
} ms_chat_params;

void ms_chat_params_default(ms_chat_params *p);

/* Recognizes the model's tokenizer.chat_template, or takes the family named by name ("chatml",
 * "qwen3", "qwen35") when name is non-NULL. MS_ERR_UNSUPPORTED names a template we do not
 * render; MS_ERR_ARG an unknown name. On success *out is freed with ms_chat_free. */
ms_status ms_chat_new(const ms_model *m, const char *name, ms_chat **out, ms_error *err);
/* The same from template text (NULL or "": no template) without a model. */
ms_status ms_chat_new_from_template(const char *tmpl, const char *name, ms_chat **out, ms_error *err);
void ms_chat_free(ms_chat *c);
/* "chatml", "qwen3" or "qwen35". */
const char *ms_chat_name(const ms_chat *c);

/* Renders the messages as the model's template would. On success *text is a NUL-terminated
 * string (free with ms_chat_text_free) and *think_open (if non-NULL) tells whether the text ends
 * inside an open <think> block, so the reply starts with reasoning. MS_ERR_ARG for messages the
 * template refuses (a system message after the first, no user message for qwen35, tool-call
 * arguments that are not a JSON object where the template needs one, bad tools JSON). */
ms_status ms_chat_render(const ms_chat *c, const ms_chat_msg *msgs, int n_msgs, const ms_chat_params *p,
                         char **text, int *think_open, ms_error *err);
void ms_chat_text_free(char *s);

/* A generated reply split into its parts. */
typedef struct ms_chat_reply {
    char *content;   /* the answer without reasoning or tool calls ("" if none) */
    char *reasoning; /* the <think> block's text, or NULL */
    ms_tool_call *tool_calls;
    int n_tool_calls;
} ms_chat_reply;

/* Splits generated text (think_open as returned by ms_chat_render). tools: the tools offered
 * (they type the values of XML calls); NULL when none were, and then <tool_call> text stays in
 * content. A <tool_call> block that does not parse stays in content. Free with ms_chat_reply_free. */
ms_status ms_chat_parse(const ms_chat *c, const char *text, size_t len, int think_open, const char *tools,
                        ms_chat_reply *out, ms_error *err);
void ms_chat_reply_free(ms_chat_reply *r);

/* Streaming split of a reply while it is generated: pieces come out through emit as soon as
 * they are known to be reasoning, content or tool-call text (tags removed; text that may be
 * the start of a tag is held back). */
typedef enum ms_chat_part { MS_CHAT_CONTENT = 0, MS_CHAT_REASONING = 1, MS_CHAT_TOOL_CALL = 2 } ms_chat_part;
typedef void (*ms_chat_emit)(void *ud, ms_chat_part part, const char *text, size_t len);
typedef struct ms_chat_stream ms_chat_stream;
/* tools: whether <tool_call> blocks are tool calls (tools were offered) or text. NULL: no memory. */
ms_chat_stream *ms_chat_stream_new(int think_open, int tools);
void ms_chat_stream_push(ms_chat_stream *s, const char *text, size_t len, ms_chat_emit emit, void *ud);
/* Emits what is held back; the stream can then be freed. */
void ms_chat_stream_flush(ms_chat_stream *s, ms_chat_emit emit, void *ud);
/* The part that the text pushed so far ends in. */
ms_chat_part ms_chat_stream_part(const ms_chat_stream *s);
void ms_chat_stream_free(ms_chat_stream *s);

/* Constrained values: what the model may write at one place of a tool call. */
typedef enum ms_value_kind {
    MS_VALUE_JSON = 0, /* any JSON value */
    MS_VALUE_OBJECT,   /* a JSON object */
    MS_VALUE_ARRAY,    /* a JSON array */
    MS_VALUE_STRING,   /* a JSON string (quoted) */
    MS_VALUE_NUMBER,
    MS_VALUE_INTEGER,
    MS_VALUE_BOOLEAN,
    MS_VALUE_CHOICE,   /* exactly one of the given texts */
    MS_VALUE_LINE,     /* raw text on one line without '<' (XML parameter values) */
} ms_value_kind;

/* One step of a planned tool call: fixed text the engine writes, or a value the model writes. */
typedef struct ms_chat_step {
    const char *text;            /* non-NULL: append this text */
    ms_value_kind kind;          /* text == NULL: generate a value of this kind */
    const char *const *choices;  /* MS_VALUE_CHOICE: the allowed texts */
    int n_choices;
} ms_chat_step;

typedef struct ms_chat_plan ms_chat_plan;
/* Plans a tool call the model must make, in the template's format: the call's framing and the
 * required parameters' names are fixed text, the values are generated under constraints that
 * follow each parameter's JSON-schema type. name: the function (tool_choice naming one), or NULL
 * to let the model choose among tools (tool_choice "required"). Free with ms_chat_plan_free. */
ms_status ms_chat_plan_new(const ms_chat *c, const char *tools, const char *name, ms_chat_plan **out,
                           ms_error *err);
/* Next step. value: the text generated for the previous step when it was a value, else NULL.
 * Returns 1 with *step filled (valid until the next call), or 0 when the call is complete. */
int ms_chat_plan_next(ms_chat_plan *p, const char *value, ms_chat_step *step);
void ms_chat_plan_free(ms_chat_plan *p);

typedef struct ms_constraint ms_constraint;
/* A constraint for one value of the given kind (choices: for MS_VALUE_CHOICE). NULL: no memory. */
ms_constraint *ms_constraint_new(const ms_model *m, ms_value_kind kind, const char *const *choices,
                                 int n_choices);
void ms_constraint_free(ms_constraint *k);
/* Sets to -INFINITY the logits [n_vocab] of every token that cannot continue the value. Returns
 * how many tokens remain allowed (0: end the value with ms_constraint_closing). */
int ms_constraint_apply(ms_constraint *k, float *logits);
/* Feeds the sampled token. Returns 0: consumed, the value goes on; 1: consumed, the value is
 * complete; 2: not consumed - the token ends an open-ended value (a number, a line), so do not
 * evaluate it. */
int ms_constraint_accept(ms_constraint *k, int32_t token);
/* Text that completes the value from where it stands ("" if complete); owned by k. */
const char *ms_constraint_closing(ms_constraint *k);
/* The value's text so far; owned by k. */
const char *ms_constraint_text(const ms_constraint *k);

/* Prefix reuse for a conversation's next turn: makes c hold exactly ids[0..n) with the logits of
 * the last one, keeping the longest prefix it already holds (see ms_context_rewind) and
 * evaluating the rest. A recurrent-state checkpoint is saved at each position in ckpt[0..n_ckpt)
 * (ascending, e.g. where the history ends and where the prompt ends) so the next turn can resume
 * there. cancel (may be NULL) is polled between batches; when it returns non-zero the function
 * returns MS_OK early with ms_context_pos(c) < n. *n_reused (may be NULL) gets the number of
 * tokens kept. MS_ERR_CONTEXT when n does not fit. */
ms_status ms_chat_prefill(ms_context *c, const int32_t *ids, int n, const int *ckpt, int n_ckpt,
                          int (*cancel)(void *ud), void *ud, int *n_reused, ms_error *err);

#ifdef __cplusplus
}
#endif

#endif
