/* tokenizer.c - byte-level BPE with the Qwen pre-tokenizers, and detokenization. See tokenizer.h.
 *
 * The behaviour is llama.cpp's (src/llama-vocab.cpp, src/unicode.cpp) so that ids match it
 * exactly; comments mark the places where that means copying one of its quirks. Encoding a text:
 *   1. special tokens are cut out of the raw bytes (longest token text first);
 *   2. each remaining fragment is decoded to code points (bad bytes become U+FFFD) and split by
 *      the pre-tokenizer regex, written out by hand in pretok_next();
 *   3. each piece's bytes start as one symbol per byte (the GPT-2 byte-to-character mapping),
 *      and adjacent symbols are merged lowest merge rank first (leftmost on ties);
 *   4. a symbol that is no vocabulary token falls back to single-byte tokens.
 * Symbols and merges work on string ids: the vocabulary's, plus ids past n_vocab for strings
 * that only the merge list mentions, so an incomplete vocabulary merges like llama.cpp's
 * string-keyed tables would.
 */
#include "tokenizer.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "unicode.h"

enum pre_type { PRE_QWEN2, PRE_QWEN35 };

/* Per-token behaviour bits (tok->attr). */
enum {
    ATTR_MATCH_ALWAYS = 1,  /* user-defined: cut out of the text even without parse_special */
    ATTR_MATCH_SPECIAL = 2, /* control/unknown: cut out of the text with parse_special */
    ATTR_HIDDEN = 4,        /* piece shown only with render_special */
    ATTR_EOG = 8,           /* ends generation */
};

typedef struct merge_slot {
    uint64_t key;   /* left string id << 32 | right string id */
    int32_t rank1;  /* merge rank + 1; 0 marks an empty slot */
    int32_t result; /* string id of left+right */
} merge_slot;

struct ms_tokenizer {
    int n_vocab;
    int pre;        /* enum pre_type */
    int add_bos;
    int32_t bos, eos, eot, eom, pad;

    /* Strings by id: ids < n_vocab are the vocabulary, the rest merge-only strings. Each is
     * NUL-terminated in pool at str_off[id], str_len[id] bytes long. */
    int32_t n_str, cap_str;
    char *pool;
    size_t pool_len, pool_cap;
    size_t *str_off;
    uint32_t *str_len;
    int32_t *str_hash;      /* open addressing: string id + 1, 0 = empty */
    uint32_t str_hash_mask;

    merge_slot *merges;     /* open addressing on (left, right) */
    uint32_t merge_mask;

    uint8_t *type;          /* [n_vocab] enum ms_token_type, as in the file */
    uint8_t *attr;          /* [n_vocab] ATTR_* */
    char *piece_pool;       /* the pieces, NUL-terminated */
    size_t *piece_off;      /* [n_vocab + 1] */
    int max_piece;

    int32_t *specials;      /* ids with ATTR_MATCH_*, longest text first */
    int n_specials;

    char byte_chr[256][2];      /* GPT-2 bytes_to_unicode: byte -> its character, as UTF-8 */
    uint8_t byte_chr_len[256];
    int16_t chr_byte[324];      /* inverse: code point -> byte, or -1 */
    int32_t byte_sym[256];      /* string id of byte_chr[b], or -1 */
    int32_t raw_byte_tok[256];  /* token whose text is the single byte b, or -1 */
};

/* --- hashing --- */

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finalizer */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* FNV-1a: on the 151k Qwen vocabulary (short strings) it loaded faster than a word-at-a-time
 * hash did. */
static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static const char *str_ptr(const ms_tokenizer *t, int32_t id) { return t->pool + t->str_off[id]; }

/* Slot of the string s[0..n) in str_hash: the entry holding it, or the empty one where it would
 * go. */
static uint32_t str_slot(const ms_tokenizer *t, const char *s, size_t n) {
    uint32_t i = (uint32_t)hash_bytes(s, n) & t->str_hash_mask;
    for (;; i = (i + 1) & t->str_hash_mask) {
        int32_t id = t->str_hash[i] - 1;
        if (id < 0 || (t->str_len[id] == n && memcmp(str_ptr(t, id), s, n) == 0)) return i;
    }
}

static int32_t str_find(const ms_tokenizer *t, const char *s, size_t n) {
    return t->str_hash[str_slot(t, s, n)] - 1;
}

/* Sets the string s[0..n) to map to id (a repeated text maps to its last id, as llama.cpp's
 * token_to_id map does). */
static void str_map(ms_tokenizer *t, const char *s, size_t n, int32_t id) {
    t->str_hash[str_slot(t, s, n)] = id + 1;
}

static int str_hash_grow(ms_tokenizer *t) {
    uint32_t size = (t->str_hash_mask + 1) * 2;
    int32_t *h = ms_calloc(size, sizeof *h);
    if (!h) return -1;
    ms_free(t->str_hash);
    t->str_hash = h;
    t->str_hash_mask = size - 1;
    for (int32_t id = 0; id < t->n_str; id++) str_map(t, str_ptr(t, id), t->str_len[id], id);
    return 0;
}

