/* constrain.c - constrained sampling of one value: a byte-level state machine per value kind
 * (JSON values, a fixed set of texts, a raw line) run over every token's bytes, so the sampler
 * only sees tokens that keep the value well-formed.
 *
 * What it is: the "grammar" behind planned tool calls (ms_chat_plan_*): the values the model
 * writes into a call stay valid JSON of the parameter's type. JSON is written the way Python
 * writes it (one space after ':' and ',', no other whitespace); strings take the simple escapes
 * but not \u (the model writes the character itself), so what it produces always parses.
 * What it is not: a general grammar engine (no GBNF, no schemas beyond one value's type).
 */
#include <math.h>
#include <string.h>

#include "chat.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"

#define J_MAX_DEPTH 32

enum { J_VALUE, J_STR, J_STR_ESC, J_NUM, J_LIT, J_AFTER, J_KEY, J_COLON, J_DONE };
enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };
enum { FEED_ERR = 0, FEED_OK = 1, FEED_END = 2 };

static const char *const literals[] = {"true", "false", "null"};

typedef struct jstate {
    unsigned char mode, num, lit, litpos;
    unsigned char is_key;   /* the string being written is an object key */
    unsigned char u8need, u8lo, u8hi; /* UTF-8 continuation bytes still expected, and the next one's range */
    unsigned char space_ok; /* one space may come (after ':' or ',') */
    unsigned char need;     /* after ',': a key / value must follow */
    unsigned char depth;
    unsigned char first;    /* what the value must be: 0 any, '{', '[', '"', '0' number, 'i' integer, 'b' boolean */
    unsigned char started;
    char stack[J_MAX_DEPTH];
} jstate;

struct ms_constraint {
    const ms_model *m;
    ms_value_kind kind;
    jstate js;
    char **choices;
    int n_choices;
    ms_sbuf text;    /* accepted so far */
    ms_sbuf closing;
};

static int j_after_value(jstate *s) {
    s->mode = s->depth ? J_AFTER : J_DONE;
    s->space_ok = 0;
    s->need = 0;
    return FEED_OK;
}

static int j_value_start(jstate *s, unsigned char c) {
    if (c == ' ') {
        if (!s->space_ok) return FEED_ERR;
        s->space_ok = 0;
        return FEED_OK;
    }
    s->space_ok = 0;
    if (c == ']' && s->depth && s->stack[s->depth - 1] == '[' && !s->need) {
        s->depth--;
        return j_after_value(s);
    }
    if (!s->depth && !s->started) {
        int ok = 1;
        switch (s->first) {
        case '{': ok = c == '{'; break;
        case '[': ok = c == '['; break;
        case '"': ok = c == '"'; break;
        case '0': case 'i': ok = c == '-' || (c >= '0' && c <= '9'); break;
        case 'b': ok = c == 't' || c == 'f'; break;
        }
        if (!ok) return FEED_ERR;
    }
    s->started = 1;
    switch (c) {
    case '{':
    case '[':
        if (s->depth == J_MAX_DEPTH) return FEED_ERR;
        s->stack[s->depth++] = (char)c;
        s->mode = c == '{' ? J_KEY : J_VALUE;
        s->need = 0;
        return FEED_OK;
    case '"':
        s->mode = J_STR;
        s->is_key = 0;
        return FEED_OK;
    case '-': s->mode = J_NUM, s->num = N_MINUS; return FEED_OK;
    case '0': s->mode = J_NUM, s->num = N_ZERO; return FEED_OK;
    case 't': case 'f': case 'n':
        s->mode = J_LIT;
        s->lit = c == 't' ? 0 : c == 'f' ? 1 : 2;
        s->litpos = 1;
        return FEED_OK;
    default:
        if (c >= '1' && c <= '9') {
            s->mode = J_NUM, s->num = N_INT;
            return FEED_OK;
        }
        return FEED_ERR;
    }
}

static int j_feed(jstate *s, unsigned char c);

