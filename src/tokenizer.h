/* tokenizer.h - text <-> token ids from a GGUF file's tokenizer metadata.
 *
 * Byte-level BPE (tokenizer.ggml.model = "gpt2") with the Qwen pre-tokenizers
 * (tokenizer.ggml.pre = "qwen2" or "qwen35"), giving the same ids as llama.cpp: special tokens
 * are cut out of the raw text first, the rest is split by the pre-tokenizer regex (hand-written,
 * with real Unicode categories) and each piece is merged by BPE rank.
 *
 * Not here: chat templates (chat.c) and sampling. Other tokenizer models (SentencePiece,
 * WordPiece, other pre-tokenizer regexes) are refused at load with MS_ERR_UNSUPPORTED.
 *
 * Glossary: a token's "text" is its vocabulary string as stored in the GGUF (byte-level encoded,
 * e.g. "Ġthe"); its "piece" is the bytes it stands for in the output (" the"). Pieces are raw
 * bytes: one token may hold half of a UTF-8 character, so display text through ms_detok.
 */
#ifndef MS_TOKENIZER_H
#define MS_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "gguf.h"
#include "util.h"

/* tokenizer.ggml.token_type values. */
enum ms_token_type {
    MS_TOKEN_UNDEFINED = 0,
    MS_TOKEN_NORMAL = 1,
    MS_TOKEN_UNKNOWN = 2,
    MS_TOKEN_CONTROL = 3,
    MS_TOKEN_USER_DEFINED = 4,
    MS_TOKEN_UNUSED = 5,
    MS_TOKEN_BYTE = 6,
};

typedef struct ms_tokenizer ms_tokenizer;

/* Builds the tokenizer from f's tokenizer.ggml.* metadata. Everything is copied: f may be closed
 * afterwards. Returns NULL with e filled on failure: MS_ERR_UNSUPPORTED (naming the value) for a
 * tokenizer.ggml.model other than "gpt2" or a tokenizer.ggml.pre other than "qwen2"/"qwen35",
 * MS_ERR_FORMAT for missing or ill-typed keys, MS_ERR_NOMEM. Free with tokenizer_free. */
ms_tokenizer *tokenizer_load(const gguf_file *f, ms_err *e);
void tokenizer_free(ms_tokenizer *tok);

/* Encodes len bytes of text (any bytes: invalid UTF-8 is encoded as llama.cpp does, each bad
 * byte as U+FFFD). With parse_special, control (and unknown) tokens written in the text become
 * those tokens; user-defined tokens always do, as in llama.cpp. Never adds BOS/EOS (see
 * tokenizer_add_bos). On success returns MS_OK and sets *ids (caller ms_free's, non-NULL even
 * when *n_ids is 0) and *n_ids; on failure returns the status (MS_ERR_NOMEM, MS_ERR_ARG). */
int tokenizer_encode(const ms_tokenizer *tok, const char *text, size_t len, int parse_special,
                     int32_t **ids, int *n_ids, ms_err *e);

/* Number of tokens in the vocabulary; valid ids are 0..n_vocab-1. */
int tokenizer_n_vocab(const ms_tokenizer *tok);
/* The token's vocabulary text (NUL-terminated, owned by tok), or NULL for an out-of-range id. */
const char *tokenizer_token_text(const ms_tokenizer *tok, int32_t id);
/* The token's enum ms_token_type, or -1 for an out-of-range id. */
int tokenizer_token_type(const ms_tokenizer *tok, int32_t id);
/* The token's piece: pointer to its bytes (owned by tok) and *len. Control and unknown tokens
 * give their text only with render_special, else ""; unused and undefined tokens give "";
 * out-of-range ids give NULL with *len = 0. */
const char *tokenizer_token_piece(const ms_tokenizer *tok, int32_t id, int render_special,
                                  size_t *len);
/* Copies the piece into buf (at most cap bytes, no NUL) and returns its full length, like
 * snprintf: a result > cap means buf was too small. Returns -1 for an out-of-range id. */
int tokenizer_token_bytes(const ms_tokenizer *tok, int32_t id, int render_special, char *buf,
                          int cap);
/* Concatenates the pieces of ids into a NUL-terminated malloc'd buffer (caller ms_free's),
 * raw bytes as they are. Out-of-range ids are an error (MS_ERR_ARG). Returns MS_OK or a status. */
int tokenizer_decode(const ms_tokenizer *tok, const int32_t *ids, int n_ids, int render_special,
                     char **text, size_t *len, ms_err *e);
/* The id of the token whose vocabulary text is exactly text (e.g. "<|im_start|>"), or -1. */
int32_t tokenizer_find(const ms_tokenizer *tok, const char *text);
/* Longest piece in bytes. */
int tokenizer_max_piece(const ms_tokenizer *tok);

/* Special ids from tokenizer.ggml.{bos,eos,eot,padding}_token_id, -1 where absent or invalid. */
int32_t tokenizer_bos(const ms_tokenizer *tok);
int32_t tokenizer_eos(const ms_tokenizer *tok);
int32_t tokenizer_eot(const ms_tokenizer *tok);
int32_t tokenizer_pad(const ms_tokenizer *tok);
/* 1 if prompts should start with BOS (tokenizer.ggml.add_bos_token; default 0 for gpt2). */
int tokenizer_add_bos(const ms_tokenizer *tok);
/* 1 if id ends generation: eos, eot, eom, and the tokens llama.cpp treats so by their text
 * (<|im_end|>, <|endoftext|>, <|eot_id|>, <|fim_pad|>, <|file_sep|>, ...). 0 otherwise,
 * including for out-of-range ids. */
int tokenizer_is_eog(const ms_tokenizer *tok, int32_t id);
/* "qwen2" or "qwen35". */
const char *tokenizer_pre_name(const ms_tokenizer *tok);

/* Streaming detokenizer: feed ids one at a time, get text that is always whole, valid UTF-8.
 * A character split across tokens is held back until it completes; bytes that can never form
 * a character come out as U+FFFD (one per maximal ill-formed subpart), as does anything still
 * held at flush. One owner; not thread-safe. */
typedef struct ms_detok {
    const ms_tokenizer *tok;
    int render_special;     /* show control tokens' text */
    unsigned char held[4];  /* the incomplete tail of a character */
    int n_held;
    char *in;               /* scratch: held bytes + one piece */
    char *out;              /* what the last push/flush returned */
} ms_detok;

/* Returns MS_OK or MS_ERR_NOMEM. Free with detok_free. */
int detok_init(ms_detok *d, const ms_tokenizer *tok, int render_special, ms_err *e);
/* Adds a token; returns the text now complete (possibly "", never NULL) and its length in *len.
 * The text is NUL-terminated, owned by d, and valid until the next call on d. Out-of-range ids
 * add nothing. */
const char *detok_push(ms_detok *d, int32_t id, size_t *len);
/* Ends the stream: returns what was held (as U+FFFD) and resets d for a new stream. */
const char *detok_flush(ms_detok *d, size_t *len);
/* Frees the buffers; d may be reused after detok_init. A zeroed ms_detok is fine to free. */
void detok_free(ms_detok *d);

#endif