/* Appends a new string (no hashing). Returns its id or -1 when out of memory. */
static int32_t str_append(ms_tokenizer *t, const char *s, size_t n) {
    if (n > UINT32_MAX - 1 || t->n_str == INT32_MAX - 1) return -1;
    if (t->n_str == t->cap_str) {
        int32_t cap = t->cap_str > INT32_MAX / 2 ? INT32_MAX - 1 : t->cap_str * 2;
        size_t *o = ms_realloc(t->str_off, (size_t)cap * sizeof *o);
        if (!o) return -1;
        t->str_off = o;
        uint32_t *l = ms_realloc(t->str_len, (size_t)cap * sizeof *l);
        if (!l) return -1;
        t->str_len = l;
        t->cap_str = cap;
    }
    if (t->pool_cap - t->pool_len < n + 1) {
        size_t cap = t->pool_cap * 2 + n + 1;
        char *p = ms_realloc(t->pool, cap);
        if (!p) return -1;
        t->pool = p;
        t->pool_cap = cap;
    }
    memcpy(t->pool + t->pool_len, s, n);
    t->pool[t->pool_len + n] = 0;
    t->str_off[t->n_str] = t->pool_len;
    t->str_len[t->n_str] = (uint32_t)n;
    t->pool_len += n + 1;
    return t->n_str++;
}

/* Id of the string s[0..n), adding it (as a merge-only string) if new. -1 when out of memory. */
static int32_t str_intern(ms_tokenizer *t, const char *s, size_t n) {
    int32_t id = str_find(t, s, n);
    if (id >= 0) return id;
    if ((uint64_t)(t->n_str + 1) * 2 > (uint64_t)t->str_hash_mask + 1 && str_hash_grow(t))
        return -1;
    id = str_append(t, s, n);
    if (id >= 0) str_map(t, s, n, id);
    return id;
}

static const merge_slot *merge_find(const ms_tokenizer *t, int32_t left, int32_t right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t i = (uint32_t)hash_u64(key) & t->merge_mask;
    for (;;) {
        const merge_slot *m = &t->merges[i];
        if (!m->rank1) return NULL;
        if (m->key == key) return m;
        i = (i + 1) & t->merge_mask;
    }
}

static void merge_add(ms_tokenizer *t, int32_t left, int32_t right, int32_t rank, int32_t result) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t i = (uint32_t)hash_u64(key) & t->merge_mask;
    while (t->merges[i].rank1) {
        if (t->merges[i].key == key) return; /* a repeated pair keeps its first (lowest) rank */
        i = (i + 1) & t->merge_mask;
    }
    t->merges[i] = (merge_slot){key, rank + 1, result};
}

/* --- loading --- */

/* Token texts that llama.cpp treats as control tokens whatever their type in the file (it looks
 * for EOT, EOM and fill-in-the-middle tokens by text), and which of them end generation. */
static const struct {
    const char *text;
    int eog;
} known_tokens[] = {
    {"<|eot_id|>", 1}, {"<|im_end|>", 1}, {"<|end|>", 1}, {"<end_of_turn>", 1},
    {"<|endoftext|>", 1}, {"<|end_of_text|>", 1}, {"<EOT>", 1}, {"_<EOT>", 1}, {"[EOT]", 1},
    {"<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>", 1},
    {"<end_of_utterance>", 1}, {"<|eom_id|>", 1},
    /* fill-in-the-middle: pad, repo and file-separator tokens end generation too */
    {"<|fim_pad|>", 1}, {"<fim-pad>", 1}, {"<fim_pad>", 1}, {"<PAD>", 1}, {"[PAD]", 1},
    {"<|fim_repo|>", 1}, {"<|repo_name|>", 1}, {"<fim-repo>", 1}, {"<REPO>", 1},
    {"<reponame>", 1}, {"<|file_sep|>", 1},
    {"<|fim_prefix|>", 0}, {"<fim-prefix>", 0}, {"<fim_prefix>", 0}, {"<PRE>", 0},
    {"\xe2\x96\x81<PRE>", 0}, {"<|code_prefix|>", 0}, {"<|prefix|>", 0},
    {"<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", 0},
    {"<|fim_suffix|>", 0}, {"<fim-suffix>", 0}, {"<fim_suffix>", 0}, {"<SUF>", 0},
    {"\xe2\x96\x81<SUF>", 0}, {"<|code_suffix|>", 0}, {"<|suffix|>", 0},
    {"<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>", 0},
    {"<|fim_middle|>", 0}, {"<fim-middle>", 0}, {"<fim_middle>", 0}, {"<MID>", 0},
    {"\xe2\x96\x81<MID>", 0}, {"<|code_middle|>", 0}, {"<|middle|>", 0},
    {"<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>", 0},
    /* EOG only (llama.cpp's list of end-of-generation texts) */
    {"<|return|>", 1}, {"<|call|>", 1}, {"<|flush|>", 1}, {"<|calls|>", 1}, {"</s>", 1},
    {"[EOS]", 1}, {"<eos>", 1}, {"<turn|>", 1}, {"<|tool_response>", 1}, {"[e~[", 1},
};

static void init_byte_tables(ms_tokenizer *t) {
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
     * for U+0100.. in byte order, so every byte has a visible character. */
    int next = 256;
    memset(t->chr_byte, 0xff, sizeof t->chr_byte);
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
        uint32_t cp = keep ? (uint32_t)b : (uint32_t)next++;
        t->byte_chr_len[b] = (uint8_t)uc_encode(cp, t->byte_chr[b]);
        t->chr_byte[cp] = (int16_t)b;
    }
}

/* Appends the piece of a token whose text is byte-level encoded (each character one byte).
 * A character outside the byte alphabet is kept as its UTF-8 (llama.cpp prints a marker). */
