/* test_chat.c - chat templates, reply parsing, streaming split, planned tool calls with
 * constrained values, and prefix reuse between turns.
 *
 * Template renderings are checked against (1) the fixtures' chat_example / chat_example_ids
 * (tiny/<arch>/ref.json, made by transformers from the fixtures' own template) and (2) expected
 * texts written out below from the official Qwen3 (Qwen3-30B-A3B / Qwen3-0.6B) and Qwen3.5
 * (Qwen3.5-35B-A3B) chat_template.jinja, rendered the way transformers renders them
 * (trim_blocks, lstrip_blocks, tojson = json.dumps(ensure_ascii=False)).
 * Usage: test_chat [FIXTURES_DIR] */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "gguf.h"
#include "testlib.h"
#include "util.h"

/* ---- expected renderings (from the real templates, see the header) ---- */

static const char Q3_BASIC[] =
    "<|im_start|>system\n"
    "You are terse.<|im_end|>\n"
    "<|im_start|>user\n"
    "Hi there<|im_end|>\n"
    "<|im_start|>assistant\n"
    "";

static const char Q3_NOTHINK[] =
    "<|im_start|>user\n"
    "Hi<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "\n"
    "</think>\n"
    "\n"
    "";

static const char Q3_HISTORY[] =
    "<|im_start|>user\n"
    "one<|im_end|>\n"
    "<|im_start|>assistant\n"
    "A1<|im_end|>\n"
    "<|im_start|>user\n"
    "two<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "r2\n"
    "</think>\n"
    "\n"
    "A2<|im_end|>\n"
    "";

static const char Q3_TOOLS[] =
    "<|im_start|>system\n"
    "Be helpful.\n"
    "\n"
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather for a city — in °C\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\", \"default\": 1}, \"ratio\": {\"type\": \"number\", \"default\": 0.5, \"minimum\": 1e-05}, \"detailed\": {\"type\": \"boolean\"}}, \"required\": [\"city\"]}}}\n"
    "{\"type\": \"function\", \"function\": {\"name\": \"now\", \"description\": \"The time\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}}\n"
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "Weather in Zürich?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<tool_call>\n"
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n"
    "</tool_call>\n"
    "<tool_call>\n"
    "{\"name\": \"now\", \"arguments\": {}}\n"
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "<tool_response>\n"
    "12 °C\n"
    "</tool_response>\n"
    "<tool_response>\n"
    "10:00\n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
    "";

static const char Q3_TOOLS_NOSYS[] =
    "<|im_start|>system\n"
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    "{\"type\": \"function\", \"function\": {\"name\": \"now\", \"description\": \"The time\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}}\n"
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "x<|im_end|>\n"
    "<|im_start|>assistant\n"
    "Let me check.\n"
    "<tool_call>\n"
    "{\"name\": \"now\", \"arguments\": {}}\n"
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "<tool_response>\n"
    "t\n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
    "";

static const char Q35_BASIC[] =
    "<|im_start|>system\n"
    "You are terse.<|im_end|>\n"
    "<|im_start|>user\n"
    "Hi there<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "";

static const char Q35_NOTHINK[] =
    "<|im_start|>user\n"
    "Hi<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "\n"
    "</think>\n"
    "\n"
    "";

static const char Q35_HISTORY[] =
    "<|im_start|>user\n"
    "one<|im_end|>\n"
    "<|im_start|>assistant\n"
    "A1<|im_end|>\n"
    "<|im_start|>user\n"
    "two<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "";

static const char Q35_TOOLS[] =
    "<|im_start|>system\n"
    "# Tools\n"
    "\n"
    "You have access to the following functions:\n"
    "\n"
    "<tools>\n"
    "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather for a city — in °C\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\", \"default\": 1}, \"ratio\": {\"type\": \"number\", \"default\": 0.5, \"minimum\": 1e-05}, \"detailed\": {\"type\": \"boolean\"}}, \"required\": [\"city\"]}}}\n"
    "{\"type\": \"function\", \"function\": {\"name\": \"now\", \"description\": \"The time\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}}\n"
    "</tools>\n"
    "\n"
    "If you choose to call a function ONLY reply in the following format with NO suffix:\n"
    "\n"
    "<tool_call>\n"
    "<function=example_function_name>\n"
    "<parameter=example_parameter_1>\n"
    "value_1\n"
    "</parameter>\n"
    "<parameter=example_parameter_2>\n"
    "This is the value for the second parameter\n"
    "that can span\n"
    "multiple lines\n"
    "</parameter>\n"
    "</function>\n"
    "</tool_call>\n"
    "\n"
    "<IMPORTANT>\n"
    "Reminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls\n"
    "</IMPORTANT>\n"
    "\n"
    "Be helpful.<|im_end|>\n"
    "<|im_start|>user\n"
    "Weather in Zürich?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "\n"
    "</think>\n"
    "\n"
    "I will check.\n"
    "\n"
    "<tool_call>\n"
    "<function=get_weather>\n"
    "<parameter=city>\n"
    "Zürich\n"
    "</parameter>\n"
    "<parameter=days>\n"
    "3\n"
    "</parameter>\n"
    "<parameter=ratio>\n"
    "0.25\n"
    "</parameter>\n"
    "<parameter=detailed>\n"
    "True\n"
    "</parameter>\n"
    "<parameter=extra>\n"
    "{\"a\": [1, 2]}\n"
    "</parameter>\n"
    "<parameter=none>\n"
    "None\n"
    "</parameter>\n"
    "</function>\n"
    "</tool_call>\n"
    "<tool_call>\n"
    "<function=now>\n"
    "</function>\n"
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "<tool_response>\n"
    "12 °C\n"
    "</tool_response>\n"
    "<tool_response>\n"
    "10:00\n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "done\n"
    "</think>\n"
    "\n"
    "It is 12 °C.<|im_end|>\n"
    "";