static int j_num(jstate *s, unsigned char c) {
    int digit = c >= '0' && c <= '9', integer = s->first == 'i' && !s->depth;
    switch (s->num) {
    case N_MINUS:
        if (!digit) return FEED_ERR;
        s->num = c == '0' ? N_ZERO : N_INT;
        return FEED_OK;
    case N_ZERO:
    case N_INT:
        if (digit && s->num == N_INT) return FEED_OK;
        if (c == '.' && !integer) return s->num = N_DOT, FEED_OK;
        if ((c == 'e' || c == 'E') && !integer) return s->num = N_E, FEED_OK;
        break;
    case N_DOT:
        if (!digit) return FEED_ERR;
        s->num = N_FRAC;
        return FEED_OK;
    case N_FRAC:
        if (digit) return FEED_OK;
        if (c == 'e' || c == 'E') return s->num = N_E, FEED_OK;
        break;
    case N_E:
        if (c == '+' || c == '-') return s->num = N_ESIGN, FEED_OK;
        if (!digit) return FEED_ERR;
        s->num = N_EXP;
        return FEED_OK;
    case N_ESIGN:
        if (!digit) return FEED_ERR;
        s->num = N_EXP;
        return FEED_OK;
    case N_EXP:
        if (digit) return FEED_OK;
        break;
    }
    /* the number is complete; c belongs to what follows it */
    if (!s->depth) return FEED_END;
    j_after_value(s);
    return j_feed(s, c);
}

/* UTF-8 well-formedness of text bytes (c >= 0x80, or any byte while a character is open). */
static int utf8_feed(jstate *s, unsigned char c) {
    if (s->u8need) {
        if (c < s->u8lo || c > s->u8hi) return FEED_ERR;
        s->u8need--;
        s->u8lo = 0x80, s->u8hi = 0xbf;
        return FEED_OK;
    }
    if (c < 0x80) return FEED_OK;
    s->u8lo = 0x80, s->u8hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) s->u8need = 1;
    else if (c >= 0xe0 && c <= 0xef) {
        s->u8need = 2;
        if (c == 0xe0) s->u8lo = 0xa0;
        if (c == 0xed) s->u8hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        s->u8need = 3;
        if (c == 0xf0) s->u8lo = 0x90;
        if (c == 0xf4) s->u8hi = 0x8f;
    } else return FEED_ERR;
    return FEED_OK;
}

static int j_str(jstate *s, unsigned char c) {
    if (s->u8need || c >= 0x80) return utf8_feed(s, c);
    if (c == '"') {
        if (s->is_key) {
            s->mode = J_COLON;
            return FEED_OK;
        }
        return j_after_value(s);
    }
    if (c == '\\') return s->mode = J_STR_ESC, FEED_OK;
    if (c < 0x20) return FEED_ERR;
    return FEED_OK;
}

static int j_feed(jstate *s, unsigned char c) {
    switch (s->mode) {
    case J_VALUE: return j_value_start(s, c);
    case J_STR: return j_str(s, c);
    case J_STR_ESC:
        if (!strchr("\"\\/bfnrt", c) || !c) return FEED_ERR;
        s->mode = J_STR;
        return FEED_OK;
    case J_NUM: return j_num(s, c);
    case J_LIT:
        if (c != (unsigned char)literals[s->lit][s->litpos]) return FEED_ERR;
        if (!literals[s->lit][++s->litpos]) return j_after_value(s);
        return FEED_OK;
    case J_AFTER:
        if (c == ',') {
            s->mode = s->stack[s->depth - 1] == '{' ? J_KEY : J_VALUE;
            s->need = 1;
            s->space_ok = 1;
            return FEED_OK;
        }
        if ((c == '}' && s->stack[s->depth - 1] == '{') || (c == ']' && s->stack[s->depth - 1] == '[')) {
            s->depth--;
            return j_after_value(s);
        }
        return FEED_ERR;
    case J_KEY:
        if (c == ' ' && s->space_ok) {
            s->space_ok = 0;
            return FEED_OK;
        }
        s->space_ok = 0;
        if (c == '"') {
            s->mode = J_STR;
            s->is_key = 1;
            return FEED_OK;
        }
        if (c == '}' && !s->need) {
            s->depth--;
            return j_after_value(s);
        }
        return FEED_ERR;
    case J_COLON:
        if (c != ':') return FEED_ERR;
        s->mode = J_VALUE;
        s->need = 1;
        s->space_ok = 1;
        return FEED_OK;
    default: return FEED_ERR; /* J_DONE: the value is complete */
    }
}

