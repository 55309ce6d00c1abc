/* gguf_write.h - writes GGUF v3 files: metadata, tensor table, and tensor data that is either
 * in memory or produced on the fly by a callback, optionally split into parts
 * (PREFIX-00001-of-0000N.gguf, as llama.cpp's gguf-split names them).
 *
 * Not here: reading (gguf.c) or choosing weights (synth.c). Used by `moestream synth` and tests.
 */
#ifndef MS_GGUF_WRITE_H
#define MS_GGUF_WRITE_H

#include <stdint.h>

#include "gguf.h"

typedef struct gguf_writer gguf_writer;

/* Produces bytes [offset, offset + n) of a tensor's data into dst. */
typedef void (*gguf_fill_fn)(void *ud, uint8_t *dst, uint64_t offset, uint64_t n);

/* NULL on allocation failure. */
gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);

/* Adds a scalar: val points to a value of the type's C width (uint8_t, int32_t, float, ...; bool
 * as uint8_t; string as const char *). Returns 0, or -1 on allocation failure. */
int gguf_writer_kv(gguf_writer *w, const char *key, int type, const void *val);
/* Adds an array of n elements (strings: data is const char **). */
int gguf_writer_kv_arr(gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n);
/* Copies a key/value read by gguf.c (nested arrays are not copied: returns -1). */
int gguf_writer_kv_copy(gguf_writer *w, const gguf_kv *kv);

/* Adds a tensor of GGML type with ne[0..n_dims). Its bytes come from data (kept by pointer until
 * the write) or, when data is NULL, from fill(ud, ...). Returns 0, or -1 (bad type/shape, OOM). */
int gguf_writer_tensor(gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
                       const void *data, gguf_fill_fn fill, void *ud);

/* Writes the file at path when split_bytes is 0. Otherwise path is a prefix: parts named
 * PREFIX-0000i-of-0000N.gguf are written, a new part starting whenever the next tensor would take
 * a part's data beyond split_bytes; the first part holds all metadata, every part the split.*
 * keys. *n_parts (may be NULL) gets N. Returns MS_OK or a status with e filled. */
int gguf_writer_write(gguf_writer *w, const char *path, uint64_t split_bytes, int *n_parts, ms_err *e);

#endif
