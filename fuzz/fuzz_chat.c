/* fuzz_chat.c - fuzz target: the chat-template code without a model: recognizing a template
 * text, rendering messages (every role, reasoning, tool calls, tools) in each family, splitting a
 * generated reply into reasoning, content and tool calls (whole and streamed in chunks), and
 * planning a required tool call.
 *
 * Input: one flags byte, then sections separated by 0x00 bytes:
 *   template text (empty: the family named by flags bits 0-1: 1 chatml, 2 qwen3, 3 qwen35)
 *   tools (JSON text, may be empty)
 *   messages, one a section: first byte role (low 3 bits: system, user, assistant, tool, or an
 *     invalid role; bit 3: NULL content), the rest content | reasoning | tool-call name |
 *     tool-call arguments, split at 0x01 bytes
 * The last section is also the generated reply that is parsed and streamed. Flags bit 2: thinking,
 * bit 3: no generation prompt, bit 4: the reply starts inside <think>, bit 5: the tools count as
 * offered when parsing, bit 6: the plan names the first tool.
 */
#include <string.h>

#include "chat.h"
#include "fuzz.h"
#include "util.h"

int fuzz_chat_init(void) { return 0; }

#define MAX_SECTIONS 64

typedef struct emitted {
    size_t bytes;
    int parts[3];
} emitted;

static void on_emit(void *ud, ms_chat_part part, const char *text, size_t len) {
    emitted *em = ud;
    FUZZ_CHECK((int)part >= 0 && part <= MS_CHAT_TOOL_CALL && (text || !len), "bad emit");
    em->bytes += len;
    em->parts[part]++;
}

static void plan(const ms_chat *c, const char *tools, const char *name, const char *reply) {
    ms_chat_plan *p = NULL;
    ms_err e;
    if (ms_chat_plan_new(c, tools, name, &p, &e) != MS_OK) {
        FUZZ_CHECK(e.msg[0], "plan refused without a message");
        return;
    }
    const char *value = NULL;
    ms_chat_step st;
    int steps = 0;
    /* a plan has a step or two per required parameter: never more than the tools' bytes */
    int limit = 16 + 2 * (int)strlen(tools);
    while (ms_chat_plan_next(p, value, &st) && steps++ < limit) {
        value = NULL;
        if (st.text) continue;
        if (st.kind == MS_VALUE_CHOICE) {
            FUZZ_CHECK(st.n_choices > 0 && st.choices, "a choice step without choices");
            for (int i = 0; i < st.n_choices; i++) FUZZ_CHECK(st.choices[i] != NULL, "choice %d is NULL", i);
            value = st.choices[steps % st.n_choices];
        } else {
            value = steps % 3 == 0 ? reply : st.kind == MS_VALUE_STRING ? "\"x\"" : "1";
        }
    }
    FUZZ_CHECK(steps <= limit, "the plan never ends");
    ms_chat_plan_free(p);
}