/* The text that completes a JSON value from state s. */
static void j_close(const jstate *s0, ms_sbuf *b) {
    jstate s = *s0;
    switch (s.mode) {
    case J_STR_ESC: sbuf_adds(b, "n"); /* fall through */
    case J_STR:
        for (; s.u8need; s.u8need--) {
            char ch = (char)s.u8lo;
            sbuf_add(b, &ch, 1);
            s.u8lo = 0x80;
        }
        sbuf_adds(b, s.is_key ? "\": null" : "\"");
        break;
    case J_NUM:
        if (s.num == N_MINUS || s.num == N_DOT || s.num == N_E || s.num == N_ESIGN) sbuf_adds(b, "0");
        break;
    case J_LIT: sbuf_adds(b, literals[s.lit] + s.litpos); break;
    case J_VALUE:
        if (!s.depth && !s.started) {
            switch (s.first) {
            case '{': sbuf_adds(b, "{}"); break;
            case '[': sbuf_adds(b, "[]"); break;
            case '"': sbuf_adds(b, "\"\""); break;
            case '0': case 'i': sbuf_adds(b, "0"); break;
            case 'b': sbuf_adds(b, "false"); break;
            default: sbuf_adds(b, "null"); break;
            }
        } else if (s.need) sbuf_adds(b, "null");
        break;
    case J_KEY:
        if (s.need) sbuf_adds(b, "\"\": null");
        break;
    case J_COLON: sbuf_adds(b, ": null"); break;
    }
    while (s.depth) sbuf_adds(b, s.stack[--s.depth] == '{' ? "}" : "]");
}

static int is_json_kind(ms_value_kind k) { return k <= MS_VALUE_BOOLEAN; }

ms_constraint *ms_constraint_new(const ms_model *m, ms_value_kind kind, const char *const *choices, int n_choices) {
    ms_constraint *k = ms_calloc(1, sizeof *k);
    if (!k) return NULL;
    k->m = m;
    k->kind = kind;
    static const unsigned char first[] = {0, '{', '[', '"', '0', 'i', 'b'};
    if (is_json_kind(kind)) k->js.first = first[kind];
    if (kind == MS_VALUE_CHOICE && n_choices > 0) {
        k->choices = ms_calloc((size_t)n_choices, sizeof *k->choices);
        if (!k->choices) goto fail;
        for (int i = 0; i < n_choices; i++) {
            if (!(k->choices[i] = ms_strdup(choices[i]))) goto fail;
            k->n_choices++;
        }
    }
    sbuf_add(&k->text, "", 0);
    if (k->text.oom) goto fail;
    return k;
fail:
    ms_constraint_free(k);
    return NULL;
}

void ms_constraint_free(ms_constraint *k) {
    if (!k) return;
    for (int i = 0; i < k->n_choices; i++) ms_free(k->choices[i]);
    ms_free(k->choices);
    sbuf_free(&k->text);
    sbuf_free(&k->closing);
    ms_free(k);
}

/* Whether a value is open-ended (a number or a line): it ends only when something else comes. */
static int can_end(const ms_constraint *k) {
    if (k->kind == MS_VALUE_LINE) return k->text.len > 0 && !k->js.u8need;
    if (!is_json_kind(k->kind)) return 0;
    const jstate *s = &k->js;
    return s->mode == J_NUM && !s->depth &&
           (s->num == N_ZERO || s->num == N_INT || s->num == N_FRAC || s->num == N_EXP);
}

