/* chat.c - chat templates, reply parsing and tool-call planning for the chat front ends.
 *
 * What it is: the template families we recognize in tokenizer.chat_template, rendered in C the way
 * their Jinja renders the supported cases (checked against the real templates in tests/test_chat.c):
 *   chatml  plain <|im_start|>ROLE\nTEXT<|im_end|>\n turns (the fixtures' template, Qwen2-style
 *           ones with a default system prompt). Tools, which such a template does not mention, are
 *           written as Qwen2.5/Qwen3 do (JSON <tool_call>s, <tool_response> in a user turn).
 *   qwen3   Qwen3 (MoE 30B-A3B/235B-A22B, 2507 Instruct/Thinking): <think> handling, tools as JSON
 *           signatures in the system prompt, JSON <tool_call>s, enable_thinking.
 *   qwen35  Qwen3.5 (and Qwen3-Next style templates with XML calls): everything trimmed, XML
 *           <function=...><parameter=...> calls, generation prompt that opens <think>.
 * Also: splitting generated text into reasoning / content / tool calls (whole or streaming),
 * planning a tool call the engine must make (tool_choice), and prefix reuse between turns.
 *
 * What it is not: a Jinja interpreter, an HTTP or terminal front end (server.c, chat_cli.c), or
 * the constrained sampler itself (constrain.c). It never prints.
 */
#include "chat.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"

/* ---- growable string ---- */

void sbuf_add(ms_sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = ms_realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    if (n) memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

void sbuf_adds(ms_sbuf *b, const char *s) { sbuf_add(b, s, strlen(s)); }

void sbuf_addf(ms_sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        sbuf_add(b, tmp, (size_t)n);
        return;
    }
    char *big = ms_malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sbuf_add(b, big, (size_t)n);
    ms_free(big);
}

void sbuf_free(ms_sbuf *b) {
    ms_free(b->s);
    memset(b, 0, sizeof *b);
}

/* ---- JSON as Python writes it (the templates' tojson) ---- */

static void py_float(ms_sbuf *b, double d) {
    if (isnan(d) || isinf(d)) {
        sbuf_adds(b, isnan(d) ? "NaN" : d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    /* repr: the shortest digits that read back to d, fixed notation for exponents -4..15 */
    char buf[48];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d) break;
    }
    const char *p = buf;
    int neg = *p == '-';
    if (neg) p++;
    char dig[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < 20) dig[nd++] = *p;
    int exp = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && dig[nd - 1] == '0') nd--;
    if (neg) sbuf_add(b, "-", 1);
    if (exp < -4 || exp >= 16) {
        sbuf_add(b, dig, 1);
        if (nd > 1) {
            sbuf_add(b, ".", 1);
            sbuf_add(b, dig + 1, (size_t)nd - 1);
        }
        sbuf_addf(b, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        sbuf_add(b, "0.", 2);
        for (int i = 0; i < -exp - 1; i++) sbuf_add(b, "0", 1);
        sbuf_add(b, dig, (size_t)nd);
    } else {
        for (int i = 0; i <= exp; i++) sbuf_add(b, i < nd ? &dig[i] : "0", 1);
        sbuf_add(b, ".", 1);
        if (nd > exp + 1) sbuf_add(b, dig + exp + 1, (size_t)(nd - exp - 1));
        else sbuf_add(b, "0", 1);
    }
}

static void py_string(ms_sbuf *b, const char *s, size_t n) {
    sbuf_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        switch (ch) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (ch < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", ch);
                esc = u;
            }
        }
        if (!esc) continue;
        sbuf_add(b, s + run, i - run);
        sbuf_adds(b, esc);
        run = i + 1;
    }
    sbuf_add(b, s + run, n - run);
    sbuf_add(b, "\"", 1);
}

void chat_json_py(ms_sbuf *b, const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        sbuf_add(b, "{", 1);
        const char *k;
        json_t *x;
        int first = 1;
        json_object_foreach((json_t *)v, k, x) {
            if (!first) sbuf_add(b, ", ", 2);
            first = 0;
            py_string(b, k, strlen(k));
            sbuf_add(b, ": ", 2);
            chat_json_py(b, x);
        }
        sbuf_add(b, "}", 1);
        break;
    }
    case JSON_ARRAY: {
        sbuf_add(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) sbuf_add(b, ", ", 2);
            chat_json_py(b, json_array_get(v, i));
        }
        sbuf_add(b, "]", 1);
        break;
    }
    case JSON_STRING: py_string(b, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: sbuf_addf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); break;
    case JSON_REAL: py_float(b, json_real_value(v)); break;
    case JSON_TRUE: sbuf_adds(b, "true"); break;
    case JSON_FALSE: sbuf_adds(b, "false"); break;
    default: sbuf_adds(b, "null"); break;
    }
}

void chat_json_str(ms_sbuf *b, const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_STRING: sbuf_add(b, json_string_value(v), json_string_length(v)); break;
    case JSON_TRUE: sbuf_adds(b, "True"); break;
    case JSON_FALSE: sbuf_adds(b, "False"); break;
    case JSON_NULL: sbuf_adds(b, "None"); break;
    default: chat_json_py(b, v); break;
    }
}

/* ---- text views and Python's str methods ---- */

typedef struct sv {
    const char *p;
    size_t n;
} sv;

static sv sv_of(const char *s) { return (sv){s ? s : "", s ? strlen(s) : 0}; }

static long sv_find(sv v, const char *needle) {
    size_t k = strlen(needle);
    if (k > v.n) return -1;
    for (size_t i = 0; i + k <= v.n; i++)
        if (v.p[i] == needle[0] && !memcmp(v.p + i, needle, k)) return (long)i;
    return -1;
}

static long sv_rfind(sv v, const char *needle) {
    size_t k = strlen(needle);
    if (k > v.n) return -1;
    for (size_t i = v.n - k + 1; i-- > 0;)
        if (v.p[i] == needle[0] && !memcmp(v.p + i, needle, k)) return (long)i;
    return -1;
}

static int sv_starts(sv v, const char *s) {
    size_t k = strlen(s);
    return v.n >= k && !memcmp(v.p, s, k);
}

static int sv_ends(sv v, const char *s) {
    size_t k = strlen(s);
    return v.n >= k && !memcmp(v.p + v.n - k, s, k);
}

static sv sv_lstrip_nl(sv v) {
    while (v.n && v.p[0] == '\n') v.p++, v.n--;
    return v;
}