static size_t decode_byte_level(const ms_tokenizer *t, const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int len;
        uint32_t cp = uc_decode_lenient((const unsigned char *)s + i, n - i, &len);
        if (cp < 324 && t->chr_byte[cp] >= 0) {
            out[o++] = (char)t->chr_byte[cp];
        } else {
            memcpy(out + o, s + i, (size_t)len);
            o += (size_t)len;
        }
        i += (size_t)len;
    }
    return o;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static int build_pieces(ms_tokenizer *t) {
    size_t cap = 1;
    for (int id = 0; id < t->n_vocab; id++) cap += t->str_len[id] + 1;
    t->piece_pool = ms_malloc(cap);
    t->piece_off = ms_malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off);
    if (!t->piece_pool || !t->piece_off) return -1;
    size_t o = 0;
    for (int id = 0; id < t->n_vocab; id++) {
        const char *s = str_ptr(t, id);
        size_t n = t->str_len[id];
        t->piece_off[id] = o;
        if (t->attr[id] & ATTR_HIDDEN || t->type[id] == MS_TOKEN_USER_DEFINED) {
            memcpy(t->piece_pool + o, s, n);
            o += n;
        } else if (t->type[id] == MS_TOKEN_NORMAL) {
            o += decode_byte_level(t, s, n, t->piece_pool + o);
        } else if (t->type[id] == MS_TOKEN_BYTE) {
            int hi = n == 6 ? hexval(s[3]) : -1, lo = n == 6 ? hexval(s[4]) : -1;
            if (n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hi >= 0 && lo >= 0)
                t->piece_pool[o++] = (char)(hi << 4 | lo);
            else
                o += decode_byte_level(t, s, n, t->piece_pool + o);
        }
        /* unused, undefined: no piece (llama.cpp renders nothing for them) */
        t->piece_pool[o++] = 0;
        size_t len = o - 1 - t->piece_off[id];
        if (len > (size_t)t->max_piece) t->max_piece = len > INT_MAX / 8 ? INT_MAX / 8 : (int)len;
    }
    t->piece_off[t->n_vocab] = o;
    return 0;
}

typedef struct special_key {
    uint32_t len;
    int32_t id;
} special_key;

