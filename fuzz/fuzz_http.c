/* fuzz_http.c - fuzz target: the server's request path after HTTP framing: a POST body read as
 * JSON and checked field by field, the messages rendered through a chat template and tokenized,
 * the prompt fitted to the context (serve_check_request in server.c, what each connection
 * thread runs before it queues a job), on the tiny qwen35moe fixture.
 *
 * Input: one flags byte, then the body. Flags: bit 0 /v1/completions (else /v1/chat/completions),
 * bits 1-2 the template (the model's own, chatml, qwen3, qwen35).
 * Invariants: the status is 200 or an error status, and an error comes with an OpenAI-shaped body
 * ({"error": {"message": string, "type": string, ...}}).
 */
#include <jansson.h>
#include <string.h>

#include "front.h"
#include "fuzz.h"

static ms_model *model;
static ms_context *ctx;
static ms_chat *tmpl[4];

int fuzz_http_init(void) {
    ms_error err;
    if (ms_model_load(fuzz_fixture("tiny/qwen35moe/qwen35moe-f32.gguf"), NULL, &model, &err)) {
        fprintf(stderr, "fuzz_http: %s\n", err.msg);
        return -1;
    }
    ms_context_params cp;
    ms_context_params_default(&cp);
    cp.n_ctx = 256;
    cp.n_threads = 1;
    if (ms_context_new(model, &cp, &ctx, &err)) {
        fprintf(stderr, "fuzz_http: %s\n", err.msg);
        return -1;
    }
    const char *names[4] = {NULL, "chatml", "qwen3", "qwen35"};
    for (int i = 0; i < 4; i++)
        if (ms_chat_new(model, names[i], &tmpl[i], &err)) {
            fprintf(stderr, "fuzz_http: %s\n", err.msg);
            return -1;
        }
    return 0;
}

int fuzz_http_one(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int flags = data[0];
    const char *path = flags & 1 ? "/v1/completions" : "/v1/chat/completions";
    char *body = NULL;
    unsigned st = serve_check_request(model, ctx, tmpl[(flags >> 1) & 3], path, (const char *)data + 1, size - 1, &body);
    FUZZ_CHECK(st == 200 || st == 400 || st == 404 || st == 413 || st == 500, "status %u", st);
    if (st == 200) {
        FUZZ_CHECK(body == NULL, "an accepted request has an error body");
        return 0;
    }
    json_t *j = body ? json_loads(body, 0, NULL) : NULL;
    json_t *e = json_object_get(j, "error");
    FUZZ_CHECK(json_is_string(json_object_get(e, "message")) && json_is_string(json_object_get(e, "type")),
               "status %u with body %s", st, body ? body : "(none)");
    json_decref(j);
    free(body);
    return 0;
}

FUZZ_ENTRY(http)
