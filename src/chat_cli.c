/* chat_cli.c - `moestream chat`: an interactive chat in the terminal.
 *
 * Line editing and history through libedit, the reply streamed as it is generated (reasoning
 * dimmed, or hidden), tok/s after each reply, Ctrl-C stops a reply without leaving, /clear /save
 * /load, and an optional bash tool that runs a command only after the user says yes. The context
 * is kept between turns: each turn evaluates only what the previous one did not (ms_chat_prefill).
 * Reads plain lines when stdin is not a terminal.
 *
 * Not here: template rendering (chat.c), generation (front.c).
 */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>

#include "front.h"

/* Process-level state of the front end: the Ctrl-C flag. */
static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

typedef struct msg {
    char *role, *content, *reasoning;
    ms_tool_call *calls;
    int n_calls;
} msg;

typedef struct chat {
    ms_model *m;
    ms_context *c;
    ms_chat *tmpl;
    front_opts o;
    msg *msgs;
    int n, cap;
    int think;           /* 1 on (dimmed), 0 off, 2 hide */
    int think_budget;
    int max_tokens;
    int ignore_eos;
    int tools;           /* the bash tool is offered */
    size_t tool_max;     /* bytes of tool output fed back */
    int tty_in, tty_out;
    /* streaming display */
    int shown_part;      /* -1: nothing yet this reply */
    int hidden_note;
} chat;

static char *dup_or_null(const char *s) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) front_die("out of memory");
    return d;
}

static void msg_free(msg *x) {
    free(x->role);
    free(x->content);
    free(x->reasoning);
    for (int i = 0; i < x->n_calls; i++) {
        free(x->calls[i].id);
        free(x->calls[i].name);
        free(x->calls[i].arguments);
    }
    free(x->calls);
    memset(x, 0, sizeof *x);
}

static msg *add_msg(chat *ch, const char *role, const char *content) {
    if (ch->n == ch->cap) {
        ch->cap = ch->cap ? ch->cap * 2 : 16;
        ch->msgs = realloc(ch->msgs, sizeof *ch->msgs * (size_t)ch->cap);
        if (!ch->msgs) front_die("out of memory");
    }
    msg *x = &ch->msgs[ch->n++];
    memset(x, 0, sizeof *x);
    x->role = dup_or_null(role);
    x->content = dup_or_null(content);
    return x;
}

/* Keeps the system message (if any) and forgets the rest. */
static void chat_forget(chat *ch) {
    int keep = ch->n > 0 && !strcmp(ch->msgs[0].role, "system");
    for (int i = keep; i < ch->n; i++) msg_free(&ch->msgs[i]);
    ch->n = keep;
}

static const char BASH_TOOL[] =
    "[{\"type\": \"function\", \"function\": {\"name\": \"bash\", \"description\": \"Run a shell command on the user's "
    "machine (after the user confirms) and return its output.\", \"parameters\": {\"type\": \"object\", \"properties\": "
    "{\"command\": {\"type\": \"string\", \"description\": \"The command line, run with sh -c.\"}}, \"required\": "
    "[\"command\"]}}}]";

/* ---- input ---- */

/* A line from the user without its newline (caller frees), or NULL at end of input. */
static char *read_line(chat *ch, const char *prompt) {
    if (ch->tty_in) {
        for (;;) {
            g_interrupted = 0;
            errno = 0;
            char *line = readline(prompt);
            if (line || !(g_interrupted || errno == EINTR)) return line;
            /* Ctrl-C at the prompt: a fresh line, keep going */
            fputc('\n', stdout);
        }
    }
    if (prompt && ch->tty_out) fputs(prompt, stdout), fflush(stdout);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    return line;
}

/* ---- display ---- */

#define DIM "\033[2m"
#define RESET "\033[0m"

static void show(void *ud, ms_chat_part part, const char *text, size_t len) {
    chat *ch = ud;
    if (part == MS_CHAT_TOOL_CALL) return; /* shown once parsed */
    if (part == MS_CHAT_REASONING && ch->think == 2) {
        if (!ch->hidden_note) {
            fputs(ch->tty_out ? DIM "(reasoning hidden)" RESET "\n" : "(reasoning hidden)\n", stdout);
            ch->hidden_note = 1;
        }
        return;
    }
    if ((int)part != ch->shown_part) {
        if (ch->shown_part == MS_CHAT_REASONING && ch->tty_out) fputs(RESET, stdout);
        if (ch->shown_part >= 0) fputs("\n", stdout);
        if (part == MS_CHAT_REASONING && ch->tty_out) fputs(DIM, stdout);
        ch->shown_part = (int)part;
    }
    fwrite(text, 1, len, stdout);
    fflush(stdout);
}