static int special_cmp(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int build_specials(ms_tokenizer *t) {
    int n = 0;
    for (int id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (ATTR_MATCH_ALWAYS | ATTR_MATCH_SPECIAL)) n++;
    special_key *keys = ms_malloc((size_t)n * sizeof *keys);
    t->specials = ms_malloc((size_t)n * sizeof *t->specials);
    if (!keys || !t->specials) {
        ms_free(keys);
        return -1;
    }
    n = 0;
    for (int id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (ATTR_MATCH_ALWAYS | ATTR_MATCH_SPECIAL))
            keys[n++] = (special_key){t->str_len[id], id};
    /* llama.cpp sorts by length only (unstable); equal lengths go by id here. */
    qsort(keys, (size_t)n, sizeof *keys, special_cmp);
    for (int i = 0; i < n; i++) t->specials[i] = keys[i].id;
    t->n_specials = n;
    ms_free(keys);
    return 0;
}

static int get_string_array(const gguf_file *f, const char *key, const gguf_kv **out, ms_err *e) {
    const gguf_kv *kv = gguf_get(f, key);
    if (!kv) return ms_fail(e, MS_ERR_FORMAT, "tokenizer: %s is missing", key);
    if (kv->type != GGUF_ARRAY || kv->v.arr.type != GGUF_STRING)
        return ms_fail(e, MS_ERR_FORMAT, "tokenizer: %s should be an array of strings, found %s",
                       key, gguf_vtype_name(kv->type == GGUF_ARRAY ? kv->v.arr.type : kv->type));
    *out = kv;
    return MS_OK;
}

static int32_t special_id(const gguf_file *f, const char *key, int n_vocab) {
    uint32_t v;
    if (gguf_get_u32(f, key, &v) || v >= (uint32_t)n_vocab) return -1;
    return (int32_t)v;
}

/* 1 if kv is the string value s. */
static int kv_str_is(const gguf_kv *kv, const char *s) {
    return kv->v.s.len == strlen(s) && memcmp(kv->v.s.ptr, s, kv->v.s.len) == 0;
}

static int check_model(const gguf_file *f, int *pre, ms_err *e) {
    const gguf_kv *model = gguf_get(f, "tokenizer.ggml.model");
    if (!model || model->type != GGUF_STRING)
        return ms_fail(e, MS_ERR_FORMAT, "tokenizer: tokenizer.ggml.model is missing or not a "
                       "string (no tokenizer in this file)");
    if (!kv_str_is(model, "gpt2"))
        return ms_fail(e, MS_ERR_UNSUPPORTED, "tokenizer: tokenizer.ggml.model \"%.*s\" is not "
                       "supported (only \"gpt2\", byte-level BPE)",
                       (int)MS_MIN(model->v.s.len, 100), model->v.s.ptr);
    const gguf_kv *name = gguf_get(f, "tokenizer.ggml.pre");
    if (!name || name->type != GGUF_STRING)
        return ms_fail(e, MS_ERR_UNSUPPORTED, "tokenizer: tokenizer.ggml.pre is missing; "
                       "supported pre-tokenizers are \"qwen2\" and \"qwen35\"");
    if (kv_str_is(name, "qwen2") || kv_str_is(name, "deepseek-r1-qwen")) *pre = PRE_QWEN2;
    else if (kv_str_is(name, "qwen35")) *pre = PRE_QWEN35;
    else
        return ms_fail(e, MS_ERR_UNSUPPORTED, "tokenizer: pre-tokenizer tokenizer.ggml.pre = "
                       "\"%.*s\" is not supported (supported: \"qwen2\", \"qwen35\")",
                       (int)MS_MIN(name->v.s.len, 100), name->v.s.ptr);
    return MS_OK;
}

static int load_vocab(ms_tokenizer *t, const gguf_file *f, ms_err *e) {
    const gguf_kv *toks = NULL;
    int rc = get_string_array(f, "tokenizer.ggml.tokens", &toks, e);
    if (rc) return rc;
    if (toks->v.arr.n == 0 || toks->v.arr.n > INT32_MAX / 4)
        return ms_fail(e, MS_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens has %llu entries",
                       (unsigned long long)toks->v.arr.n);
    int n = (int)toks->v.arr.n;
    const gguf_kv *types = gguf_get(f, "tokenizer.ggml.token_type");
    if (types && (types->type != GGUF_ARRAY || types->v.arr.n < (uint64_t)n))
        return ms_fail(e, MS_ERR_FORMAT, "tokenizer: tokenizer.ggml.token_type should be an array "
                       "of %d integers", n);

    size_t bytes = 0;
    for (int i = 0; i < n; i++) bytes += toks->v.arr.strs[i].len + 1;
    uint32_t hsize = 1024;
    while (hsize < (uint32_t)n * 2) hsize *= 2;
    t->n_vocab = n;
    t->cap_str = n + 64;
    t->pool_cap = bytes + 1024;
    t->pool = ms_malloc(t->pool_cap);
    t->str_off = ms_malloc((size_t)t->cap_str * sizeof *t->str_off);
    t->str_len = ms_malloc((size_t)t->cap_str * sizeof *t->str_len);
    t->str_hash = ms_calloc(hsize, sizeof *t->str_hash);
    t->str_hash_mask = hsize - 1;
    t->type = ms_malloc((size_t)n);
    t->attr = ms_calloc((size_t)n, 1);
    if (!t->pool || !t->str_off || !t->str_len || !t->str_hash || !t->type || !t->attr)
        return ms_fail(e, MS_ERR_NOMEM, "tokenizer: out of memory for %d tokens", n);

    for (int id = 0; id < n; id++) {
        const gguf_str *s = &toks->v.arr.strs[id];
        char empty[32];
        const char *p = s->ptr;
        size_t len = s->len;
        if (len == 0) { /* llama.cpp's name for an empty token */
            len = (size_t)snprintf(empty, sizeof empty, "[EMPTY_%d]", id);
            p = empty;
        }
        if (str_append(t, p, len) != id)
            return ms_fail(e, MS_ERR_NOMEM, "tokenizer: out of memory for token %d", id);
        str_map(t, p, len, id);
        uint64_t ty = MS_TOKEN_NORMAL;
        if (types && (gguf_arr_u64(types, (uint64_t)id, &ty) || ty > MS_TOKEN_BYTE))
            ty = MS_TOKEN_UNDEFINED;
        t->type[id] = (uint8_t)ty;
    }
    return MS_OK;
}

static int load_merges(ms_tokenizer *t, const gguf_file *f, ms_err *e) {
    const gguf_kv *mk = NULL;
    int rc = get_string_array(f, "tokenizer.ggml.merges", &mk, e);
    if (rc) return rc;
    if (mk->v.arr.n > INT32_MAX / 4)
        return ms_fail(e, MS_ERR_FORMAT, "tokenizer: %llu merges is too many",
                       (unsigned long long)mk->v.arr.n);
    int n = (int)mk->v.arr.n;
    uint32_t size = 1024; /* load factor at most 2/3: the table is 4 MB for 151k merges */
    while (size < (uint32_t)n + (uint32_t)n / 2) size *= 2;
    t->merges = ms_calloc(size, sizeof *t->merges);
    t->merge_mask = size - 1;
    size_t longest = 0;
    for (int i = 0; i < n; i++) longest = MS_MAX(longest, mk->v.arr.strs[i].len);
    char *cat = ms_malloc(longest + 1);
    if (!t->merges || !cat) {
        ms_free(cat);
        return ms_fail(e, MS_ERR_NOMEM, "tokenizer: out of memory for %d merges", n);
    }
    for (int rank = 0; rank < n; rank++) {
        const char *s = mk->v.arr.strs[rank].ptr;
        size_t len = mk->v.arr.strs[rank].len;
        /* "left right", split at the first space after the first byte (as llama.cpp does);
         * an entry without one can never apply. */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) continue;
        size_t nl = (size_t)(sp - s), nr = len - nl - 1;
        memcpy(cat, s, nl);
        memcpy(cat + nl, sp + 1, nr);
        int32_t left = str_intern(t, s, nl);
        int32_t right = left < 0 ? -1 : str_intern(t, sp + 1, nr);
        int32_t result = right < 0 ? -1 : str_intern(t, cat, nl + nr);
        if (result < 0) {
            ms_free(cat);
            return ms_fail(e, MS_ERR_NOMEM, "tokenizer: out of memory for merge %d", rank);
        }
        merge_add(t, left, right, rank, result);
    }
    ms_free(cat);
    return MS_OK;
}