int fuzz_chat_one(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int flags = data[0];
    char *buf = malloc(size); /* the sections, NUL-terminated in place */
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = 0;
    char *sec[MAX_SECTIONS];
    size_t sec_len[MAX_SECTIONS];
    int ns = 0;
    for (char *p = buf, *end = buf + size - 1; ns < MAX_SECTIONS;) {
        sec[ns] = p;
        sec_len[ns] = strlen(p);
        ns++;
        p += strlen(p) + 1;
        if (p > end) break;
    }
    static const char *families[4] = {NULL, "chatml", "qwen3", "qwen35"};
    const char *tmpl = sec[0], *tools = ns > 1 ? sec[1] : "";
    const char *reply = sec[ns - 1];
    size_t reply_len = sec_len[ns - 1];

    ms_chat *c = NULL;
    ms_err e;
    memset(&e, 0, sizeof e);
    ms_status st = ms_chat_new_from_template(*tmpl ? tmpl : NULL, families[flags & 3], &c, &e);
    if (st != MS_OK) {
        FUZZ_CHECK(st == MS_ERR_UNSUPPORTED || st == MS_ERR_ARG, "status %d: %s", st, e.msg);
        FUZZ_CHECK(e.msg[0] && !c, "refused without a message");
        ms_chat_new_from_template(NULL, "chatml", &c, &e);
    }
    FUZZ_CHECK(c != NULL && ms_chat_name(c) != NULL, "no template");

    /* messages */
    int nm = ns > 2 ? ns - 2 : 0;
    ms_chat_msg msgs[MAX_SECTIONS];
    ms_tool_call calls[MAX_SECTIONS];
    static const char *roles[8] = {"system", "user", "assistant", "tool", "developer", "", "user", "assistant"};
    for (int i = 0; i < nm; i++) {
        char *s = sec[2 + i];
        memset(&msgs[i], 0, sizeof msgs[i]);
        unsigned char r = (unsigned char)s[0];
        msgs[i].role = roles[r & 7];
        char *field[4] = {s[0] ? s + 1 : s, NULL, NULL, NULL};
        for (int k = 1; k < 4; k++) {
            char *sep = strchr(field[k - 1], 1);
            if (!sep) break;
            *sep = 0;
            field[k] = sep + 1;
        }
        msgs[i].content = r & 8 ? NULL : field[0];
        msgs[i].reasoning = field[1];
        if (field[2]) {
            calls[i] = (ms_tool_call){NULL, field[2], field[3]};
            msgs[i].tool_calls = &calls[i];
            msgs[i].n_tool_calls = 1;
        }
    }
    ms_chat_params p;
    ms_chat_params_default(&p);
    p.tools = *tools ? tools : NULL;
    p.thinking = (flags >> 2) & 1;
    p.add_generation_prompt = !((flags >> 3) & 1);
    char *text = NULL;
    int think_open = -1;
    memset(&e, 0, sizeof e);
    st = ms_chat_render(c, msgs, nm, &p, &text, &think_open, &e);
    if (st == MS_OK) FUZZ_CHECK(text && (think_open == 0 || think_open == 1), "render gave no text");
    else FUZZ_CHECK(st == MS_ERR_ARG && e.msg[0] && !text, "render status %d: %s", st, e.msg);
    ms_chat_text_free(text);

    /* the reply, whole and streamed */
    int open = (flags >> 4) & 1;
    const char *offered = (flags >> 5) & 1 ? tools : NULL;
    ms_chat_reply rep;
    FUZZ_CHECK(ms_chat_parse(c, reply, reply_len, open, offered, &rep, &e) == MS_OK, "parse: %s", e.msg);
    FUZZ_CHECK(rep.content != NULL && strlen(rep.content) <= reply_len, "parsed content");
    FUZZ_CHECK(rep.n_tool_calls == 0 || offered, "tool calls parsed though no tools were offered");
    for (int i = 0; i < rep.n_tool_calls; i++)
        FUZZ_CHECK(rep.tool_calls[i].id && rep.tool_calls[i].name && rep.tool_calls[i].arguments, "call %d", i);
    ms_chat_reply_free(&rep);
    ms_chat_stream *s = ms_chat_stream_new(open, offered != NULL);
    FUZZ_CHECK(s != NULL, "stream");
    emitted em = {0};
    for (size_t off = 0, k = 0; off < reply_len; k++) {
        size_t chunk = 1 + (size_t)(unsigned char)reply[(off + k) % reply_len] % 7;
        if (chunk > reply_len - off) chunk = reply_len - off;
        ms_chat_stream_push(s, reply + off, chunk, on_emit, &em);
        off += chunk;
    }
    ms_chat_stream_flush(s, on_emit, &em);
    FUZZ_CHECK(em.bytes <= reply_len, "streamed %zu bytes of a %zu-byte reply", em.bytes, reply_len);
    ms_chat_stream_free(s);

    if (*tools) plan(c, tools, NULL, reply);
    if (*tools && (flags >> 6) & 1) {
        /* the name of the first tool, if it has one */
        json_t *t = json_loads(tools, 0, NULL);
        json_t *fn = json_object_get(json_array_get(t, 0), "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (name) plan(c, tools, name, reply);
        json_decref(t);
    }
    ms_chat_free(c);
    free(buf);
    return 0;
}

FUZZ_ENTRY(chat)