static int stop_requested(void *ud) {
    (void)ud;
    return g_interrupted;
}

/* ---- tools ---- */

/* Runs a command through sh and returns its output (stdout and stderr), cut at max bytes. */
static char *run_command(const char *command, size_t max) {
    fbuf cmd = {0}, out = {0};
    fbuf_addf(&cmd, "{ %s\n} </dev/null 2>&1", command);
    fbuf_add(&out, "", 0);
    FILE *p = popen(cmd.s, "r");
    fbuf_free(&cmd);
    if (!p) {
        fbuf_addf(&out, "could not run the command: %s", strerror(errno));
        return out.s;
    }
    char buf[4096];
    size_t r, total = 0;
    while ((r = fread(buf, 1, sizeof buf, p)) > 0) {
        if (out.len < max) fbuf_add(&out, buf, out.len + r > max ? max - out.len : r);
        total += r;
    }
    int status = pclose(p);
    if (total > max) fbuf_addf(&out, "\n[output cut at %zu of %zu bytes]", max, total);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status)) {
        if (status != -1 && WIFEXITED(status)) fbuf_addf(&out, "\n[exit status %d]", WEXITSTATUS(status));
        else fbuf_adds(&out, "\n[the command did not finish normally]");
    }
    return out.s;
}

/* Shows each call, runs the confirmed ones, and adds their results as tool messages. */
static void handle_calls(chat *ch, const ms_tool_call *calls, int n) {
    for (int i = 0; i < n; i++) {
        const char *result;
        char *owned = NULL;
        json_t *args = json_loads(calls[i].arguments, 0, NULL);
        const char *command = json_string_value(json_object_get(args, "command"));
        if (strcmp(calls[i].name, "bash") || !command) {
            printf("\n[tool call: %s %s (not a bash command; not run)]\n", calls[i].name, calls[i].arguments);
            result = "error: unknown tool or missing command; the only tool is bash with a \"command\" string";
        } else {
            printf("\n[tool call: bash]\n  $ %s\n", command);
            char *ans = read_line(ch, "run it? [y/N] ");
            if (ans && (ans[0] == 'y' || ans[0] == 'Y')) {
                owned = run_command(command, ch->tool_max);
                result = owned;
                printf("%s%s%s\n", ch->tty_out ? DIM : "", owned, ch->tty_out ? RESET : "");
            } else {
                result = "The user declined to run this command.";
                printf("[not run]\n");
            }
            free(ans);
        }
        add_msg(ch, "tool", result);
        free(owned);
        json_decref(args);
    }
}

/* ---- turns ---- */

static ms_chat_msg *view_msgs(const chat *ch) {
    ms_chat_msg *v = calloc((size_t)ch->n + 1, sizeof *v);
    if (!v) front_die("out of memory");
    for (int i = 0; i < ch->n; i++) {
        v[i].role = ch->msgs[i].role;
        v[i].content = ch->msgs[i].content;
        v[i].reasoning = ch->msgs[i].reasoning;
        v[i].tool_calls = ch->msgs[i].calls;
        v[i].n_tool_calls = ch->msgs[i].n_calls;
    }
    return v;
}

/* Renders and tokenizes the conversation; *hist_end gets where its generation prompt begins. */
static int32_t *render_ids(chat *ch, int *n, int *hist_end, int *think_open, ms_error *err) {
    ms_chat_msg *v = view_msgs(ch);
    ms_chat_params p;
    ms_chat_params_default(&p);
    p.tools = ch->tools ? BASH_TOOL : NULL;
    p.thinking = ch->think != 0;
    char *text = NULL, *hist = NULL;
    int32_t *ids = NULL, *hids = NULL;
    int nh = 0;
    *hist_end = 0;
    if (ms_chat_render(ch->tmpl, v, ch->n, &p, &text, think_open, err) ||
        ms_tokenize(ch->m, text, strlen(text), 1, &ids, n, err)) {
        ids = NULL;
        goto done;
    }
    p.add_generation_prompt = 0;
    if (ms_chat_render(ch->tmpl, v, ch->n, &p, &hist, NULL, err) == MS_OK &&
        ms_tokenize(ch->m, hist, strlen(hist), 1, &hids, &nh, err) == MS_OK && nh <= *n &&
        !memcmp(hids, ids, sizeof *ids * (size_t)nh))
        *hist_end = nh;
done:
    ms_free_ids(hids);
    ms_chat_text_free(text);
    ms_chat_text_free(hist);
    free(v);
    return ids;
}