static const char Q35_TOOLS_NOSYS[] =
    "<|im_start|>system\n"
    "# Tools\n"
    "\n"
    "You have access to the following functions:\n"
    "\n"
    "<tools>\n"
    "{\"type\": \"function\", \"function\": {\"name\": \"now\", \"description\": \"The time\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}}\n"
    "</tools>\n"
    "\n"
    "If you choose to call a function ONLY reply in the following format with NO suffix:\n"
    "\n"
    "<tool_call>\n"
    "<function=example_function_name>\n"
    "<parameter=example_parameter_1>\n"
    "value_1\n"
    "</parameter>\n"
    "<parameter=example_parameter_2>\n"
    "This is the value for the second parameter\n"
    "that can span\n"
    "multiple lines\n"
    "</parameter>\n"
    "</function>\n"
    "</tool_call>\n"
    "\n"
    "<IMPORTANT>\n"
    "Reminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls\n"
    "</IMPORTANT><|im_end|>\n"
    "<|im_start|>user\n"
    "x<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "\n"
    "</think>\n"
    "\n"
    "<tool_call>\n"
    "<function=now>\n"
    "</function>\n"
    "</tool_call><|im_end|>\n"
    "<|im_start|>user\n"
    "<tool_response>\n"
    "t\n"
    "</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "";