static int is_delim(unsigned char c) { return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* FEED_OK if the whole piece continues the value (st updated), FEED_END if it ends an open-ended
 * value at its first byte, FEED_ERR otherwise. */
static int check_piece(const ms_constraint *k, jstate *st, const char *p, size_t n) {
    if (!n) return FEED_ERR;
    switch (k->kind) {
    case MS_VALUE_LINE: {
        if (p[0] == '\n' || p[0] == '<') return can_end(k) ? FEED_END : FEED_ERR;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)p[i];
            if (c == '<' || c == '\n' || c == '\r' || (c < 0x20 && c != '\t')) return FEED_ERR;
            if (utf8_feed(st, c) == FEED_ERR) return FEED_ERR;
        }
        /* no leading spaces: the template puts the value right after "\n" */
        if (!k->text.len && (p[0] == ' ' || p[0] == '\t')) return FEED_ERR;
        return FEED_OK;
    }
    case MS_VALUE_CHOICE:
        for (int i = 0; i < k->n_choices; i++) {
            const char *c = k->choices[i];
            size_t cl = strlen(c);
            if (k->text.len + n <= cl && !memcmp(c, k->text.s, k->text.len) && !memcmp(c + k->text.len, p, n))
                return FEED_OK;
        }
        return FEED_ERR;
    default:
        for (size_t i = 0; i < n; i++) {
            int r = j_feed(st, (unsigned char)p[i]);
            if (r == FEED_END) return i == 0 && is_delim((unsigned char)p[0]) ? FEED_END : FEED_ERR;
            if (r == FEED_ERR) return FEED_ERR;
        }
        return FEED_OK;
    }
}

int ms_constraint_apply(ms_constraint *k, float *logits) {
    const ms_tokenizer *tok = k->m->tok;
    int nv = k->m->hp.n_vocab, nt = tokenizer_n_vocab(tok), allowed = 0, end_ok = can_end(k);
    for (int id = 0; id < nv; id++) {
        int ok = 0;
        if (id < nt) {
            int ty = tokenizer_token_type(tok, id);
            if (ty == MS_TOKEN_NORMAL || ty == MS_TOKEN_BYTE) {
                size_t n;
                const char *p = tokenizer_token_piece(tok, id, 0, &n);
                jstate st = k->js;
                ok = p && check_piece(k, &st, p, n) != FEED_ERR;
            } else if (end_ok && tokenizer_is_eog(tok, id)) ok = 1;
        }
        if (ok) allowed++;
        else logits[id] = -INFINITY;
    }
    return allowed;
}

int ms_constraint_accept(ms_constraint *k, int32_t token) {
    const ms_tokenizer *tok = k->m->tok;
    if (tokenizer_is_eog(tok, token)) return 2;
    size_t n;
    const char *p = tokenizer_token_piece(tok, token, 0, &n);
    if (!p) return 2;
    jstate st = k->js;
    int r = check_piece(k, &st, p, n);
    if (r == FEED_END) return 2;
    /* a token the caller did not filter: take what it can and let closing finish the value */
    if (r == FEED_ERR) return 2;
    k->js = st;
    sbuf_add(&k->text, p, n);
    if (k->kind == MS_VALUE_CHOICE) {
        for (int i = 0; i < k->n_choices; i++)
            if (!strcmp(k->choices[i], k->text.s)) return 1;
        return 0;
    }
    if (k->kind == MS_VALUE_LINE) return 0;
    return k->js.mode == J_DONE;
}

const char *ms_constraint_closing(ms_constraint *k) {
    k->closing.len = 0;
    sbuf_add(&k->closing, "", 0);
    if (k->kind == MS_VALUE_CHOICE) {
        for (int i = 0; i < k->n_choices; i++)
            if (!strncmp(k->choices[i], k->text.s, k->text.len)) {
                sbuf_adds(&k->closing, k->choices[i] + k->text.len);
                break;
            }
    } else if (is_json_kind(k->kind)) {
        j_close(&k->js, &k->closing);
    } else if (k->kind == MS_VALUE_LINE) {
        unsigned char lo = k->js.u8lo;
        for (int i = 0; i < k->js.u8need; i++, lo = 0x80) sbuf_add(&k->closing, (const char *)&lo, 1);
    }
    return k->closing.s ? k->closing.s : "";
}

const char *ms_constraint_text(const ms_constraint *k) { return k->text.s ? k->text.s : ""; }