/* One reply (and the tool rounds that follow it). Returns 0, or -1 when the turn failed. */
static int chat_turn(chat *ch) {
    for (int round = 0; round < 8; round++) {
        ms_error err = {0};
        int n = 0, hist_end = 0, think_open = 0;
        int32_t *ids;
        for (;;) {
            ids = render_ids(ch, &n, &hist_end, &think_open, &err);
            if (!ids) {
                fprintf(stderr, "moestream: %s\n", err.msg);
                return -1;
            }
            if (n + 16 <= ms_context_n_ctx(ch->c)) break;
            /* too long: forget the oldest turn after the system prompt */
            int first = ch->n > 0 && !strcmp(ch->msgs[0].role, "system");
            if (ch->n - first <= 1) {
                fprintf(stderr, "moestream: the message has %d tokens but the context holds %d (raise -c)\n", n,
                        ms_context_n_ctx(ch->c));
                ms_free_ids(ids);
                return -1;
            }
            ms_free_ids(ids);
            msg_free(&ch->msgs[first]);
            memmove(&ch->msgs[first], &ch->msgs[first + 1], sizeof *ch->msgs * (size_t)(ch->n - first - 1));
            ch->n--;
            fprintf(stderr, "[context full: dropped the oldest message]\n");
        }
        gen_req req = {0};
        req.ids = ids;
        req.n = n;
        req.hist_end = hist_end;
        req.sp = ch->o.sp;
        req.max_tokens = ch->max_tokens;
        req.think_open = think_open;
        req.think_budget = ch->think_budget;
        req.tools = ch->tools;
        req.ignore_eos = ch->ignore_eos;
        req.cancel = stop_requested;
        req.on_text = show;
        req.ud = ch;
        ch->shown_part = -1;
        ch->hidden_note = 0;
        g_interrupted = 0;
        gen_result res;
        ms_status st = front_generate(ch->m, ch->c, &req, &res, &err);
        ms_free_ids(ids);
        if (ch->shown_part == MS_CHAT_REASONING && ch->tty_out) fputs(RESET, stdout);
        if (st) {
            fprintf(stderr, "\nmoestream: %s\n", err.msg);
            return -1;
        }
        ms_chat_reply reply;
        if (ms_chat_parse(ch->tmpl, res.text, res.len, think_open, ch->tools ? BASH_TOOL : NULL, &reply, &err)) {
            fprintf(stderr, "\nmoestream: %s\n", err.msg);
            free(res.text);
            return -1;
        }
        /* a <tool_call> that did not parse was held back as tool text: show it as the reply */
        const char *unparsed = ch->tools && !reply.n_tool_calls ? strstr(reply.content, "<tool_call>") : NULL;
        if (unparsed) printf("%s", unparsed);
        int stopped = !strcmp(res.finish, "cancelled");
        printf("\n%s[%d tokens, %.1f tok/s | prompt %d tokens, %d reused, %.2f s%s]%s\n", ch->tty_out ? DIM : "",
               res.n_gen, res.t_decode > 0 ? res.n_gen / res.t_decode : 0.0, res.n_prompt, res.n_reused, res.t_prefill,
               stopped ? " | stopped" : !strcmp(res.finish, "length") ? " | length limit" : "",
               ch->tty_out ? RESET : "");
        fflush(stdout);
        msg *a = add_msg(ch, "assistant", reply.content);
        a->reasoning = dup_or_null(reply.reasoning);
        int want_tools = ch->tools && reply.n_tool_calls > 0 && !stopped;
        if (reply.n_tool_calls > 0 && ch->tools) {
            a->calls = calloc((size_t)reply.n_tool_calls, sizeof *a->calls);
            if (!a->calls) front_die("out of memory");
            for (int i = 0; i < reply.n_tool_calls; i++) {
                a->calls[i].id = dup_or_null(reply.tool_calls[i].id);
                a->calls[i].name = dup_or_null(reply.tool_calls[i].name);
                a->calls[i].arguments = dup_or_null(reply.tool_calls[i].arguments);
            }
            a->n_calls = reply.n_tool_calls;
        }
        ms_chat_reply_free(&reply);
        free(res.text);
        if (!want_tools) return 0;
        handle_calls(ch, a->calls, a->n_calls);
    }
    fprintf(stderr, "[stopped after 8 rounds of tool calls]\n");
    return 0;
}

/* ---- /save and /load ---- */