static const char TOOLS[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather for a city — in °C\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\","
    "\"default\":1},\"ratio\":{\"type\":\"number\",\"default\":0.5,\"minimum\":1e-05},\"detailed\":{\"type\":\"boolean\"}},"
    "\"required\":[\"city\"]}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"now\",\"description\":\"The time\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{}}}}]";
static const char TOOLS_NOW[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"now\",\"description\":\"The time\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{}}}}]";

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static ms_chat *chat_named(const char *name) {
    ms_chat *c = NULL;
    ms_error err = {0};
    CHECK(ms_chat_new_from_template(NULL, name, &c, &err) == MS_OK, "%s: %s", name, err.msg);
    return c;
}

/* Renders and compares with the expected text, showing where they part. */
static void check_render(const char *what, const ms_chat *c, const ms_chat_msg *m, int n, const char *tools, int gen,
                         int thinking, const char *want, int want_open) {
    ms_chat_params p;
    ms_chat_params_default(&p);
    p.tools = tools;
    p.add_generation_prompt = gen;
    p.thinking = thinking;
    char *got = NULL;
    int open = -1;
    ms_error err = {0};
    ms_status st = ms_chat_render(c, m, n, &p, &got, &open, &err);
    CHECK(st == MS_OK, "%s: %s", what, err.msg);
    if (st) return;
    if (strcmp(got, want)) {
        size_t i = 0;
        while (got[i] && got[i] == want[i]) i++;
        CHECK(0, "%s: differs at byte %zu:\n--- got:\n%s\n--- want:\n%s", what, i, got + (i > 40 ? i - 40 : 0),
              want + (i > 40 ? i - 40 : 0));
    } else t_checks++;
    CHECK(open == want_open, "%s: think_open %d, want %d", what, open, want_open);
    ms_chat_text_free(got);
}

static void test_qwen3(void) {
    ms_chat *c = chat_named("qwen3");
    if (!c) return;
    ms_chat_msg basic[] = {{.role = "system", .content = "You are terse."}, {.role = "user", .content = "Hi there"}};
    check_render("qwen3 basic", c, basic, 2, NULL, 1, 1, Q3_BASIC, 0);
    ms_chat_msg hi[] = {{.role = "user", .content = "Hi"}};
    check_render("qwen3 thinking off", c, hi, 1, NULL, 1, 0, Q3_NOTHINK, 0);
    ms_chat_msg hist[] = {{.role = "user", .content = "one"},
                          {.role = "assistant", .content = "<think>\nr1\n</think>\n\nA1"},
                          {.role = "user", .content = "two"},
                          {.role = "assistant", .content = "A2", .reasoning = "\nr2\n"}};
    check_render("qwen3 history", c, hist, 4, NULL, 0, 1, Q3_HISTORY, 0);
    ms_tool_call calls[] = {{NULL, "get_weather", "{\"city\": \"Zürich\"}"}, {NULL, "now", "{}"}};
    ms_chat_msg tools[] = {{.role = "system", .content = "Be helpful."},
                           {.role = "user", .content = "Weather in Zürich?"},
                           {.role = "assistant", .content = "", .tool_calls = calls, .n_tool_calls = 2},
                           {.role = "tool", .content = "12 °C"},
                           {.role = "tool", .content = "10:00"}};
    check_render("qwen3 tools", c, tools, 5, TOOLS, 1, 1, Q3_TOOLS, 0);
    ms_tool_call now[] = {{NULL, "now", "{}"}};
    ms_chat_msg nosys[] = {{.role = "user", .content = "x"},
                           {.role = "assistant", .content = "Let me check.", .tool_calls = now, .n_tool_calls = 1},
                           {.role = "tool", .content = "t"}};
    check_render("qwen3 tools without system", c, nosys, 3, TOOLS_NOW, 1, 1, Q3_TOOLS_NOSYS, 0);
    ms_chat_free(c);
}

static void test_qwen35(void) {
    ms_chat *c = chat_named("qwen35");
    if (!c) return;
    ms_chat_msg basic[] = {{.role = "system", .content = "  You are terse.\n"}, {.role = "user", .content = "\nHi there  "}};
    check_render("qwen35 basic", c, basic, 2, NULL, 1, 1, Q35_BASIC, 1);
    ms_chat_msg hi[] = {{.role = "user", .content = "Hi"}};
    check_render("qwen35 thinking off", c, hi, 1, NULL, 1, 0, Q35_NOTHINK, 0);
    ms_chat_msg hist[] = {{.role = "user", .content = "one"},
                          {.role = "assistant", .content = "<think>\nr1\n</think>\n\nA1"},
                          {.role = "user", .content = "two"}};
    check_render("qwen35 history", c, hist, 3, NULL, 1, 1, Q35_HISTORY, 1);
    ms_tool_call calls[] = {
        {NULL, "get_weather",
         "{\"city\": \"Zürich\", \"days\": 3, \"ratio\": 0.25, \"detailed\": true, \"extra\": {\"a\": [1, 2]}, "
         "\"none\": null}"},
        {NULL, "now", "{}"}};
    ms_chat_msg tools[] = {{.role = "system", .content = "Be helpful."},
                           {.role = "user", .content = "Weather in Zürich?"},
                           {.role = "assistant", .content = "I will check.", .tool_calls = calls, .n_tool_calls = 2},
                           {.role = "tool", .content = "12 °C"},
                           {.role = "tool", .content = " 10:00 "},
                           {.role = "assistant", .content = "It is 12 °C.", .reasoning = "  done  "}};
    check_render("qwen35 tools", c, tools, 6, TOOLS, 0, 1, Q35_TOOLS, 0);
    ms_tool_call now[] = {{NULL, "now", "{}"}};
    ms_chat_msg nosys[] = {{.role = "user", .content = "x"},
                           {.role = "assistant", .content = "", .tool_calls = now, .n_tool_calls = 1},
                           {.role = "tool", .content = "t"}};
    check_render("qwen35 tools without system", c, nosys, 3, TOOLS_NOW, 1, 1, Q35_TOOLS_NOSYS, 1);

    /* what the template refuses */
    char *out = NULL;
    ms_error err = {0};
    ms_chat_msg late_sys[] = {{.role = "user", .content = "a"}, {.role = "system", .content = "b"}};
    CHECK(ms_chat_render(c, late_sys, 2, NULL, &out, NULL, &err) == MS_ERR_ARG && strstr(err.msg, "beginning"),
          "late system: %s", err.msg);
    ms_chat_msg no_user[] = {{.role = "system", .content = "a"}};
    CHECK(ms_chat_render(c, no_user, 1, NULL, &out, NULL, &err) == MS_ERR_ARG && strstr(err.msg, "No user query"),
          "no user: %s", err.msg);
    ms_tool_call bad[] = {{NULL, "now", "[1]"}};
    ms_chat_msg bad_args[] = {{.role = "user", .content = "a"}, {.role = "assistant", .tool_calls = bad, .n_tool_calls = 1}};
    CHECK(ms_chat_render(c, bad_args, 2, NULL, &out, NULL, &err) == MS_ERR_ARG && strstr(err.msg, "not a JSON object"),
          "bad arguments: %s", err.msg);
    ms_chat_params p;
    ms_chat_params_default(&p);
    p.tools = "{\"not\": \"an array\"}";
    CHECK(ms_chat_render(c, hi, 1, &p, &out, NULL, &err) == MS_ERR_ARG && strstr(err.msg, "array"), "tools: %s", err.msg);
    p.tools = "[oops";
    CHECK(ms_chat_render(c, hi, 1, &p, &out, NULL, &err) == MS_ERR_ARG && strstr(err.msg, "invalid JSON"), "tools: %s",
          err.msg);
    ms_chat_msg odd[] = {{.role = "narrator", .content = "a"}};
    CHECK(ms_chat_render(c, odd, 1, NULL, &out, NULL, &err) == MS_ERR_ARG && strstr(err.msg, "narrator"), "role: %s",
          err.msg);
    CHECK(out == NULL, "no text on failure");
    ms_chat_free(c);
}

static void test_detect(void) {
    struct {
        const char *tmpl, *name;
        ms_status st;
        const char *msg;
    } cases[] = {
        {"{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}", NULL, MS_OK, "chatml"},
        {"{%- if tools %}<|im_start|>system ... <tool_call> ... <think>\\n ... enable_thinking", NULL, MS_OK, "qwen3"},
        {"<|im_start|> ... <think> ... <function=x> <parameter=y> ... render_content", NULL, MS_OK, "qwen35"},
        {"<|im_start|> ... <tool_call>\\n<function= ... <parameter=", NULL, MS_ERR_UNSUPPORTED, "qwen3-coder"},
        {"{{ bos_token }}<|start_header_id|>user<|end_header_id|>", NULL, MS_ERR_UNSUPPORTED, "'llama3'"},
        {"<s>[INST] {{ m.content }} [/INST]", NULL, MS_ERR_UNSUPPORTED, "[INST]"},
        {"<|start|>assistant<|channel|>final<|message|>", NULL, MS_ERR_UNSUPPORTED, "gpt-oss"},
        {"{{ weird }} template", NULL, MS_ERR_UNSUPPORTED, "not recognized (it begins \"{{ weird }} template\")"},
        {"", NULL, MS_ERR_UNSUPPORTED, "no chat template"},
        {"{{ weird }}", "qwen35", MS_OK, "qwen35"},
        {"<s>[INST]", "chatml", MS_OK, "chatml"},
        {"<|im_start|>", "llama3", MS_ERR_ARG, "unknown chat template 'llama3'"},
    };
    for (int i = 0; i < N(cases); i++) {
        ms_chat *c = NULL;
        ms_error err = {0};
        ms_status st = ms_chat_new_from_template(cases[i].tmpl, cases[i].name, &c, &err);
        CHECK(st == cases[i].st, "case %d: status %d (%s), want %d", i, st, err.msg, cases[i].st);
        if (st == MS_OK && c) CHECK(!strcmp(ms_chat_name(c), cases[i].msg), "case %d: %s", i, ms_chat_name(c));
        else CHECK(strstr(err.msg, cases[i].msg) != NULL, "case %d: message '%s' lacks '%s'", i, err.msg, cases[i].msg);
        CHECK(strchr(err.msg, '\n') == NULL, "case %d: one-line message", i);
        ms_chat_free(c);
    }
    /* a Qwen2-style ChatML template with a default system prompt (fixtures/vocab) */
    ms_error err = {0};
    gguf_file *f = gguf_open(t_path("vocab/ggml-vocab-qwen35.gguf"), &err);
    CHECK(f != NULL, "%s", err.msg);
    if (!f) return;
    char *tmpl = gguf_get_str(f, "tokenizer.chat_template");
    ms_chat *c = NULL;
    CHECK(tmpl && ms_chat_new_from_template(tmpl, NULL, &c, &err) == MS_OK, "%s", err.msg);
    if (c) {
        CHECK(!strcmp(ms_chat_name(c), "chatml"), "%s", ms_chat_name(c));
        ms_chat_msg hi[] = {{.role = "user", .content = "Hi"}};
        check_render("chatml default system", c, hi, 1, NULL, 1, 1,
                     "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                     "<|im_start|>assistant\n",
                     0);
        ms_chat_msg sys[] = {{.role = "system", .content = "S"}, {.role = "user", .content = "Hi"}};
        check_render("chatml own system", c, sys, 2, NULL, 1, 1,
                     "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", 0);
    }
    ms_chat_free(c);
    ms_free(tmpl);
    gguf_close(f);
}

static void check_reply(const char *what, const ms_chat_reply *r, const char *content, const char *reasoning, int n_calls) {
    CHECK(r->content && !strcmp(r->content, content), "%s: content '%s', want '%s'", what, r->content, content);
    if (reasoning) CHECK(r->reasoning && !strcmp(r->reasoning, reasoning), "%s: reasoning '%s'", what, r->reasoning);
    else CHECK(!r->reasoning, "%s: reasoning '%s', want none", what, r->reasoning);
    CHECK(r->n_tool_calls == n_calls, "%s: %d calls, want %d", what, r->n_tool_calls, n_calls);
}

typedef struct split {
    ms_sbuf part[3];
} split;

static void on_part(void *ud, ms_chat_part part, const char *text, size_t len) {
    sbuf_add(&((split *)ud)->part[part], text, len);
}

/* The streaming split, fed in pieces of `step` bytes, agrees with the whole-text parse. */
static void check_stream(const char *what, const char *text, int think_open, const ms_chat_reply *r, size_t step) {
    ms_chat_stream *s = ms_chat_stream_new(think_open, 1);
    split sp = {0};
    for (int k = 0; k < 3; k++) sbuf_add(&sp.part[k], "", 0);
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i += step) ms_chat_stream_push(s, text + i, i + step < n ? step : n - i, on_part, &sp);
    ms_chat_stream_flush(s, on_part, &sp);
    /* a <tool_call> that does not parse is tool text while streaming; front ends then use the
     * parsed content (server.c and chat_cli.c do) */
    const char *content = r->content;
    if (!r->n_tool_calls && !sp.part[2].len) CHECK(!strcmp(sp.part[0].s, content), "%s/%zu: streamed content '%s', want '%s'", what, step, sp.part[0].s, content);
    const char *reasoning = r->reasoning ? r->reasoning : "";
    CHECK(!strcmp(sp.part[1].s, reasoning), "%s/%zu: streamed reasoning '%s', want '%s'", what, step, sp.part[1].s, reasoning);
    if (r->n_tool_calls) CHECK(sp.part[2].len > 0, "%s/%zu: no tool text", what, step);
    for (int k = 0; k < 3; k++) sbuf_free(&sp.part[k]);
    ms_chat_stream_free(s);
}

static void test_parse(void) {
    ms_chat *q3 = chat_named("qwen3"), *q35 = chat_named("qwen35");
    if (!q3 || !q35) return;
    ms_chat_reply r;
    ms_error err = {0};
    struct {
        const ms_chat *c;
        const char *text;
        int open;
        const char *content, *reasoning;
        int calls;
    } cases[] = {
        {q3, "<think>\nLet me see.\n</think>\n\nHello!", 0, "Hello!", "Let me see.", 0},
        {q3, "Just text\n", 0, "Just text", NULL, 0},
        {q35, "The user asks.\n</think>\n\nAnswer", 1, "Answer", "The user asks.", 0},
        {q35, "still thinking", 1, "", "still thinking", 0},
        {q3, "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>", 0,
         "Checking.", NULL, 1},
        {q3, "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\"}\n</tool_call>",
         0, "", NULL, 2},
        {q3, "<tool_call>\n{\"name\": broken}\n</tool_call>", 0, "<tool_call>\n{\"name\": broken}\n</tool_call>", NULL, 0},
        {q3, "<tool_call>\n{\"name\": \"now\", \"arg", 0, "<tool_call>\n{\"name\": \"now\", \"arg", NULL, 0},
        {q35,
         "ok\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nZürich\n</parameter>\n<parameter=days>\n3\n"
         "</parameter>\n<parameter=detailed>\nTrue\n</parameter>\n<parameter=ratio>\nabc\n</parameter>\n</function>\n</tool_call>",
         1, "", "ok", 1},
    };
    for (int i = 0; i < N(cases); i++) {
        const char *t = cases[i].text;
        CHECK(ms_chat_parse(cases[i].c, t, strlen(t), cases[i].open, TOOLS, &r, &err) == MS_OK, "%s", err.msg);
        char what[32];
        snprintf(what, sizeof what, "parse case %d", i);
        check_reply(what, &r, cases[i].content, cases[i].reasoning, cases[i].calls);
        for (size_t step = 1; step <= 7; step += 3) check_stream(what, t, cases[i].open, &r, step);
        check_stream(what, t, cases[i].open, &r, strlen(t));
        if (i == 4 && r.n_tool_calls == 1) {
            CHECK(!strcmp(r.tool_calls[0].name, "get_weather"), "%s", r.tool_calls[0].name);
            CHECK(!strcmp(r.tool_calls[0].arguments, "{\"city\": \"Zürich\"}"), "%s", r.tool_calls[0].arguments);
            CHECK(r.tool_calls[0].id && !strncmp(r.tool_calls[0].id, "call_", 5), "id %s", r.tool_calls[0].id);
        }
        if (i == 5 && r.n_tool_calls == 2) {
            CHECK(!strcmp(r.tool_calls[1].arguments, "{}"), "%s", r.tool_calls[1].arguments);
            CHECK(strcmp(r.tool_calls[0].id, r.tool_calls[1].id), "ids differ");
        }
        if (i == 8 && r.n_tool_calls == 1)
            CHECK(!strcmp(r.tool_calls[0].arguments, "{\"city\": \"Zürich\", \"days\": 3, \"detailed\": true, \"ratio\": \"abc\"}"),
                  "xml arguments %s", r.tool_calls[0].arguments);
        ms_chat_reply_free(&r);
    }
    ms_chat_free(q3);
    ms_chat_free(q35);
}

static void test_py_json(void) {
    struct {
        const char *in, *want;
    } cases[] = {
        {"[0.5, 1e-05, 100.0, 1e16, 123456789.123, -0.0, 0.0001, 1.5e300, 12345678901234567.0, 3, -7]",
         "[0.5, 1e-05, 100.0, 1e+16, 123456789.123, -0.0, 0.0001, 1.5e+300, 1.2345678901234568e+16, 3, -7]"},
        {"{\"b\": \"tab\\there \\\"q\\\" \\\\ \\u0001 é\", \"a\": [true, false, null, {}, []]}",
         "{\"b\": \"tab\\there \\\"q\\\" \\\\ \\u0001 é\", \"a\": [true, false, null, {}, []]}"},
    };
    for (int i = 0; i < N(cases); i++) {
        json_t *j = json_loads(cases[i].in, 0, NULL);
        ms_sbuf b = {0};
        chat_json_py(&b, j);
        CHECK(b.s && !strcmp(b.s, cases[i].want), "py json %d: %s", i, b.s);
        sbuf_free(&b);
        json_decref(j);
    }
}

/* ---- with a model: the fixtures' template, constrained values, planned calls, prefix reuse ---- */

static ms_model *load_tiny(const char *arch) {
    char rel[128];
    snprintf(rel, sizeof rel, "tiny/%s/%s-f32.gguf", arch, arch);
    ms_model *m = NULL;
    ms_error err = {0};
    CHECK(ms_model_load(t_path(rel), NULL, &m, &err) == MS_OK, "%s: %s", rel, err.msg);
    return m;
}

static void test_fixture_template(const char *arch, ms_model *m) {
    char rel[128];
    snprintf(rel, sizeof rel, "tiny/%s/ref.json", arch);
    char *json = t_read_file(t_path(rel), NULL);
    CHECK(json != NULL, "%s", rel);
    if (!json) return;
    char *example = t_json_string(json, "chat_example", NULL);
    int n_want = 0;
    int *want = t_json_ints(json, "chat_example_ids", &n_want);
    ms_chat *c = NULL;
    ms_error err = {0};
    CHECK(ms_chat_new(m, NULL, &c, &err) == MS_OK, "%s: %s", arch, err.msg);
    if (c && example && want) {
        CHECK(!strcmp(ms_chat_name(c), "chatml"), "%s: %s", arch, ms_chat_name(c));
        ms_chat_msg hi[] = {{.role = "user", .content = "Hi"}};
        check_render(arch, c, hi, 1, NULL, 1, 1, example, 0);
        char *text = NULL;
        int32_t *ids = NULL;
        int n = 0;
        ms_chat_render(c, hi, 1, NULL, &text, NULL, &err);
        CHECK(text && ms_tokenize(m, text, strlen(text), 1, &ids, &n, &err) == MS_OK, "%s", err.msg);
        int same = n == n_want;
        for (int i = 0; same && i < n; i++) same = ids[i] == want[i];
        CHECK(same, "%s: chat_example_ids differ (%d ids, want %d)", arch, n, n_want);
        ms_free_ids(ids);
        ms_chat_text_free(text);
    }
    ms_chat_free(c);
    /* --chat-template overrides; a bad name is an error */
    CHECK(ms_chat_new(m, "qwen35", &c, &err) == MS_OK && !strcmp(ms_chat_name(c), "qwen35"), "%s", err.msg);
    ms_chat_free(c);
    CHECK(ms_chat_new(m, "vicuna", &c, &err) == MS_ERR_ARG && !c, "bad name");
    free(example);
    free(want);
    free(json);
}

/* Feeds text token by token through a constraint; returns the result of the last accept. */
static int feed(ms_model *m, ms_constraint *k, const char *text, int *masked_out) {
    int32_t *ids = NULL;
    int n = 0, r = -1;
    ms_error err = {0};
    ms_tokenize(m, text, strlen(text), 0, &ids, &n, &err);
    int nv = ms_n_vocab(m);
    float *lg = malloc(sizeof(float) * (size_t)nv);
    *masked_out = 0;
    for (int i = 0; i < n; i++) {
        for (int v = 0; v < nv; v++) lg[v] = 0;
        ms_constraint_apply(k, lg);
        if (isinf(lg[ids[i]])) *masked_out = 1;
        r = ms_constraint_accept(k, ids[i]);
        if (r != 0 && i < n - 1) {
            r = -2; /* ended early */
            break;
        }
    }
    free(lg);
    ms_free_ids(ids);
    return r;
}

static void test_constraint(ms_model *m) {
    struct {
        ms_value_kind kind;
        const char *text;
        int want, masked;
    } cases[] = {
        {MS_VALUE_OBJECT, "{\"a\": [1, -2.5e3, \"x\\n\"], \"b\": {\"c\": null}, \"d\": true}", 1, 0},
        {MS_VALUE_STRING, "\"héllo \\\"world\\\"\"", 1, 0},
        {MS_VALUE_OBJECT, "{\"a\" : 1}", 0, 1},     /* space before ':' */
        {MS_VALUE_STRING, "\"bad \\u0041\"", 0, 1}, /* no \u escapes */
        {MS_VALUE_INTEGER, "1.5", 0, 1},
        {MS_VALUE_NUMBER, "-12.5e-3", 0, 0},        /* a number only ends when something else comes */
        {MS_VALUE_BOOLEAN, "false", 1, 0},
        {MS_VALUE_BOOLEAN, "null", 0, 1},
        {MS_VALUE_JSON, "[]", 1, 0},
        {MS_VALUE_LINE, "Paris, France", 0, 0},
        {MS_VALUE_LINE, "a<b", -2, 0}, /* '<' ends the line */
    };
    for (int i = 0; i < N(cases); i++) {
        ms_constraint *k = ms_constraint_new(m, cases[i].kind, NULL, 0);
        int masked = 0, r = feed(m, k, cases[i].text, &masked);
        CHECK(masked == cases[i].masked, "constraint %d (%s): masked %d", i, cases[i].text, masked);
        CHECK(masked || r == cases[i].want, "constraint %d (%s): accept %d, want %d", i, cases[i].text, r, cases[i].want);
        if (!cases[i].masked && r != -2) {
            CHECK(!strcmp(ms_constraint_text(k), cases[i].text), "constraint %d: text %s", i, ms_constraint_text(k));
        }
        ms_constraint_free(k);
    }
    /* closings complete any prefix into valid JSON */
    const char *prefixes[] = {"{\"a\": [1, {\"b", "{\"a\": \"x\\", "[tr", "{\"k\": -", "{\"a\": 1, ", "[1, "};
    for (int i = 0; i < N(prefixes); i++) {
        ms_constraint *k = ms_constraint_new(m, MS_VALUE_JSON, NULL, 0);
        int masked = 0;
        feed(m, k, prefixes[i], &masked);
        ms_sbuf b = {0};
        sbuf_adds(&b, ms_constraint_text(k));
        sbuf_adds(&b, ms_constraint_closing(k));
        json_t *j = json_loads(b.s, 0, NULL);
        CHECK(j != NULL, "closing of '%s' gives '%s', not JSON", prefixes[i], b.s);
        json_decref(j);
        sbuf_free(&b);
        ms_constraint_free(k);
    }
    const char *choices[] = {"\"get_weather\"", "\"now\""};
    ms_constraint *k = ms_constraint_new(m, MS_VALUE_CHOICE, choices, 2);
    int masked = 0;
    CHECK(feed(m, k, "\"now\"", &masked) == 1 && !masked, "choice");
    ms_constraint_free(k);
    k = ms_constraint_new(m, MS_VALUE_CHOICE, choices, 2);
    CHECK(feed(m, k, "\"nap\"", &masked) != 1 && masked, "choice outside the set");
    ms_constraint_free(k);
}

/* Runs a planned call with the model's own (random) logits and checks that it parses. */
static void test_plan(ms_model *m, const char *family, const char *name) {
    ms_chat *c = chat_named(family);
    ms_context *ctx = NULL;
    ms_error err = {0};
    CHECK(ms_context_new(m, NULL, &ctx, &err) == MS_OK, "%s", err.msg);
    ms_chat_plan *p = NULL;
    CHECK(ms_chat_plan_new(c, TOOLS, name, &p, &err) == MS_OK, "%s", err.msg);
    if (!c || !ctx || !p) goto done;
    ms_sampler_params sp;
    ms_sampler_params_default(&sp);
    sp.seed = 3;
    ms_sampler *smp = ms_sampler_new(m, &sp);
    int32_t *ids = NULL;
    int n = 0;
    ms_tokenize(m, "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n", 56, 1, &ids, &n, &err);
    ms_eval(ctx, ids, n, 0, &err);
    ms_free_ids(ids);
    ms_sbuf out = {0}, val = {0};
    ms_chat_step st;
    const char *value = NULL;
    int nv = ms_n_vocab(m);
    float *lg = malloc(sizeof(float) * (size_t)nv);
    while (ms_chat_plan_next(p, value, &st)) {
        value = NULL;
        if (st.text) {
            sbuf_adds(&out, st.text);
            ms_tokenize(m, st.text, strlen(st.text), 1, &ids, &n, &err);
            if (n) ms_eval(ctx, ids, n, 0, &err);
            ms_free_ids(ids);
            continue;
        }
        ms_constraint *k = ms_constraint_new(m, st.kind, st.choices, st.n_choices);
        int done = 0;
        for (int step = 0; step < 24 && !done; step++) {
            memcpy(lg, ms_logits(ctx, -1), sizeof(float) * (size_t)nv);
            if (!ms_constraint_apply(k, lg)) break;
            int32_t tok = ms_sample(smp, lg);
            int r = ms_constraint_accept(k, tok);
            if (r == 2) break;
            ms_eval(ctx, &tok, 1, 0, &err);
            done = r == 1;
        }
        const char *close = ms_constraint_closing(k);
        val.len = 0;
        sbuf_adds(&val, ms_constraint_text(k));
        sbuf_adds(&val, close);
        sbuf_adds(&out, val.s);
        if (*close) {
            ms_tokenize(m, close, strlen(close), 1, &ids, &n, &err);
            if (n) ms_eval(ctx, ids, n, 0, &err);
            ms_free_ids(ids);
        }
        value = val.s;
        ms_constraint_free(k);
    }
    free(lg);
    ms_chat_reply r;
    CHECK(ms_chat_parse(c, out.s, out.len, 0, TOOLS, &r, &err) == MS_OK, "%s", err.msg);
    CHECK(r.n_tool_calls == 1, "%s planned call did not parse: %s", family, out.s);
    if (getenv("MS_TEST_VERBOSE")) printf("  planned %s call: %s\n", family, out.s);
    if (r.n_tool_calls == 1) {
        if (name) CHECK(!strcmp(r.tool_calls[0].name, name), "name %s", r.tool_calls[0].name);
        json_t *a = json_loads(r.tool_calls[0].arguments, 0, NULL);
        int want_city = !strcmp(r.tool_calls[0].name, "get_weather");
        CHECK(a && json_is_object(a) && (!want_city || json_is_string(json_object_get(a, "city"))),
              "%s arguments %s", family, r.tool_calls[0].arguments);
        json_decref(a);
    }
    ms_chat_reply_free(&r);
    sbuf_free(&out);
    sbuf_free(&val);
    ms_sampler_free(smp);
done:
    ms_chat_plan_free(p);
    ms_context_free(ctx);
    ms_chat_free(c);
}

static int stop_now(void *ud) { return ++*(int *)ud > 1; }

/* A second turn keeps the first turn's tokens and gives the logits of a fresh evaluation. */
static void test_prefill(ms_model *m, const char *arch) {
    ms_context *a = NULL, *b = NULL;
    ms_error err = {0};
    ms_context_new(m, NULL, &a, &err);
    ms_context_new(m, NULL, &b, &err);
    if (!a || !b) goto done;
    int32_t ids[300];
    for (int i = 0; i < 300; i++) ids[i] = (int32_t)((i * 37 + 11) % 500);
    int reused = -1, ck1[] = {100, 120};
    CHECK(ms_chat_prefill(a, ids, 120, ck1, 2, NULL, NULL, &reused, &err) == MS_OK, "%s", err.msg);
    CHECK(reused == 0 && ms_context_pos(a) == 120, "%s: first turn reused %d", arch, reused);
    /* the next turn shares the first 110 tokens: it resumes at the checkpoint at 100 (recurrent) or at 110 */
    int32_t next[300];
    memcpy(next, ids, sizeof ids);
    next[110] = 7;
    int ck2[] = {150, 200};
    CHECK(ms_chat_prefill(a, next, 200, ck2, 2, NULL, NULL, &reused, &err) == MS_OK, "%s", err.msg);
    ms_model_info info;
    ms_model_get_info(m, &info);
    int want = info.n_layer_linear ? 100 : 110;
    CHECK(reused == want, "%s: reused %d, want %d", arch, reused, want);
    CHECK(ms_chat_prefill(b, next, 200, NULL, 0, NULL, NULL, NULL, &err) == MS_OK, "%s", err.msg);
    int nv = ms_n_vocab(m);
    double kl = t_kl(ms_logits(b, -1), ms_logits(a, -1), nv);
    CHECK(kl < 1e-6, "%s: reused-prefix logits differ from a fresh run: KL %g", arch, kl);
    /* the same prompt again: only the last token is evaluated again */
    CHECK(ms_chat_prefill(a, next, 200, NULL, 0, NULL, NULL, &reused, &err) == MS_OK, "%s", err.msg);
    CHECK(reused == (info.n_layer_linear ? 150 : 199), "%s: same prompt reused %d", arch, reused);
    kl = t_kl(ms_logits(b, -1), ms_logits(a, -1), nv);
    CHECK(kl < 1e-6, "%s: same prompt logits KL %g", arch, kl);
    /* cancel between batches; too long a prompt */
    ms_context_reset(a);
    int calls = 0;
    CHECK(ms_chat_prefill(a, ids, 300, NULL, 0, stop_now, &calls, NULL, &err) == MS_OK && ms_context_pos(a) < 300,
          "%s: cancel", arch);
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.n_ctx = 64;
    ms_context *small = NULL;
    ms_context_new(m, &cp, &small, &err);
    CHECK(small && ms_chat_prefill(small, ids, 100, NULL, 0, NULL, NULL, NULL, &err) == MS_ERR_CONTEXT, "context full");
    ms_context_free(small);
done:
    ms_context_free(a);
    ms_context_free(b);
}

/* A planned call writes each required parameter once, however often "required" names it (a
 * fuzz finding: tests/regress/chat/duplicate-required-names). */
static void test_plan_required_once(void) {
    ms_chat *c = NULL;
    ms_err e;
    CHECK(ms_chat_new_from_template(NULL, "qwen3", &c, &e) == MS_OK, "%s", e.msg);
    if (!c) return;
    const char *tools = "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\", "
                        "\"properties\": {\"a\": {\"type\": \"string\"}, \"b\": {\"type\": \"integer\"}}, "
                        "\"required\": [\"a\", \"b\", \"a\", 7, \"a\"]}}}]";
    ms_chat_plan *p = NULL;
    CHECK(ms_chat_plan_new(c, tools, "f", &p, &e) == MS_OK, "%s", e.msg);
    char out[1024] = "";
    int values = 0, steps = 0;
    const char *v = NULL;
    ms_chat_step st;
    while (p && ms_chat_plan_next(p, v, &st) && steps++ < 64) {
        v = st.text ? NULL : st.kind == MS_VALUE_STRING ? "\"x\"" : "1";
        strncat(out, st.text ? st.text : v, sizeof out - strlen(out) - 1);
        values += !st.text;
    }
    int keys_a = 0;
    for (const char *q = out; (q = strstr(q, "\"a\"")) != NULL; q++) keys_a++;
    CHECK(values == 2 && keys_a == 1, "required [a, b, a, 7, a]: %d values, key a %d times: %s", values, keys_a, out);
    ms_chat_plan_free(p);
    ms_chat_free(c);
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    test_qwen3();
    test_qwen35();
    test_detect();
    test_parse();
    test_py_json();
    test_plan_required_once();
    const char *archs[] = {"qwen3moe", "qwen35moe", "qwen3next"};
    for (int a = 0; a < N(archs); a++) {
        ms_model *m = load_tiny(archs[a]);
        if (!m) continue;
        test_fixture_template(archs[a], m);
        test_prefill(m, archs[a]);
        if (a == 0) {
            test_constraint(m);
            test_plan(m, "chatml", "get_weather");
            test_plan(m, "qwen3", NULL);
            test_plan(m, "qwen35", "get_weather");
            test_plan(m, "qwen35", NULL);
        }
        ms_model_free(m);
    }
    return t_done("test_chat");
}
