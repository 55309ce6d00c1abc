/* fuzz_tokenizer.c - fuzz target: the tokenizer on arbitrary bytes, with the real Qwen2 and
 * Qwen3.5 vocabularies (151k tokens, llama.cpp's vocab fixtures).
 *
 * Input: one flags byte, then the text. Flags: bit 0 picks the qwen35 vocabulary (else qwen2),
 * bit 1 parses special tokens, bit 2 renders them when decoding.
 * Invariants: encoding succeeds with ids in range; decoding them succeeds; without special-token
 * parsing, valid UTF-8 comes back byte for byte; the streaming detokenizer always writes valid
 * UTF-8, the same text as the whole decode when that is valid UTF-8.
 */
#include <string.h>

#include "fuzz.h"
#include "gguf.h"
#include "tokenizer.h"
#include "unicode.h"

static gguf_file *files[2];
static ms_tokenizer *toks[2];

int fuzz_tokenizer_init(void) {
    const char *names[2] = {"vocab/ggml-vocab-qwen2.gguf", "vocab/ggml-vocab-qwen35.gguf"};
    for (int i = 0; i < 2; i++) {
        ms_err e;
        files[i] = gguf_open(fuzz_fixture(names[i]), &e);
        if (!files[i] || !(toks[i] = tokenizer_load(files[i], &e))) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", e.msg);
            return -1;
        }
    }
    return 0;
}

int fuzz_tokenizer_one(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int flags = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    const ms_tokenizer *tok = toks[flags & 1];
    int parse_special = (flags >> 1) & 1, render_special = (flags >> 2) & 1;
    int nv = tokenizer_n_vocab(tok);

    int32_t *ids = NULL;
    int n = 0;
    ms_err e;
    FUZZ_CHECK(tokenizer_encode(tok, text, len, parse_special, &ids, &n, &e) == MS_OK, "encode: %s", e.msg);
    FUZZ_CHECK(ids != NULL && n >= 0 && (size_t)n <= 3 * len, "%d ids for %zu bytes", n, len);
    for (int i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < nv, "id %d out of range", ids[i]);

    char *back = NULL;
    size_t blen = 0;
    FUZZ_CHECK(tokenizer_decode(tok, ids, n, render_special, &back, &blen, &e) == MS_OK, "decode: %s", e.msg);
    if (!parse_special && uc_utf8_valid(text, len))
        FUZZ_CHECK(blen == len && !memcmp(back, text, len), "round trip: %zu bytes in, %zu out", len, blen);

    ms_detok d;
    FUZZ_CHECK(detok_init(&d, tok, render_special, &e) == MS_OK, "detok_init: %s", e.msg);
    char *out = malloc(blen * 3 + 16);
    size_t o = 0;
    for (int i = 0; i <= n; i++) {
        size_t k;
        const char *p = i < n ? detok_push(&d, ids[i], &k) : detok_flush(&d, &k);
        FUZZ_CHECK(p && o + k <= blen * 3 + 16, "detok piece of %zu bytes", k);
        memcpy(out + o, p, k);
        o += k;
    }
    FUZZ_CHECK(uc_utf8_valid(out, o), "the streaming detokenizer wrote invalid UTF-8");
    if (uc_utf8_valid(back, blen)) FUZZ_CHECK(o == blen && !memcmp(out, back, blen), "detok %zu bytes, decode %zu", o, blen);
    detok_push(&d, -1, &o); /* out-of-range ids add nothing */
    FUZZ_CHECK(o == 0, "an invalid id gave text");
    detok_free(&d);
    free(out);
    ms_free(back);
    ms_free(ids);
    return 0;
}

FUZZ_ENTRY(tokenizer)