static int save_chat(const chat *ch, const char *path) {
    json_t *arr = json_array();
    for (int i = 0; i < ch->n; i++) {
        const msg *x = &ch->msgs[i];
        json_t *o = json_object();
        json_object_set_new(o, "role", json_string(x->role));
        json_object_set_new(o, "content", x->content ? json_string(x->content) : json_null());
        if (x->reasoning) json_object_set_new(o, "reasoning_content", json_string(x->reasoning));
        if (x->n_calls) {
            json_t *calls = json_array();
            for (int k = 0; k < x->n_calls; k++)
                json_array_append_new(calls, json_pack("{s:s?, s:s, s:{s:s, s:s}}", "id", x->calls[k].id, "type",
                                                       "function", "function", "name", x->calls[k].name, "arguments",
                                                       x->calls[k].arguments));
            json_object_set_new(o, "tool_calls", calls);
        }
        json_array_append_new(arr, o);
    }
    json_t *doc = json_pack("{s:o}", "messages", arr);
    int rc = json_dump_file(doc, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(doc);
    return rc;
}

static int load_chat(chat *ch, const char *path, char *why, size_t why_len) {
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc) {
        snprintf(why, why_len, "%s: %s (line %d)", path, je.text, je.line);
        return -1;
    }
    json_t *arr = json_is_array(doc) ? doc : json_object_get(doc, "messages");
    int ok = json_is_array(arr);
    for (size_t i = 0; ok && i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i), *ct = json_object_get(o, "content");
        const char *role = json_string_value(json_object_get(o, "role"));
        ok = role && (!ct || json_is_string(ct) || json_is_null(ct)) &&
             (!strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant") || !strcmp(role, "tool"));
    }
    if (!ok) {
        snprintf(why, why_len, "%s: expected {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}", path);
        json_decref(doc);
        return -1;
    }
    for (int i = 0; i < ch->n; i++) msg_free(&ch->msgs[i]);
    ch->n = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i);
        msg *x = add_msg(ch, json_string_value(json_object_get(o, "role")),
                         json_string_value(json_object_get(o, "content")));
        x->reasoning = dup_or_null(json_string_value(json_object_get(o, "reasoning_content")));
        json_t *calls = json_object_get(o, "tool_calls");
        if (json_array_size(calls)) {
            x->calls = calloc(json_array_size(calls), sizeof *x->calls);
            if (!x->calls) front_die("out of memory");
            for (size_t k = 0; k < json_array_size(calls); k++) {
                json_t *f = json_object_get(json_array_get(calls, k), "function");
                const char *name = json_string_value(json_object_get(f, "name"));
                const char *args = json_string_value(json_object_get(f, "arguments"));
                if (!name) continue;
                ms_tool_call *tc = &x->calls[x->n_calls++];
                tc->id = dup_or_null(json_string_value(json_object_get(json_array_get(calls, k), "id")));
                tc->name = dup_or_null(name);
                tc->arguments = dup_or_null(args ? args : "{}");
            }
        }
    }
    json_decref(doc);
    return 0;
}

/* ---- the command ---- */

static void chat_usage(void) {
    fputs("usage: moestream chat -m MODEL [options]\n"
          "  --system TEXT, -sf FILE   system prompt (text, or read from a file)\n"
          "  --think on|off|hide       show the reasoning dimmed (on, default), skip it (off) or hide it\n"
          "  --think-budget N          close the reasoning after N tokens\n"
          "  --tools bash              let the model run shell commands, each after you confirm (y/N)\n"
          "  --tool-output N           bytes of a command's output given back to the model (default 16384)\n"
          "  -n, --n-predict N         at most N tokens per reply (default: until the context is full)\n"
          "  --chat-template NAME      chatml, qwen3 or qwen35 instead of the model's template\n"
          "  --ignore-eos              keep generating past end-of-turn tokens (until -n or the context)\n"
          "  -c N, -b N, -t N, --temp T, --top-k N, --top-p P, --min-p P, --repeat-penalty R, --seed S\n"
          "in the chat: /clear, /save FILE, /load FILE, /help, /quit; Ctrl-C stops a reply, Ctrl-D quits\n",
          stdout);
}