static sv sv_rstrip_nl(sv v) {
    while (v.n && v.p[v.n - 1] == '\n') v.n--;
    return v;
}

/* Length of the Python whitespace character at s[0..n), or 0 (str.isspace, UTF-8). */
static int py_space_at(const unsigned char *s, size_t n) {
    if (!n) return 0;
    if (s[0] == ' ' || (s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x1f)) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3 && s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80) return 3; /* U+1680 */
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x80 &&
        (s[2] <= 0x8a || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf)) return 3; /* U+2000-200A,2028,2029,202F */
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) return 3;  /* U+205F */
    if (n >= 3 && s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) return 3;  /* U+3000 */
    return 0;
}

/* Python's str.strip() (Jinja's trim). */
static sv sv_strip(sv v) {
    int k;
    while ((k = py_space_at((const unsigned char *)v.p, v.n))) v.p += k, v.n -= (size_t)k;
    for (;;) {
        size_t n = v.n;
        if (n && py_space_at((const unsigned char *)v.p + n - 1, 1)) { v.n--; continue; }
        if (n >= 2 && py_space_at((const unsigned char *)v.p + n - 2, 2) == 2) { v.n -= 2; continue; }
        if (n >= 3 && py_space_at((const unsigned char *)v.p + n - 3, 3) == 3) { v.n -= 3; continue; }
        break;
    }
    return v;
}

static void add_sv(ms_sbuf *b, sv v) { sbuf_add(b, v.p, v.n); }

static char *sv_dup(sv v) {
    char *s = ms_malloc(v.n + 1);
    if (!s) return NULL;
    memcpy(s, v.p, v.n);
    s[v.n] = 0;
    return s;
}

/* ---- templates ---- */

typedef enum chat_family { FAM_CHATML, FAM_QWEN3, FAM_QWEN35 } chat_family;

struct ms_chat {
    chat_family fam;
    int thinking_switch; /* the template honours enable_thinking=false */
    int opens_think;     /* its generation prompt opens <think> (qwen35, Qwen3 Thinking-2507) */
    char *default_system; /* chatml: the system prompt used when none is given, or NULL */
};

static const char *family_name[] = {"chatml", "qwen3", "qwen35"};

void ms_chat_params_default(ms_chat_params *p) {
    p->tools = NULL;
    p->add_generation_prompt = 1;
    p->thinking = 1;
}

const char *ms_chat_name(const ms_chat *c) { return family_name[c->fam]; }

void ms_chat_free(ms_chat *c) {
    if (!c) return;
    ms_free(c->default_system);
    ms_free(c);
}

static int has(const char *t, const char *s) { return strstr(t, s) != NULL; }

