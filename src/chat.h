/* chat.h - internals of chat.c shared with its tests and the front ends: a growable string and
 * JSON written the way the templates' `tojson` filter (Python's json.dumps) writes it.
 *
 * Not here: the public chat API (include/moestream.h: ms_chat_*), HTTP or terminal code.
 */
#ifndef MS_CHAT_H
#define MS_CHAT_H

#include <jansson.h>
#include <stddef.h>

#include "moestream.h"

/* A growable NUL-terminated string. A failed allocation sets oom and drops further appends. */
typedef struct ms_sbuf {
    char *s;
    size_t len, cap;
    int oom;
} ms_sbuf;

void sbuf_add(ms_sbuf *b, const char *s, size_t n);
void sbuf_adds(ms_sbuf *b, const char *s);
void sbuf_addf(ms_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_free(ms_sbuf *b);

/* Appends v as Python's json.dumps(v, ensure_ascii=False) writes it: ", " and ": " separators,
 * keys in their order, floats as Python's repr, non-ASCII text as it is. */
void chat_json_py(ms_sbuf *b, const json_t *v);
/* Appends v as Python's str(v) for a scalar (True, None, 1.5, text as is), else chat_json_py. */
void chat_json_str(ms_sbuf *b, const json_t *v);

#endif