int cmd_chat(int argc, char **argv) {
    chat ch;
    memset(&ch, 0, sizeof ch);
    front_opts_default(&ch.o);
    ch.think = 1;
    ch.think_budget = -1;
    ch.max_tokens = -1;
    ch.tool_max = 16384;
    const char *system = NULL, *system_file = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (front_parse_common(argc, argv, &i, &ch.o)) continue;
        if (!strcmp(a, "--system")) system = front_arg(argc, argv, &i);
        else if (!strcmp(a, "-sf") || !strcmp(a, "--system-file")) system_file = front_arg(argc, argv, &i);
        else if (!strcmp(a, "--think")) {
            const char *v = front_arg(argc, argv, &i);
            if (!strcmp(v, "on")) ch.think = 1;
            else if (!strcmp(v, "off")) ch.think = 0;
            else if (!strcmp(v, "hide")) ch.think = 2;
            else front_die("--think expects on, off or hide, got '%s'", v);
        } else if (!strcmp(a, "--think-budget")) ch.think_budget = (int)front_int(a, front_arg(argc, argv, &i), 0, 1 << 24);
        else if (!strcmp(a, "--tools")) {
            const char *v = front_arg(argc, argv, &i);
            if (strcmp(v, "bash")) front_die("--tools expects bash, got '%s'", v);
            ch.tools = 1;
        } else if (!strcmp(a, "--tool-output")) ch.tool_max = (size_t)front_int(a, front_arg(argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--ignore-eos")) ch.ignore_eos = 1;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) ch.max_tokens = (int)front_int(a, front_arg(argc, argv, &i), -1, 1 << 30);
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            chat_usage();
            return 0;
        } else front_die("unknown option '%s' (see moestream chat --help)", a);
    }
    if (system && system_file) front_die("give --system or -sf, not both");
    char *sys_text = system_file ? front_read_file(system_file, NULL) : NULL;
    ch.m = front_load_model(&ch.o);
    ms_error err;
    if (ms_chat_new(ch.m, ch.o.chat_template, &ch.tmpl, &err)) front_die("%s", err.msg);
    ch.c = front_new_context(ch.m, &ch.o);
    if (system || sys_text) add_msg(&ch, "system", system ? system : sys_text);
    free(sys_text);
    ch.tty_in = isatty(0);
    ch.tty_out = isatty(1);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: a read at the prompt returns */
    if (ch.tty_in) {
        using_history();
        stifle_history(500);
    }
    ms_model_info info;
    ms_model_get_info(ch.m, &info);
    printf("moestream chat: %s (%s), template %s, context %d%s\n", info.name[0] ? info.name : info.arch, info.arch,
           ms_chat_name(ch.tmpl), ms_context_n_ctx(ch.c), ch.tools ? ", tools: bash" : "");
    printf("/help for commands; Ctrl-C stops a reply, Ctrl-D quits\n");
    fflush(stdout);
    char *line;
    while ((line = read_line(&ch, "> "))) {
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) {
            free(line);
            continue;
        }
        if (ch.tty_in) add_history(line);
        if (*p == '/') {
            char cmd[16] = {0}, *arg = p + 1;
            size_t k = 0;
            while (*arg && *arg != ' ' && k < sizeof cmd - 1) cmd[k++] = *arg++;
            while (*arg == ' ') arg++;
            if (!strcmp(cmd, "quit") || !strcmp(cmd, "exit")) {
                free(line);
                break;
            } else if (!strcmp(cmd, "clear")) {
                chat_forget(&ch);
                printf("[conversation cleared]\n");
            } else if (!strcmp(cmd, "save")) {
                if (!*arg) printf("usage: /save FILE\n");
                else if (save_chat(&ch, arg)) printf("[could not write %s: %s]\n", arg, strerror(errno));
                else printf("[saved %d messages to %s]\n", ch.n, arg);
            } else if (!strcmp(cmd, "load")) {
                char why[600];
                if (!*arg) printf("usage: /load FILE\n");
                else if (load_chat(&ch, arg, why, sizeof why)) printf("[could not load %s]\n", why);
                else printf("[loaded %d messages from %s]\n", ch.n, arg);
            } else if (!strcmp(cmd, "help")) {
                printf("/clear          forget the conversation (keeps the system prompt)\n"
                       "/save FILE      save the conversation as JSON (OpenAI messages)\n"
                       "/load FILE      load a conversation saved with /save\n"
                       "/quit           leave (or Ctrl-D); Ctrl-C stops a reply\n");
            } else printf("[unknown command /%s; /help lists them]\n", cmd);
            fflush(stdout);
            free(line);
            continue;
        }
        add_msg(&ch, "user", line);
        free(line);
        if (chat_turn(&ch)) {
            /* the message that failed is not kept */
            while (ch.n > 0 && strcmp(ch.msgs[ch.n - 1].role, "user")) msg_free(&ch.msgs[--ch.n]);
            if (ch.n > 0) msg_free(&ch.msgs[--ch.n]);
        }
    }
    if (ch.tty_in) fputc('\n', stdout);
    for (int i = 0; i < ch.n; i++) msg_free(&ch.msgs[i]);
    free(ch.msgs);
    ms_chat_free(ch.tmpl);
    ms_context_free(ch.c);
    ms_model_free(ch.m);
    return 0;
}