static void mark_tokens(ms_tokenizer *t) {
    for (int id = 0; id < t->n_vocab; id++) {
        int ty = t->type[id];
        if (ty == MS_TOKEN_CONTROL || ty == MS_TOKEN_UNKNOWN)
            t->attr[id] |= ATTR_MATCH_SPECIAL | ATTR_HIDDEN;
        else if (ty == MS_TOKEN_USER_DEFINED)
            t->attr[id] |= ATTR_MATCH_ALWAYS;
    }
    for (size_t k = 0; k < sizeof known_tokens / sizeof known_tokens[0]; k++) {
        int32_t id = tokenizer_find(t, known_tokens[k].text);
        if (id < 0) continue;
        t->attr[id] = (uint8_t)((t->attr[id] & ~ATTR_MATCH_ALWAYS) | ATTR_MATCH_SPECIAL |
                                ATTR_HIDDEN | (known_tokens[k].eog ? ATTR_EOG : 0));
    }
}

ms_tokenizer *tokenizer_load(const gguf_file *f, ms_err *e) {
    int pre = -1;
    if (check_model(f, &pre, e)) return NULL;
    ms_tokenizer *t = ms_calloc(1, sizeof *t);
    if (!t) {
        ms_fail(e, MS_ERR_NOMEM, "tokenizer: out of memory");
        return NULL;
    }
    t->pre = pre;
    init_byte_tables(t);
    if (load_vocab(t, f, e) || load_merges(t, f, e)) {
        tokenizer_free(t);
        return NULL;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_sym[b] = str_find(t, t->byte_chr[b], t->byte_chr_len[b]);
        int32_t id = str_find(t, &c, 1);
        t->raw_byte_tok[b] = id < t->n_vocab ? id : -1;
    }
    t->bos = special_id(f, "tokenizer.ggml.bos_token_id", t->n_vocab);
    t->eos = special_id(f, "tokenizer.ggml.eos_token_id", t->n_vocab);
    t->eot = special_id(f, "tokenizer.ggml.eot_token_id", t->n_vocab);
    t->eom = special_id(f, "tokenizer.ggml.eom_token_id", t->n_vocab);
    t->pad = special_id(f, "tokenizer.ggml.padding_token_id", t->n_vocab);
    if (gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &t->add_bos)) t->add_bos = 0;
    if (t->add_bos && t->bos < 0) t->add_bos = 0;
    mark_tokens(t);
    const char *eog_keys[] = {"tokenizer.ggml.fim_pad_token_id", "tokenizer.ggml.fim_rep_token_id",
                              "tokenizer.ggml.fim_sep_token_id"};
    int32_t eog[] = {t->eos, t->eot, t->eom, -1, -1, -1};
    for (int k = 0; k < 3; k++) eog[3 + k] = special_id(f, eog_keys[k], t->n_vocab);
    for (int k = 0; k < 6; k++)
        if (eog[k] >= 0) t->attr[eog[k]] |= ATTR_EOG;
    if (build_pieces(t) || build_specials(t)) {
        ms_fail(e, MS_ERR_NOMEM, "tokenizer: out of memory");
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

void tokenizer_free(ms_tokenizer *t) {
    if (!t) return;
    ms_free(t->pool);
    ms_free(t->str_off);
    ms_free(t->str_len);
    ms_free(t->str_hash);
    ms_free(t->merges);
    ms_free(t->type);
    ms_free(t->attr);
    ms_free(t->piece_pool);
    ms_free(t->piece_off);
    ms_free(t->specials);
    ms_free(t);
}

/* --- pre-tokenizer --- */

/* End (exclusive) of the pre-token starting at cp[pos] (pos < n): the first alternative of the
 * Qwen2 regex that matches there,
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} | ?[^\s\p{L}\p{N}]+[\r\n]*
 *   | \s*[\r\n]+ | \s+(?!\S) | \s+
 * With marks (Qwen3.5), \p{L} in the letter run becomes [\p{L}\p{M}] and the punctuation run
 * excludes \p{M} too. fl[i] holds uc_flags(cp[i]). */
static size_t pretok_next(const uint32_t *cp, const uint8_t *fl, size_t pos, size_t n, int marks) {
    const uint32_t c = cp[pos];
    const unsigned f = fl[pos];
    const unsigned word = UC_L | (marks ? UC_M : 0u);

    /* (?i:'s|'t|'re|'ve|'m|'ll|'d): only A-Z lower-case to these letters (checked when the
     * tables are generated), so ASCII case folding is exact. */
    if (c == '\'' && pos + 1 < n) {
        uint32_t c1 = cp[pos + 1] | (cp[pos + 1] - 'A' < 26u ? 0x20u : 0u);
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return pos + 2;
        if (pos + 2 < n) {
            uint32_t c2 = cp[pos + 2] | (cp[pos + 2] - 'A' < 26u ? 0x20u : 0u);
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                return pos + 3;
        }
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ : a letter run, with at most one other character in front */
    if (c != '\r' && c != '\n' && !(f & UC_N) &&
        ((f & word) || (pos + 1 < n && (fl[pos + 1] & word)))) {
        size_t i = pos + 1;
        while (i < n && (fl[i] & word)) i++;
        return i;
    }
    /* \p{N} : digits one at a time */
    if (f & UC_N) return pos + 1;
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' : a run of punctuation, symbols, marks (Qwen2), controls and
     * unassigned code points, with one space in front. A lone space at the very end also lands
     * here, as in llama.cpp; the regex gives it the same token through \s+. */
    const unsigned stop = UC_WS | UC_N | word;
    size_t i = pos + (c == ' ');
    if (i == n || !(fl[i] & stop)) {
        while (i < n && !(fl[i] & stop)) i++;
        while (i < n && (cp[i] == '\r' || cp[i] == '\n')) i++;
        return i;
    }
    /* Whitespace run: \s*[\r\n]+ ends after its last line break; otherwise \s+(?!\S) leaves the
     * last space to the word that follows; at the end of the text \s+ takes it all. */
    size_t end_nl = 0;
    for (i = pos; i < n && (fl[i] & UC_WS); i++)
        if (cp[i] == '\r' || cp[i] == '\n') end_nl = i + 1;
    if (end_nl) return end_nl;
    if (i - pos > 1 && i < n) return i - 1;
    if (i > pos) return i;
    return pos + 1; /* nothing matched: the code point alone (unreachable for these regexes) */
}

/* --- BPE --- */

typedef struct ids_buf {
    int32_t *v;
    size_t n, cap;
    int oom;
} ids_buf;

static void ids_push(ids_buf *b, int32_t id) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *v = b->oom ? NULL : ms_realloc(b->v, cap * sizeof *v);
        if (!v) {
            b->oom = 1;
            return;
        }
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = id;
}

typedef struct bigram {
    int32_t rank, left, right, size, result;
} bigram;

/* Scratch for one fragment: per code point, and per byte of the longest word. */
typedef struct scratch {
    uint32_t *cp;
    uint8_t *fl;
    size_t *off;     /* [n_cp + 1] byte offset of each code point in text */
    char *text;      /* the fragment re-encoded from its code points */
    int32_t *sym, *len, *prev, *next;
    bigram *heap;
    size_t n_heap;
} scratch;

static int bigram_less(const bigram *a, const bigram *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(scratch *s, bigram g) {
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_less(&g, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = g;
}

static bigram heap_pop(scratch *s) {
    bigram top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!bigram_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static void try_merge(const ms_tokenizer *t, scratch *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0 || s->sym[l] < 0 || s->sym[r] < 0) return;
    const merge_slot *m = merge_find(t, s->sym[l], s->sym[r]);
    if (m) heap_push(s, (bigram){m->rank1 - 1, l, r, s->len[l] + s->len[r], m->result});
}

/* Emits the tokens of one symbol: its token, or single-byte tokens for the bytes of its
 * byte-level text when it is no vocabulary token (llama.cpp's fallback; bytes without such a
 * token are dropped, as there). */
static void emit_symbol(const ms_tokenizer *t, const unsigned char *w, int32_t sym, int32_t len,
                        ids_buf *out) {
    if (sym >= 0 && sym < t->n_vocab) {
        ids_push(out, sym);
        return;
    }
    for (int32_t k = 0; k < len; k++)
        for (int j = 0; j < t->byte_chr_len[w[k]]; j++) {
            int32_t id = t->raw_byte_tok[(unsigned char)t->byte_chr[w[k]][j]];
            if (id >= 0) ids_push(out, id);
        }
}

/* BPE over one pre-token: symbol i starts as byte w[i] and covers bytes [i, i + len[i]). The
 * lowest-ranked adjacent pair is merged first, the leftmost among equals; an entry is stale
 * once either side has changed, which its recorded size detects (symbols only grow). */
static void bpe_word(const ms_tokenizer *t, const unsigned char *w, int32_t n, scratch *s,
                     ids_buf *out) {
    if (n == 1) {
        emit_symbol(t, w, t->byte_sym[w[0]], 1, out);
        return;
    }
    for (int32_t i = 0; i < n; i++) {
        s->sym[i] = t->byte_sym[w[i]];
        s->len[i] = 1;
        s->prev[i] = i - 1;
        s->next[i] = i + 1 < n ? i + 1 : -1;
    }
    s->n_heap = 0;
    for (int32_t i = 0; i + 1 < n; i++) try_merge(t, s, i, i + 1);
    while (s->n_heap) {
        bigram g = heap_pop(s);
        int32_t l = g.left, r = g.right;
        if (!s->len[l] || !s->len[r] || s->next[l] != r || s->len[l] + s->len[r] != g.size)
            continue;
        s->sym[l] = g.result;
        s->len[l] += s->len[r];
        s->len[r] = 0;
        s->next[l] = s->next[r];
        if (s->next[r] >= 0) s->prev[s->next[r]] = l;
        try_merge(t, s, s->prev[l], l);
        try_merge(t, s, l, s->next[l]);
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) emit_symbol(t, w + i, s->sym[i], s->len[i], out);
}

static void scratch_free(scratch *s) {
    ms_free(s->cp);
    ms_free(s->fl);
    ms_free(s->off);
    ms_free(s->text);
    ms_free(s->sym);
    ms_free(s->len);
    ms_free(s->prev);
    ms_free(s->next);
    ms_free(s->heap);
    memset(s, 0, sizeof *s);
}

/* Encodes one fragment of raw text (no special tokens in it). Returns 0, or -1 out of memory. */
static int encode_fragment(const ms_tokenizer *t, const unsigned char *src, size_t n,
                           ids_buf *out) {
    scratch s = {0};
    s.cp = ms_malloc(n * sizeof *s.cp);
    s.fl = ms_malloc(n);
    s.off = ms_malloc((n + 1) * sizeof *s.off);
    s.text = ms_malloc(3 * n); /* a bad byte grows to U+FFFD's three */
    if (!s.cp || !s.fl || !s.off || !s.text) goto oom;

    /* Decode, and re-encode from the code points: words are cut from this text, so bad bytes
     * reach BPE as U+FFFD, exactly as in llama.cpp. */
    size_t n_cp = 0, o = 0;
    for (size_t i = 0; i < n;) {
        int len;
        uint32_t c = uc_decode_lenient(src + i, n - i, &len);
        i += (size_t)len;
        s.cp[n_cp] = c;
        s.fl[n_cp] = (uint8_t)uc_flags(c);
        s.off[n_cp++] = o;
        o += (size_t)uc_encode(c, s.text + o);
    }
    s.off[n_cp] = o;

    /* The longest pre-token bounds the BPE scratch. */
    size_t longest = 0;
    const int marks = t->pre == PRE_QWEN35;
    for (size_t pos = 0, end; pos < n_cp; pos = end) {
        end = pretok_next(s.cp, s.fl, pos, n_cp, marks);
        longest = MS_MAX(longest, s.off[end] - s.off[pos]);
    }
    s.sym = ms_malloc(longest * sizeof *s.sym);
    s.len = ms_malloc(longest * sizeof *s.len);
    s.prev = ms_malloc(longest * sizeof *s.prev);
    s.next = ms_malloc(longest * sizeof *s.next);
    s.heap = ms_malloc(3 * longest * sizeof *s.heap); /* n-1 pairs, then at most 2 per merge */
    if (!s.sym || !s.len || !s.prev || !s.next || !s.heap) goto oom;

    for (size_t pos = 0, end; pos < n_cp; pos = end) {
        end = pretok_next(s.cp, s.fl, pos, n_cp, marks);
        bpe_word(t, (const unsigned char *)s.text + s.off[pos], (int32_t)(s.off[end] - s.off[pos]),
                 &s, out);
    }
    scratch_free(&s);
    return out->oom ? -1 : 0;
oom:
    scratch_free(&s);
    return -1;
}

/* --- special tokens --- */

typedef struct frag {
    int32_t id;      /* a special token, or -1 for raw text */
    size_t off, len; /* raw text: bytes [off, off + len) */
} frag;

typedef struct frag_list {
    frag *v;
    size_t n, cap;
} frag_list;

static int frag_push(frag_list *l, frag f) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        frag *v = ms_realloc(l->v, cap * sizeof *v);
        if (!v) return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = f;
    return 0;
}

/* Cuts every occurrence of special token id out of the raw fragments of *l, left to right
 * (llama.cpp's tokenizer_st_partition, one token at a time, longest tokens first). */
static int split_on_special(const ms_tokenizer *t, const char *text, frag_list *l, int32_t id,
                            frag_list *tmp) {
    const char *pat = str_ptr(t, id);
    size_t plen = t->str_len[id];
    int found = 0;
    for (size_t k = 0; k < l->n && !found; k++)
        found = l->v[k].id < 0 && memmem(text + l->v[k].off, l->v[k].len, pat, plen) != NULL;
    if (!found) return 0;
    tmp->n = 0;
    for (size_t k = 0; k < l->n; k++) {
        frag f = l->v[k];
        if (f.id >= 0) {
            if (frag_push(tmp, f)) return -1;
            continue;
        }
        size_t off = f.off, end = f.off + f.len;
        const char *m;
        while ((m = memmem(text + off, end - off, pat, plen)) != NULL) {
            size_t at = (size_t)(m - text);
            if (at > off && frag_push(tmp, (frag){-1, off, at - off})) return -1;
            if (frag_push(tmp, (frag){id, 0, 0})) return -1;
            off = at + plen;
        }
        if (off < end && frag_push(tmp, (frag){-1, off, end - off})) return -1;
    }
    frag_list swap = *l;
    *l = *tmp;
    *tmp = swap;
    return 0;
}

int tokenizer_encode(const ms_tokenizer *t, const char *text, size_t len, int parse_special,
                     int32_t **ids, int *n_ids, ms_err *e) {
    if (!t || !ids || !n_ids || (!text && len))
        return ms_fail(e, MS_ERR_ARG, "tokenizer_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    if (len > INT32_MAX / 4)
        return ms_fail(e, MS_ERR_ARG, "tokenizer_encode: text of %zu bytes is too long (max %d)",
                       len, INT32_MAX / 4);
    ids_buf out = {0};
    frag_list frags = {0}, tmp = {0};
    int rc = MS_OK;
    if (len && frag_push(&frags, (frag){-1, 0, len})) goto oom;
    for (int k = 0; k < t->n_specials && frags.n; k++) {
        int32_t id = t->specials[k];
        if (!(t->attr[id] & (parse_special ? ATTR_MATCH_ALWAYS | ATTR_MATCH_SPECIAL
                                           : ATTR_MATCH_ALWAYS)))
            continue;
        if (split_on_special(t, text, &frags, id, &tmp)) goto oom;
    }
    for (size_t k = 0; k < frags.n; k++) {
        if (frags.v[k].id >= 0) ids_push(&out, frags.v[k].id);
        else if (encode_fragment(t, (const unsigned char *)text + frags.v[k].off, frags.v[k].len,
                                 &out))
            goto oom;
    }
    if (out.oom) goto oom;
    if (!out.v && !(out.v = ms_malloc(sizeof *out.v))) goto oom;
    *ids = out.v;
    *n_ids = (int)out.n;
    goto done;
oom:
    ms_free(out.v);
    rc = ms_fail(e, MS_ERR_NOMEM, "tokenizer_encode: out of memory (%zu bytes of text)", len);
done:
    ms_free(frags.v);
    ms_free(tmp.v);
    return rc;
}

/* --- queries --- */

int tokenizer_n_vocab(const ms_tokenizer *t) { return t->n_vocab; }

static int in_range(const ms_tokenizer *t, int32_t id) { return id >= 0 && id < t->n_vocab; }

const char *tokenizer_token_text(const ms_tokenizer *t, int32_t id) {
    return in_range(t, id) ? str_ptr(t, id) : NULL;
}

int tokenizer_token_type(const ms_tokenizer *t, int32_t id) {
    return in_range(t, id) ? t->type[id] : -1;
}

const char *tokenizer_token_piece(const ms_tokenizer *t, int32_t id, int render_special,
                                  size_t *len) {
    *len = 0;
    if (!in_range(t, id)) return NULL;
    if ((t->attr[id] & ATTR_HIDDEN) && !render_special) return "";
    *len = t->piece_off[id + 1] - t->piece_off[id] - 1;
    return t->piece_pool + t->piece_off[id];
}

int tokenizer_token_bytes(const ms_tokenizer *t, int32_t id, int render_special, char *buf,
                          int cap) {
    size_t n;
    const char *p = tokenizer_token_piece(t, id, render_special, &n);
    if (!p) return -1;
    if (cap > 0) memcpy(buf, p, MS_MIN(n, (size_t)cap));
    return (int)n;
}

int tokenizer_decode(const ms_tokenizer *t, const int32_t *ids, int n_ids, int render_special,
                     char **text, size_t *len, ms_err *e) {
    size_t total = 0, n;
    *text = NULL;
    if (len) *len = 0;
    for (int i = 0; i < n_ids; i++) {
        if (!tokenizer_token_piece(t, ids[i], render_special, &n))
            return ms_fail(e, MS_ERR_ARG, "tokenizer_decode: token id %d at position %d is out "
                           "of range (vocabulary of %d)", ids[i], i, t->n_vocab);
        total += n;
    }
    char *s = ms_malloc(total + 1);
    if (!s) return ms_fail(e, MS_ERR_NOMEM, "tokenizer_decode: out of memory");
    size_t o = 0;
    for (int i = 0; i < n_ids; i++) {
        const char *p = tokenizer_token_piece(t, ids[i], render_special, &n);
        memcpy(s + o, p, n);
        o += n;
    }
    s[o] = 0;
    *text = s;
    if (len) *len = o;
    return MS_OK;
}

int32_t tokenizer_find(const ms_tokenizer *t, const char *text) {
    int32_t id = str_find(t, text, strlen(text));
    return id < t->n_vocab ? id : -1;
}

int tokenizer_max_piece(const ms_tokenizer *t) { return t->max_piece; }
int32_t tokenizer_bos(const ms_tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const ms_tokenizer *t) { return t->eos; }
int32_t tokenizer_eot(const ms_tokenizer *t) { return t->eot; }
int32_t tokenizer_pad(const ms_tokenizer *t) { return t->pad; }
int tokenizer_add_bos(const ms_tokenizer *t) { return t->add_bos; }

int tokenizer_is_eog(const ms_tokenizer *t, int32_t id) {
    return in_range(t, id) && (t->attr[id] & ATTR_EOG);
}

const char *tokenizer_pre_name(const ms_tokenizer *t) {
    return t->pre == PRE_QWEN35 ? "qwen35" : "qwen2";
}

/* --- streaming detokenizer --- */

int detok_init(ms_detok *d, const ms_tokenizer *tok, int render_special, ms_err *e) {
    memset(d, 0, sizeof *d);
    d->tok = tok;
    d->render_special = render_special;
    size_t in_cap = (size_t)tok->max_piece + 4;
    d->in = ms_malloc(in_cap);
    d->out = ms_malloc(3 * in_cap + 1); /* each byte may become a 3-byte U+FFFD */
    if (!d->in || !d->out) {
        detok_free(d);
        return ms_fail(e, MS_ERR_NOMEM, "detok_init: out of memory");
    }
    d->out[0] = 0;
    return MS_OK;
}

static size_t put_replacement(char *out) {
    memcpy(out, "\xef\xbf\xbd", 3);
    return 3;
}

const char *detok_push(ms_detok *d, int32_t id, size_t *len) {
    size_t n_piece;
    const char *piece = tokenizer_token_piece(d->tok, id, d->render_special, &n_piece);
    size_t n = (size_t)d->n_held, o = 0;
    memcpy(d->in, d->held, n);
    if (piece) {
        memcpy(d->in + n, piece, n_piece);
        n += n_piece;
    }
    d->n_held = 0;
    const unsigned char *in = (const unsigned char *)d->in;
    for (size_t i = 0; i < n;) {
        int r = uc_utf8_check(in + i, n - i);
        if (r > 0) {
            memcpy(d->out + o, in + i, (size_t)r);
            o += (size_t)r;
            i += (size_t)r;
        } else if (r == 0) { /* a character still coming: hold it (at most 3 bytes) */
            d->n_held = (int)(n - i);
            memcpy(d->held, in + i, n - i);
            break;
        } else {
            o += put_replacement(d->out + o);
            i += (size_t)-r;
        }
    }
    d->out[o] = 0;
    *len = o;
    return d->out;
}

const char *detok_flush(ms_detok *d, size_t *len) {
    size_t o = 0;
    if (d->n_held) o += put_replacement(d->out); /* the held bytes are one incomplete character */
    d->n_held = 0;
    d->out[o] = 0;
    *len = o;
    return d->out;
}

void detok_free(ms_detok *d) {
    if (!d) return;
    ms_free(d->in);
    ms_free(d->out);
    d->in = d->out = NULL;
    d->n_held = 0;
}