/* A known non-ChatML family named by a marker it writes, for the error message. */
static const char *foreign_name(const char *t) {
    static const struct { const char *marker, *name; } known[] = {
        {"<|start_header_id|>", "llama3"},
        {"<|channel|>", "gpt-oss (harmony)"},
        {"[INST]", "mistral/llama2 ([INST])"},
        {"\xef\xbd\x9c" "Assistant" "\xef\xbd\x9c", "deepseek"},
        {"[gMASK]", "glm"},
        {"<start_of_turn>", "gemma"},
        {"<|turn>", "gemma4"},
        {"<|assistant|>", "phi/zephyr (<|assistant|>)"},
        {"<|START_OF_TURN_TOKEN|>", "command-r"},
        {"<|im_assistant|>", "kimi"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (has(t, known[i].marker)) return known[i].name;
    return NULL;
}

/* The literal default system prompt of a Qwen2-style ChatML template ("<|im_start|>system\nYou
 * are ...<|im_end|>" written out in the template text), or NULL. */
static char *chatml_default_system(const char *t) {
    const char *pats[] = {"<|im_start|>system\\n", "<|im_start|>system\n"};
    for (int k = 0; k < 2; k++)
        for (const char *p = strstr(t, pats[k]); p; p = strstr(p, pats[k])) {
            p += strlen(pats[k]);
            const char *end = strstr(p, "<|im_end|>");
            if (!end || end == p) continue;
            int literal = 1;
            for (const char *q = p; q < end; q++)
                if (*q == '{' || *q == '}' || *q == '\'' || *q == '"' || *q == '+' || *q == '\\' || *q == '\n') literal = 0;
            if (literal) return sv_dup((sv){p, (size_t)(end - p)});
        }
    return NULL;
}

static ms_status chat_make(chat_family fam, const char *tmpl, ms_chat **out, ms_err *e) {
    ms_chat *c = ms_calloc(1, sizeof *c);
    if (!c) return ms_fail(e, MS_ERR_NOMEM, "out of memory");
    c->fam = fam;
    const char *t = tmpl ? tmpl : "";
    if (fam == FAM_QWEN35) {
        c->thinking_switch = 1;
        c->opens_think = 1;
    } else if (fam == FAM_QWEN3) {
        /* a chosen family (no template text) gets the original Qwen3 behaviour */
        c->thinking_switch = !*t || has(t, "enable_thinking");
        c->opens_think = has(t, "assistant\\n<think>\\n'") || has(t, "assistant\n<think>\n'");
    } else if (*t) {
        c->default_system = chatml_default_system(t);
    }
    *out = c;
    return MS_OK;
}

ms_status ms_chat_new_from_template(const char *tmpl, const char *name, ms_chat **out, ms_err *e) {
    *out = NULL;
    if (name) {
        for (int f = 0; f < 3; f++)
            if (!strcmp(name, family_name[f])) {
                /* keep what the model's own template says when it is of the chosen family */
                ms_chat *own = NULL;
                if (tmpl && *tmpl && ms_chat_new_from_template(tmpl, NULL, &own, NULL) == MS_OK &&
                    own->fam == (chat_family)f) {
                    *out = own;
                    return MS_OK;
                }
                ms_chat_free(own);
                return chat_make((chat_family)f, NULL, out, e);
            }
        return ms_fail(e, MS_ERR_ARG, "unknown chat template '%s' (choose chatml, qwen3 or qwen35)", name);
    }
    if (!tmpl || !*tmpl)
        return ms_fail(e, MS_ERR_UNSUPPORTED,
                       "the model has no chat template (tokenizer.chat_template); choose one with --chat-template "
                       "chatml|qwen3|qwen35");
    const char *t = tmpl;
    if (!has(t, "<|im_start|>")) {
        const char *f = foreign_name(t);
        if (f)
            return ms_fail(e, MS_ERR_UNSUPPORTED,
                           "chat template '%s' is not supported (supported: chatml, qwen3, qwen35); choose one with "
                           "--chat-template NAME",
                           f);
        char head[48];
        size_t k = 0;
        for (const char *p = t; *p && k < 40; p++) head[k++] = (*p == '\n' || *p == '\r') ? ' ' : *p;
        head[k] = 0;
        return ms_fail(e, MS_ERR_UNSUPPORTED,
                       "chat template not recognized (it begins \"%s\"); supported: chatml, qwen3, qwen35; choose "
                       "one with --chat-template NAME",
                       head);
    }
    if (has(t, "<function=") || has(t, "<parameter=")) {
        if (has(t, "<think>")) return chat_make(FAM_QWEN35, t, out, e);
        return ms_fail(e, MS_ERR_UNSUPPORTED,
                       "chat template 'qwen3-coder' (XML tool calls without <think>) is not supported (supported: "
                       "chatml, qwen3, qwen35); choose one with --chat-template NAME");
    }
    if (has(t, "<think>")) return chat_make(FAM_QWEN3, t, out, e);
    return chat_make(FAM_CHATML, t, out, e);
}

ms_status ms_chat_new(const ms_model *m, const char *name, ms_chat **out, ms_err *e) {
    *out = NULL;
    char *tmpl = gguf_get_str(m->gguf, "tokenizer.chat_template");
    ms_status st;
    if (!tmpl && !name && tokenizer_find(m->tok, "<|im_start|>") >= 0) st = chat_make(FAM_CHATML, NULL, out, e);
    else st = ms_chat_new_from_template(tmpl, name, out, e);
    ms_free(tmpl);
    if (st == MS_OK && tokenizer_find(m->tok, "<|im_start|>") < 0) {
        ms_chat_free(*out);
        *out = NULL;
        return ms_fail(e, MS_ERR_UNSUPPORTED,
                       "chat template '%s' needs the <|im_start|> token, which this model's vocabulary lacks",
                       name ? name : "chatml");
    }
    return st;
}

void ms_chat_text_free(char *s) { ms_free(s); }

/* Tools: a JSON array of objects, or NULL / "" / "[]" for none. */
static ms_status parse_tools(const char *tools, json_t **out, ms_err *e) {
    *out = NULL;
    if (!tools || !*tools) return MS_OK;
    json_error_t je;
    json_t *t = json_loads(tools, 0, &je);
    if (!t) return ms_fail(e, MS_ERR_ARG, "tools: invalid JSON: %s", je.text);
    if (!json_is_array(t)) {
        json_decref(t);
        return ms_fail(e, MS_ERR_ARG, "tools must be a JSON array");
    }
    for (size_t i = 0; i < json_array_size(t); i++)
        if (!json_is_object(json_array_get(t, i))) {
            json_decref(t);
            return ms_fail(e, MS_ERR_ARG, "tools[%zu] must be an object", i);
        }
    if (!json_array_size(t)) {
        json_decref(t);
        return MS_OK;
    }
    *out = t;
    return MS_OK;
}

static int role_is(const ms_chat_msg *m, const char *r) { return m->role && !strcmp(m->role, r); }

static ms_status check_roles(const ms_chat_msg *m, int n, ms_err *e) {
    for (int i = 0; i < n; i++)
        if (!role_is(&m[i], "system") && !role_is(&m[i], "user") && !role_is(&m[i], "assistant") &&
            !role_is(&m[i], "tool"))
            return ms_fail(e, MS_ERR_ARG, "message %d has role '%s' (expected system, user, assistant or tool)", i,
                           m[i].role ? m[i].role : "(none)");
    return MS_OK;
}

/* The Qwen3 reasoning split of an assistant message: reasoning_content if given, else the
 * text before </think> (after <think>) and the content after the last </think>. */
static void split_reasoning(const ms_chat_msg *m, sv content_in, sv *content, sv *reasoning) {
    *content = content_in;
    *reasoning = (sv){"", 0};
    if (m->reasoning) {
        *reasoning = sv_of(m->reasoning);
        return;
    }
    long first = sv_find(content_in, "</think>");
    if (first < 0) return;
    long last = sv_rfind(content_in, "</think>");
    *content = sv_lstrip_nl((sv){content_in.p + last + 8, content_in.n - (size_t)last - 8});
    sv before = sv_rstrip_nl((sv){content_in.p, (size_t)first});
    long open = sv_rfind(before, "<think>");
    if (open >= 0) before = (sv){before.p + open + 7, before.n - (size_t)open - 7};
    *reasoning = sv_lstrip_nl(before);
}

static const char QWEN3_TOOLS_HEAD[] =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>";
static const char QWEN3_TOOLS_TAIL[] =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n";

/* chatml and qwen3 */
static ms_status render_qwen3(const ms_chat *c, const ms_chat_msg *m, int n, json_t *tools, const ms_chat_params *p,
                              ms_sbuf *b, int *think_open, ms_err *e) {
    int think = c->fam == FAM_QWEN3;
    int first_sys = n > 0 && role_is(&m[0], "system");
    if (tools) {
        sbuf_adds(b, "<|im_start|>system\n");
        if (first_sys) {
            sbuf_adds(b, m[0].content ? m[0].content : "");
            sbuf_adds(b, "\n\n");
        } else if (c->default_system) {
            sbuf_adds(b, c->default_system);
            sbuf_adds(b, "\n\n");
        }
        sbuf_adds(b, QWEN3_TOOLS_HEAD);
        for (size_t i = 0; i < json_array_size(tools); i++) {
            sbuf_adds(b, "\n");
            chat_json_py(b, json_array_get(tools, i));
        }
        sbuf_adds(b, QWEN3_TOOLS_TAIL);
    } else if (first_sys) {
        sbuf_adds(b, "<|im_start|>system\n");
        sbuf_adds(b, m[0].content ? m[0].content : "");
        sbuf_adds(b, "<|im_end|>\n");
    } else if (c->default_system) {
        sbuf_adds(b, "<|im_start|>system\n");
        sbuf_adds(b, c->default_system);
        sbuf_adds(b, "<|im_end|>\n");
    }
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--) {
        sv ct = sv_of(m[i].content);
        if (role_is(&m[i], "user") && !(sv_starts(ct, "<tool_response>") && sv_ends(ct, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        const ms_chat_msg *x = &m[i];
        sv ct = sv_of(x->content);
        if (role_is(x, "user") || (role_is(x, "system") && i > 0)) {
            sbuf_addf(b, "<|im_start|>%s\n", x->role);
            add_sv(b, ct);
            sbuf_adds(b, "<|im_end|>\n");
        } else if (role_is(x, "assistant")) {
            sv content = ct, reasoning = {"", 0};
            if (think) split_reasoning(x, ct, &content, &reasoning);
            if (think && i > last_query && (i == n - 1 || reasoning.n)) {
                sbuf_adds(b, "<|im_start|>assistant\n<think>\n");
                add_sv(b, sv_rstrip_nl(sv_lstrip_nl(reasoning)));
                sbuf_adds(b, "\n</think>\n\n");
                add_sv(b, sv_lstrip_nl(content));
            } else {
                sbuf_adds(b, "<|im_start|>assistant\n");
                add_sv(b, content);
            }
            for (int k = 0; k < x->n_tool_calls; k++) {
                const ms_tool_call *tc = &x->tool_calls[k];
                if (k > 0 || content.n) sbuf_adds(b, "\n");
                sbuf_adds(b, "<tool_call>\n{\"name\": \"");
                sbuf_adds(b, tc->name ? tc->name : "");
                sbuf_adds(b, "\", \"arguments\": ");
                sbuf_adds(b, tc->arguments ? tc->arguments : "{}");
                sbuf_adds(b, "}\n</tool_call>");
            }
            sbuf_adds(b, "<|im_end|>\n");
        } else if (role_is(x, "tool")) {
            if (i == 0 || !role_is(&m[i - 1], "tool")) sbuf_adds(b, "<|im_start|>user");
            sbuf_adds(b, "\n<tool_response>\n");
            add_sv(b, ct);
            sbuf_adds(b, "\n</tool_response>");
            if (i == n - 1 || !role_is(&m[i + 1], "tool")) sbuf_adds(b, "<|im_end|>\n");
        }
    }
    *think_open = 0;
    if (p->add_generation_prompt) {
        sbuf_adds(b, "<|im_start|>assistant\n");
        if (think && c->opens_think) {
            sbuf_adds(b, "<think>\n");
            *think_open = 1;
        } else if (think && c->thinking_switch && !p->thinking) {
            sbuf_adds(b, "<think>\n\n</think>\n\n");
        }
    }
    (void)e;
    return MS_OK;
}

static const char QWEN35_TOOLS_HEAD[] = "# Tools\n\nYou have access to the following functions:\n\n<tools>";
static const char QWEN35_TOOLS_TAIL[] =
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified "
    "format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n- You may provide optional reasoning for your function call in "
    "natural language BEFORE the function call, but NOT after\n- If there is no function call available, answer "
    "the question like normal with your current knowledge and do not tell the user about function calls\n"
    "</IMPORTANT>";

static ms_status render_qwen35(const ms_chat *c, const ms_chat_msg *m, int n, json_t *tools, const ms_chat_params *p,
                               ms_sbuf *b, int *think_open, ms_err *e) {
    (void)c;
    if (n == 0) return ms_fail(e, MS_ERR_ARG, "No messages provided.");
    int first_sys = role_is(&m[0], "system");
    if (tools) {
        sbuf_adds(b, "<|im_start|>system\n");
        sbuf_adds(b, QWEN35_TOOLS_HEAD);
        for (size_t i = 0; i < json_array_size(tools); i++) {
            sbuf_adds(b, "\n");
            chat_json_py(b, json_array_get(tools, i));
        }
        sbuf_adds(b, QWEN35_TOOLS_TAIL);
        if (first_sys) {
            sv s = sv_strip(sv_of(m[0].content));
            if (s.n) {
                sbuf_adds(b, "\n\n");
                add_sv(b, s);
            }
        }
        sbuf_adds(b, "<|im_end|>\n");
    } else if (first_sys) {
        sbuf_adds(b, "<|im_start|>system\n");
        add_sv(b, sv_strip(sv_of(m[0].content)));
        sbuf_adds(b, "<|im_end|>\n");
    }
    int last_query = -1;
    for (int i = n - 1; i >= 0; i--) {
        if (!role_is(&m[i], "user")) continue;
        sv ct = sv_strip(sv_of(m[i].content));
        if (!(sv_starts(ct, "<tool_response>") && sv_ends(ct, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    if (last_query < 0) return ms_fail(e, MS_ERR_ARG, "No user query found in messages.");
    for (int i = 0; i < n; i++) {
        const ms_chat_msg *x = &m[i];
        sv content = sv_strip(sv_of(x->content));
        if (role_is(x, "system")) {
            if (i > 0) return ms_fail(e, MS_ERR_ARG, "System message must be at the beginning.");
        } else if (role_is(x, "user")) {
            sbuf_adds(b, "<|im_start|>user\n");
            add_sv(b, content);
            sbuf_adds(b, "<|im_end|>\n");
        } else if (role_is(x, "assistant")) {
            sv reasoning = {"", 0};
            if (x->reasoning) reasoning = sv_of(x->reasoning);
            else if (sv_find(content, "</think>") >= 0) {
                sv rest;
                split_reasoning(x, content, &rest, &reasoning);
                content = rest;
            }
            reasoning = sv_strip(reasoning);
            if (i > last_query) {
                sbuf_adds(b, "<|im_start|>assistant\n<think>\n");
                add_sv(b, reasoning);
                sbuf_adds(b, "\n</think>\n\n");
                add_sv(b, content);
            } else {
                sbuf_adds(b, "<|im_start|>assistant\n");
                add_sv(b, content);
            }
            for (int k = 0; k < x->n_tool_calls; k++) {
                const ms_tool_call *tc = &x->tool_calls[k];
                const char *name = tc->name ? tc->name : "";
                if (k == 0) sbuf_adds(b, sv_strip(content).n ? "\n\n<tool_call>\n<function=" : "<tool_call>\n<function=");
                else sbuf_adds(b, "\n<tool_call>\n<function=");
                sbuf_adds(b, name);
                sbuf_adds(b, ">\n");
                if (tc->arguments && *tc->arguments) {
                    json_error_t je;
                    json_t *args = json_loads(tc->arguments, JSON_DECODE_ANY, &je);
                    if (!args || !json_is_object(args)) {
                        json_decref(args);
                        return ms_fail(e, MS_ERR_ARG, "the arguments of tool call '%s' are not a JSON object", name);
                    }
                    const char *key;
                    json_t *v;
                    json_object_foreach(args, key, v) {
                        sbuf_addf(b, "<parameter=%s>\n", key);
                        chat_json_str(b, v);
                        sbuf_adds(b, "\n</parameter>\n");
                    }
                    json_decref(args);
                }
                sbuf_adds(b, "</function>\n</tool_call>");
            }
            sbuf_adds(b, "<|im_end|>\n");
        } else if (role_is(x, "tool")) {
            if (i > 0 && !role_is(&m[i - 1], "tool")) sbuf_adds(b, "<|im_start|>user");
            sbuf_adds(b, "\n<tool_response>\n");
            add_sv(b, content);
            sbuf_adds(b, "\n</tool_response>");
            if (i == n - 1 || !role_is(&m[i + 1], "tool")) sbuf_adds(b, "<|im_end|>\n");
        }
    }
    *think_open = 0;
    if (p->add_generation_prompt) {
        sbuf_adds(b, "<|im_start|>assistant\n");
        if (!p->thinking) sbuf_adds(b, "<think>\n\n</think>\n\n");
        else {
            sbuf_adds(b, "<think>\n");
            *think_open = 1;
        }
    }
    return MS_OK;
}

ms_status ms_chat_render(const ms_chat *c, const ms_chat_msg *msgs, int n, const ms_chat_params *p, char **text,
                         int *think_open, ms_err *e) {
    ms_chat_params def;
    if (!p) ms_chat_params_default(&def), p = &def;
    *text = NULL;
    if (n < 0 || (n > 0 && !msgs)) return ms_fail(e, MS_ERR_ARG, "no messages");
    ms_status st = check_roles(msgs, n, e);
    if (st) return st;
    json_t *tools;
    if ((st = parse_tools(p->tools, &tools, e))) return st;
    ms_sbuf b = {0};
    int open = 0;
    sbuf_add(&b, "", 0);
    if (c->fam == FAM_QWEN35) st = render_qwen35(c, msgs, n, tools, p, &b, &open, e);
    else st = render_qwen3(c, msgs, n, tools, p, &b, &open, e);
    json_decref(tools);
    if (st == MS_OK && b.oom) st = ms_fail(e, MS_ERR_NOMEM, "out of memory rendering the chat");
    if (st) {
        sbuf_free(&b);
        return st;
    }
    *text = b.s;
    if (think_open) *think_open = open;
    return MS_OK;
}

/* ---- replies ---- */

void ms_chat_reply_free(ms_chat_reply *r) {
    if (!r) return;
    ms_free(r->content);
    ms_free(r->reasoning);
    for (int i = 0; i < r->n_tool_calls; i++) {
        ms_free(r->tool_calls[i].id);
        ms_free(r->tool_calls[i].name);
        ms_free(r->tool_calls[i].arguments);
    }
    ms_free(r->tool_calls);
    memset(r, 0, sizeof *r);
}

/* The function object of the tool named name in a tools array, or NULL. */
static json_t *find_function(json_t *tools, const char *name) {
    for (size_t i = 0; i < json_array_size(tools); i++) {
        json_t *t = json_array_get(tools, i);
        json_t *f = json_object_get(t, "function");
        if (!json_is_object(f)) f = t;
        const char *fn = json_string_value(json_object_get(f, "name"));
        if (fn && !strcmp(fn, name)) return f;
    }
    return NULL;
}

/* The JSON-schema type name of a parameter ("string", ...), or NULL. */
static const char *param_type(json_t *fn, const char *param) {
    json_t *props = json_object_get(json_object_get(fn, "parameters"), "properties");
    json_t *ty = json_object_get(json_object_get(props, param), "type");
    if (json_is_string(ty)) return json_string_value(ty);
    for (size_t i = 0; i < json_array_size(ty); i++) { /* ["integer", "null"] */
        const char *s = json_string_value(json_array_get(ty, i));
        if (s && strcmp(s, "null")) return s;
    }
    return NULL;
}

/* A parameter value of an XML call as JSON, by its schema type. */
static json_t *xml_value(sv v, const char *type) {
    char *s = sv_dup(v);
    if (!s) return NULL;
    json_t *out = NULL;
    if (type && strcmp(type, "string")) {
        if (!strcmp(type, "boolean") && (!strcmp(s, "True") || !strcmp(s, "False")))
            out = s[0] == 'T' ? json_true() : json_false();
        else if (!strcmp(s, "None") && strcmp(type, "string")) out = json_null();
        else out = json_loads(s, JSON_DECODE_ANY, NULL);
        if (out && !strcmp(type, "integer") && !json_is_integer(out)) json_decref(out), out = NULL;
        if (out && !strcmp(type, "number") && !json_is_number(out)) json_decref(out), out = NULL;
        if (out && !strcmp(type, "boolean") && !json_is_boolean(out)) json_decref(out), out = NULL;
        if (out && !strcmp(type, "object") && !json_is_object(out)) json_decref(out), out = NULL;
        if (out && !strcmp(type, "array") && !json_is_array(out)) json_decref(out), out = NULL;
    }
    if (!out) out = json_stringn(s, v.n);
    ms_free(s);
    return out;
}

/* Parses one <tool_call> body (tags removed): JSON {"name", "arguments"} or XML <function=...>. */
static int parse_call(sv body, json_t *tools, ms_tool_call *tc) {
    body = sv_strip(body);
    ms_sbuf args = {0};
    char *name = NULL;
    if (sv_starts(body, "<function=")) {
        sv r = {body.p + 10, body.n - 10};
        long gt = sv_find(r, ">");
        if (gt <= 0) return 0;
        name = sv_dup((sv){r.p, (size_t)gt});
        r = (sv){r.p + gt + 1, r.n - (size_t)gt - 1};
        long fend = sv_rfind(r, "</function>");
        if (fend < 0 || !name) {
            ms_free(name);
            return 0;
        }
        r.n = (size_t)fend;
        json_t *fn = find_function(tools, name);
        json_t *obj = json_object();
        for (;;) {
            long ps = sv_find(r, "<parameter=");
            if (ps < 0) break;
            r = (sv){r.p + ps + 11, r.n - (size_t)ps - 11};
            long pg = sv_find(r, ">");
            if (pg <= 0) break;
            char *key = sv_dup((sv){r.p, (size_t)pg});
            r = (sv){r.p + pg + 1, r.n - (size_t)pg - 1};
            long pe = sv_find(r, "</parameter>");
            sv val = pe >= 0 ? (sv){r.p, (size_t)pe} : r;
            /* the template writes "\n" + value + "\n" */
            if (val.n && val.p[0] == '\n') val.p++, val.n--;
            if (val.n && val.p[val.n - 1] == '\n') val.n--;
            if (key) json_object_set_new(obj, key, xml_value(val, param_type(fn, key)));
            ms_free(key);
            if (pe < 0) break;
            r = (sv){r.p + pe + 12, r.n - (size_t)pe - 12};
        }
        chat_json_py(&args, obj);
        json_decref(obj);
    } else {
        char *s = sv_dup(body);
        json_t *j = s ? json_loads(s, 0, NULL) : NULL;
        ms_free(s);
        const char *nm = json_string_value(json_object_get(j, "name"));
        json_t *a = json_object_get(j, "arguments");
        if (!nm || (a && !json_is_object(a) && !json_is_string(a))) {
            json_decref(j);
            return 0;
        }
        name = ms_strdup(nm);
        if (!a) sbuf_adds(&args, "{}");
        else if (json_is_string(a)) sbuf_adds(&args, json_string_value(a));
        else chat_json_py(&args, a);
        json_decref(j);
    }
    if (!name || args.oom || !args.s) {
        ms_free(name);
        sbuf_free(&args);
        return 0;
    }
    tc->name = name;
    tc->arguments = args.s;
    return 1;
}

ms_status ms_chat_parse(const ms_chat *c, const char *text, size_t len, int think_open, const char *tools_json,
                        ms_chat_reply *out, ms_err *e) {
    (void)c;
    memset(out, 0, sizeof *out);
    sv t = {text ? text : "", text ? len : 0};
    sv reasoning = {NULL, 0};
    if (think_open) {
        long end = sv_find(t, "</think>");
        if (end < 0) reasoning = t, t = (sv){t.p + t.n, 0};
        else {
            reasoning = (sv){t.p, (size_t)end};
            t = (sv){t.p + end + 8, t.n - (size_t)end - 8};
        }
    } else {
        sv s = sv_strip(t);
        long end;
        if (sv_starts(s, "<think>") && (end = sv_find(s, "</think>")) >= 0) {
            reasoning = (sv){s.p + 7, (size_t)end - 7};
            t = (sv){s.p + end + 8, s.n - (size_t)end - 8};
        }
    }
    json_t *tools = NULL;
    if (tools_json && *tools_json) tools = json_loads(tools_json, 0, NULL);
    ms_sbuf content = {0};
    sbuf_add(&content, "", 0);
    int cap = 0;
    while (tools_json) {
        long open = sv_find(t, "<tool_call>");
        if (open < 0) break;
        sv after = {t.p + open + 11, t.n - (size_t)open - 11};
        long close = sv_find(after, "</tool_call>");
        sv body = close >= 0 ? (sv){after.p, (size_t)close} : after;
        ms_tool_call tc = {0};
        if (close < 0 || !parse_call(body, tools, &tc)) break; /* the rest stays content */
        add_sv(&content, (sv){t.p, (size_t)open});
        if (out->n_tool_calls == cap) {
            cap = cap ? cap * 2 : 4;
            ms_tool_call *nc = ms_realloc(out->tool_calls, sizeof *nc * (size_t)cap);
            if (!nc) {
                ms_free(tc.name);
                ms_free(tc.arguments);
                content.oom = 1;
                break;
            }
            out->tool_calls = nc;
        }
        /* a stable id: the call's position and a hash of its text */
        uint32_t h = 2166136261u;
        for (size_t i = 0; i < body.n; i++) h = (h ^ (unsigned char)body.p[i]) * 16777619u;
        char id[40];
        snprintf(id, sizeof id, "call_%08x%04x", h, out->n_tool_calls);
        tc.id = ms_strdup(id);
        out->tool_calls[out->n_tool_calls++] = tc;
        t = (sv){after.p + close + 12, after.n - (size_t)close - 12};
    }
    add_sv(&content, t);
    json_decref(tools);
    sv cs = sv_of(content.s);
    cs = out->n_tool_calls ? sv_strip(cs) : sv_rstrip_nl(sv_lstrip_nl(cs));
    out->content = sv_dup(cs);
    sbuf_free(&content);
    if (reasoning.p) out->reasoning = sv_dup(sv_strip(reasoning));
    if (!out->content || (reasoning.p && !out->reasoning) || content.oom) {
        ms_chat_reply_free(out);
        return ms_fail(e, MS_ERR_NOMEM, "out of memory parsing a reply");
    }
    for (int i = 0; i < out->n_tool_calls; i++)
        if (!out->tool_calls[i].id) {
            ms_chat_reply_free(out);
            return ms_fail(e, MS_ERR_NOMEM, "out of memory parsing a reply");
        }
    return MS_OK;
}

/* ---- streaming split ---- */

struct ms_chat_stream {
    ms_chat_part part;
    int tools;    /* <tool_call> starts a tool call */
    int skip_nl;  /* drop newlines at the start of a part (the templates' lstrip) */
    ms_sbuf pend; /* text not yet emitted */
};

ms_chat_stream *ms_chat_stream_new(int think_open, int tools) {
    ms_chat_stream *s = ms_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->tools = tools;
    s->part = think_open ? MS_CHAT_REASONING : MS_CHAT_CONTENT;
    s->skip_nl = 1;
    return s;
}

void ms_chat_stream_free(ms_chat_stream *s) {
    if (!s) return;
    sbuf_free(&s->pend);
    ms_free(s);
}

ms_chat_part ms_chat_stream_part(const ms_chat_stream *s) { return s->part; }

static void stream_out(ms_chat_stream *s, const char *p, size_t n, ms_chat_emit emit, void *ud) {
    if (s->skip_nl) {
        while (n && *p == '\n') p++, n--;
        if (!n) return;
        s->skip_nl = 0;
    }
    if (emit) emit(ud, s->part, p, n);
}

/* The tags that end the current part, and what each switches to. */
static int stream_tags(const ms_chat_stream *s, const char *tags[2], ms_chat_part next[2]) {
    ms_chat_part part = s->part;
    if (part == MS_CHAT_CONTENT) {
        tags[0] = "<think>", next[0] = MS_CHAT_REASONING;
        tags[1] = "<tool_call>", next[1] = MS_CHAT_TOOL_CALL;
        return s->tools ? 2 : 1;
    }
    tags[0] = part == MS_CHAT_REASONING ? "</think>" : "</tool_call>";
    next[0] = MS_CHAT_CONTENT;
    return 1;
}

static void stream_run(ms_chat_stream *s, int final, ms_chat_emit emit, void *ud) {
    for (;;) {
        sv v = {s->pend.s ? s->pend.s : "", s->pend.len};
        const char *tags[2];
        ms_chat_part next[2];
        int nt = stream_tags(s, tags, next), hit = -1;
        long at = -1;
        for (int k = 0; k < nt; k++) {
            long f = sv_find(v, tags[k]);
            if (f >= 0 && (at < 0 || f < at)) at = f, hit = k;
        }
        if (hit >= 0) {
            /* whitespace before a closing tag belongs to the template, not the text */
            size_t keep = (size_t)at;
            while (keep && (v.p[keep - 1] == '\n' || (s->part != MS_CHAT_REASONING && v.p[keep - 1] == ' '))) keep--;
            stream_out(s, v.p, keep, emit, ud);
            size_t drop = (size_t)at + strlen(tags[hit]);
            memmove(s->pend.s, s->pend.s + drop, s->pend.len - drop + 1);
            s->pend.len -= drop;
            s->part = next[hit];
            s->skip_nl = 1;
            continue;
        }
        size_t hold = 0;
        if (!final) {
            /* a suffix that may begin a tag, and the newlines before it */
            for (int k = 0; k < nt; k++) {
                size_t tl = strlen(tags[k]);
                for (size_t l = tl - 1; l > 0; l--)
                    if (l <= v.n && !memcmp(v.p + v.n - l, tags[k], l)) {
                        if (l > hold) hold = l;
                        break;
                    }
            }
            while (hold < v.n && (v.p[v.n - hold - 1] == '\n')) hold++;
        }
        stream_out(s, v.p, v.n - hold, emit, ud);
        if (s->pend.s) {
            memmove(s->pend.s, s->pend.s + v.n - hold, hold + 1);
            s->pend.len = hold;
        }
        return;
    }
}

void ms_chat_stream_push(ms_chat_stream *s, const char *text, size_t len, ms_chat_emit emit, void *ud) {
    sbuf_add(&s->pend, text, len);
    stream_run(s, 0, emit, ud);
}

void ms_chat_stream_flush(ms_chat_stream *s, ms_chat_emit emit, void *ud) {
    /* trailing newlines of a finished reply are the template's */
    while (s->pend.len && s->pend.s[s->pend.len - 1] == '\n') s->pend.s[--s->pend.len] = 0;
    stream_run(s, 1, emit, ud);
}

/* ---- planned tool calls ---- */

struct ms_chat_plan {
    int xml;           /* qwen35's XML calls, else JSON */
    json_t *tools;
    json_t *fn;        /* the chosen function */
    char *forced;      /* the function named by tool_choice, or NULL */
    char **names;      /* the choices for the function's name */
    int n_names;
    json_t *keys;      /* required parameter names, in order */
    size_t i;          /* next parameter */
    int phase;         /* 0 open, 1 name, 2 first parameter, 3 after a value, 4 done */
    char **choices;    /* an enum parameter's choices */
    int n_choices;
    ms_sbuf text;      /* the step's text */
};

void ms_chat_plan_free(ms_chat_plan *p) {
    if (!p) return;
    json_decref(p->tools);
    json_decref(p->keys);
    ms_free(p->forced);
    for (int i = 0; i < p->n_names; i++) ms_free(p->names[i]);
    ms_free(p->names);
    for (int i = 0; i < p->n_choices; i++) ms_free(p->choices[i]);
    ms_free(p->choices);
    sbuf_free(&p->text);
    ms_free(p);
}

/* The name of a tool as it is written in the call (JSON-quoted, or followed by ">\n"). */
static char *name_text(int xml, const char *name) {
    ms_sbuf b = {0};
    if (xml) {
        sbuf_adds(&b, name);
        sbuf_adds(&b, ">\n");
    } else {
        json_t *s = json_string(name);
        if (s) chat_json_py(&b, s);
        json_decref(s);
    }
    if (b.oom) sbuf_free(&b);
    return b.s;
}

ms_status ms_chat_plan_new(const ms_chat *c, const char *tools_json, const char *name, ms_chat_plan **out, ms_err *e) {
    *out = NULL;
    json_t *tools;
    ms_status st = parse_tools(tools_json, &tools, e);
    if (st) return st;
    if (!tools) return ms_fail(e, MS_ERR_ARG, "a tool call was required but no tools were given");
    ms_chat_plan *p = ms_calloc(1, sizeof *p);
    if (!p) {
        json_decref(tools);
        return ms_fail(e, MS_ERR_NOMEM, "out of memory");
    }
    p->xml = c->fam == FAM_QWEN35;
    p->tools = tools;
    if (name) {
        if (!find_function(tools, name)) {
            ms_chat_plan_free(p);
            return ms_fail(e, MS_ERR_ARG, "tool_choice names '%s', which is not among the tools", name);
        }
        p->forced = ms_strdup(name);
        if (!p->forced) goto oom;
    } else {
        p->names = ms_calloc(json_array_size(tools), sizeof *p->names);
        if (!p->names) goto oom;
        for (size_t i = 0; i < json_array_size(tools); i++) {
            json_t *t = json_array_get(tools, i), *f = json_object_get(t, "function");
            const char *nm = json_string_value(json_object_get(json_is_object(f) ? f : t, "name"));
            if (!nm) continue;
            if (!(p->names[p->n_names] = name_text(p->xml, nm))) goto oom;
            p->n_names++;
        }
        if (!p->n_names) {
            ms_chat_plan_free(p);
            return ms_fail(e, MS_ERR_ARG, "no tool has a function name");
        }
    }
    *out = p;
    return MS_OK;
oom:
    ms_chat_plan_free(p);
    return ms_fail(e, MS_ERR_NOMEM, "out of memory");
}

/* Sets up the value step of the current parameter. */
static void plan_value(ms_chat_plan *p, ms_chat_step *st) {
    for (int i = 0; i < p->n_choices; i++) ms_free(p->choices[i]);
    ms_free(p->choices);
    p->choices = NULL;
    p->n_choices = 0;
    const char *key = json_string_value(json_array_get(p->keys, p->i));
    json_t *prop = json_object_get(json_object_get(json_object_get(p->fn, "parameters"), "properties"), key);
    json_t *en = json_object_get(prop, "enum");
    st->text = NULL;
    st->choices = NULL;
    st->n_choices = 0;
    if (json_array_size(en)) {
        p->choices = ms_calloc(json_array_size(en), sizeof *p->choices);
        for (size_t i = 0; p->choices && i < json_array_size(en); i++) {
            ms_sbuf b = {0};
            if (p->xml) chat_json_str(&b, json_array_get(en, i));
            else chat_json_py(&b, json_array_get(en, i));
            if (b.oom || !b.s) continue;
            p->choices[p->n_choices++] = b.s;
        }
        if (p->n_choices) {
            st->kind = MS_VALUE_CHOICE;
            st->choices = (const char *const *)p->choices;
            st->n_choices = p->n_choices;
            return;
        }
    }
    const char *ty = param_type(p->fn, key);
    if (!ty) st->kind = MS_VALUE_JSON;
    else if (!strcmp(ty, "string")) st->kind = p->xml ? MS_VALUE_LINE : MS_VALUE_STRING;
    else if (!strcmp(ty, "integer")) st->kind = MS_VALUE_INTEGER;
    else if (!strcmp(ty, "number")) st->kind = MS_VALUE_NUMBER;
    else if (!strcmp(ty, "boolean")) st->kind = MS_VALUE_BOOLEAN;
    else if (!strcmp(ty, "object")) st->kind = MS_VALUE_OBJECT;
    else if (!strcmp(ty, "array")) st->kind = MS_VALUE_ARRAY;
    else st->kind = MS_VALUE_JSON;
}

static void plan_key(ms_chat_plan *p, int first) {
    const char *key = json_string_value(json_array_get(p->keys, p->i));
    if (p->xml) sbuf_addf(&p->text, "<parameter=%s>\n", key);
    else {
        if (!first) sbuf_adds(&p->text, ", ");
        json_t *s = json_string(key);
        chat_json_py(&p->text, s);
        json_decref(s);
        sbuf_adds(&p->text, ": ");
    }
}

int ms_chat_plan_next(ms_chat_plan *p, const char *value, ms_chat_step *st) {
    p->text.len = 0;
    sbuf_add(&p->text, "", 0);
    memset(st, 0, sizeof *st);
    switch (p->phase) {
    case 0:
        sbuf_adds(&p->text, p->xml ? "<tool_call>\n<function=" : "<tool_call>\n{\"name\": ");
        if (p->forced) {
            char *nt = name_text(p->xml, p->forced);
            if (nt) sbuf_adds(&p->text, nt);
            ms_free(nt);
        }
        p->phase = p->forced ? 2 : 1;
        st->text = p->text.s;
        return 1;
    case 1:
        st->kind = MS_VALUE_CHOICE;
        st->choices = (const char *const *)p->names;
        st->n_choices = p->n_names;
        p->phase = 2;
        return 1;
    case 2: {
        const char *nm = p->forced;
        if (!nm && value)
            for (int i = 0; i < p->n_names; i++)
                if (!strcmp(value, p->names[i])) {
                    json_t *t = json_array_get(p->tools, (size_t)i), *f = json_object_get(t, "function");
                    nm = json_string_value(json_object_get(json_is_object(f) ? f : t, "name"));
                }
        p->fn = nm ? find_function(p->tools, nm) : NULL;
        json_t *req = json_object_get(json_object_get(p->fn, "parameters"), "required");
        p->keys = json_array();
        for (size_t i = 0; i < json_array_size(req); i++) { /* each name once: one key each */
            json_t *k = json_array_get(req, i);
            int seen = !json_is_string(k);
            for (size_t j = 0; !seen && j < json_array_size(p->keys); j++)
                seen = json_equal(k, json_array_get(p->keys, j));
            if (!seen) json_array_append(p->keys, k);
        }
        p->i = 0;
        if (!p->xml) sbuf_adds(&p->text, ", \"arguments\": {");
        if (json_array_size(p->keys) == 0) {
            sbuf_adds(&p->text, p->xml ? "</function>\n</tool_call>" : "}}\n</tool_call>");
            p->phase = 4;
        } else {
            plan_key(p, 1);
            p->phase = 3;
        }
        st->text = p->text.s;
        return 1;
    }
    case 3:
        if (!value) { /* the value of parameter i */
            plan_value(p, st);
            return 1;
        }
        if (p->xml) sbuf_adds(&p->text, "\n</parameter>\n");
        p->i++;
        if (p->i < json_array_size(p->keys)) plan_key(p, 0);
        else {
            sbuf_adds(&p->text, p->xml ? "</function>\n</tool_call>" : "}}\n</tool_call>");
            p->phase = 4;
        }
        st->text = p->text.s;
        return 1;
    default: return 0;
    }
}

/* ---- prefix reuse ---- */

ms_status ms_chat_prefill(ms_context *c, const int32_t *ids, int n, const int *ckpt, int n_ckpt,
                          int (*cancel)(void *ud), void *ud, int *n_reused, ms_err *e) {
    if (n_reused) *n_reused = 0;
    if (n <= 0) return ms_fail(e, MS_ERR_ARG, "the prompt is empty");
    if (n > ms_context_n_ctx(c))
        return ms_fail(e, MS_ERR_CONTEXT, "the prompt has %d tokens but the context holds %d", n, ms_context_n_ctx(c));
    int pos = ms_context_pos(c);
    const int32_t *have = ms_context_tokens(c);
    int lcp = 0;
    while (lcp < pos && lcp < n && have[lcp] == ids[lcp]) lcp++;
    if (lcp == n) lcp = n - 1; /* the last token is evaluated again for its logits */
    if (lcp < pos) {
        int rp = ms_context_resume_point(c, lcp);
        ms_status st = ms_context_rewind(c, rp, e);
        if (st) return st;
    }
    pos = ms_context_pos(c);
    if (n_reused) *n_reused = pos;
    int k = 0;
    while (k < n_ckpt && ckpt[k] <= pos) k++;
    while (pos < n) {
        if (cancel && cancel(ud)) return MS_OK;
        int end = pos + 256 < n ? pos + 256 : n;
        if (k < n_ckpt && ckpt[k] < end) end = ckpt[k];
        ms_status st = ms_eval(c, ids + pos, end - pos, 0, e);
        if (st) return st;
        pos = end;
        while (k < n_ckpt && ckpt[k] <= pos) {
            if (ckpt[k] == pos && (st = ms_context_checkpoint(c, e))) return st;
            k++;
        }
    }
    return MS_OK;
}
