/* test_tokenizer.c - the tokenizer against llama.cpp's tokenizer tests (fixtures/vocab) and the
 * tiny models' reference ids, plus detokenization, bad input, special tokens, unsupported
 * tokenizers and allocation failures. Usage: test_tokenizer [FIXTURES_DIR] */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_write.h"
#include "testlib.h"
#include "tokenizer.h"
#include "unicode.h"
#include "util.h"

static int ids_equal(const int32_t *a, int na, const int *b, int nb) {
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static void print_ids(const char *what, const int32_t *v, int n) {
    fprintf(stderr, "  %s (%d):", what, n);
    for (int i = 0; i < n && i < 64; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, n > 64 ? " ...\n" : "\n");
}

static ms_tokenizer *load(const char *rel, gguf_file **gf) {
    ms_err e = {0};
    *gf = gguf_open(t_path(rel), &e);
    CHECK(*gf != NULL, "%s", e.msg);
    if (!*gf) return NULL;
    double t0 = ms_time();
    ms_tokenizer *tok = tokenizer_load(*gf, &e);
    double dt = ms_time() - t0;
    CHECK(tok != NULL, "%s: %s", rel, e.msg);
    if (tok) printf("  %s: %d tokens, pre %s, loaded in %.1f ms\n", rel, tokenizer_n_vocab(tok),
                    tokenizer_pre_name(tok), dt * 1e3);
    return tok;
}

/* Encodes and returns the ids (caller ms_free's), or NULL with a failed check. */
static int32_t *encode(const ms_tokenizer *tok, const char *s, size_t len, int special, int *n) {
    int32_t *ids = NULL;
    ms_err e = {0};
    int rc = tokenizer_encode(tok, s, len, special, &ids, n, &e);
    CHECK(rc == MS_OK && ids, "encode failed: %s", e.msg);
    return rc == MS_OK ? ids : NULL;
}

/* Decodes ids through the streaming decoder; every chunk must be whole UTF-8. Returns the text
 * (caller frees). */
static char *stream_decode(const ms_tokenizer *tok, const int32_t *ids, int n, size_t *len) {
    ms_detok d;
    CHECK(detok_init(&d, tok, 0, NULL) == MS_OK, "detok_init");
    size_t cap = 64, o = 0, k;
    char *s = malloc(cap);
    for (int i = 0; i <= n; i++) {
        const char *p = i < n ? detok_push(&d, ids[i], &k) : detok_flush(&d, &k);
        CHECK(uc_utf8_valid(p, k), "detok chunk after token %d is not whole UTF-8", i);
        CHECK(strlen(p) == k || memchr(p, 0, k), "detok chunk length");
        while (o + k + 1 > cap) s = realloc(s, cap *= 2);
        memcpy(s + o, p, k);
        o += k;
    }
    s[o] = 0;
    *len = o;
    detok_free(&d);
    return s;
}

/* llama.cpp's test-tokenizer-0: texts in NAME.inp separated by "\n__ggml_vocab_test__\n", ids
 * in NAME.out one line per text, specials not parsed, no BOS. */
static void test_vocab_file(const char *name) {
    char rel[256];
    gguf_file *gf;
    snprintf(rel, sizeof rel, "vocab/%s", name);
    ms_tokenizer *tok = load(rel, &gf);
    if (!tok) {
        gguf_close(gf);
        return;
    }
    size_t n_inp, n_out;
    snprintf(rel, sizeof rel, "vocab/%s.inp", name);
    char *inp = t_read_file(t_path(rel), &n_inp);
    snprintf(rel, sizeof rel, "vocab/%s.out", name);
    char *out = t_read_file(t_path(rel), &n_out);
    CHECK(inp && out, "cannot read %s.inp/.out", name);
    if (!inp || !out) goto done;

    const char *sep = "\n__ggml_vocab_test__\n";
    size_t sep_len = strlen(sep);
    int n_cases = 0, n_pass = 0, n_roundtrip = 0;
    char *line = out, *pos = inp, *end = inp + n_inp;
    while (pos < end && line < out + n_out) {
        char *next = memmem(pos, (size_t)(end - pos), sep, sep_len);
        size_t len = next ? (size_t)(next - pos) : (size_t)(end - pos);
        char *eol = strchr(line, '\n');
        if (eol) *eol = 0;
        int n_exp = 0, cap = 16;
        int *exp = malloc(sizeof(int) * (size_t)cap);
        for (char *p = line, *q;; p = q) {
            long v = strtol(p, &q, 10);
            if (q == p) break;
            if (n_exp == cap) exp = realloc(exp, sizeof(int) * (size_t)(cap *= 2));
            exp[n_exp++] = (int)v;
        }
        int n_got;
        int32_t *got = encode(tok, pos, len, 0, &n_got);
        int ok = got && ids_equal(got, n_got, exp, n_exp);
        n_cases++;
        n_pass += ok;
        CHECK(ok, "%s case %d: \"%.*s\" encodes differently", name, n_cases, (int)len, pos);
        if (!ok && got) {
            print_ids("got", got, n_got);
            print_ids("want", (const int32_t *)exp, n_exp);
        }
        if (got) {
            char *dec;
            size_t dlen, slen;
            CHECK(tokenizer_decode(tok, got, n_got, 0, &dec, &dlen, NULL) == MS_OK, "decode");
            char *streamed = stream_decode(tok, got, n_got, &slen);
            int rt = dlen == len && memcmp(dec, pos, len) == 0 && slen == len &&
                     memcmp(streamed, pos, len) == 0;
            n_roundtrip += rt;
            CHECK(rt, "%s case %d: decoding gives \"%s\"", name, n_cases, dec);
            ms_free(dec);
            free(streamed);
        }
        ms_free(got);
        free(exp);
        line = eol ? eol + 1 : out + n_out;
        pos = next ? next + sep_len : end;
    }
    CHECK(pos >= end && line >= out + n_out, "%s: .inp and .out hold different numbers of tests",
          name);
    CHECK(n_cases > 10, "%s: only %d cases", name, n_cases);
    printf("  %s: %d/%d cases encode exactly, %d/%d decode back\n", name, n_pass, n_cases,
           n_roundtrip, n_cases);

    /* Timing: the whole .inp text, repeated to 1 MB, in one encode. */
    size_t big_len = 0, target = 1 << 20;
    char *big = malloc(target + n_inp);
    while (big_len < target) {
        memcpy(big + big_len, inp, n_inp);
        big_len += n_inp;
    }
    double t0 = ms_time();
    int n_big;
    int32_t *ids = encode(tok, big, big_len, 0, &n_big);
    double dt = ms_time() - t0;
    printf("  %s: encoded %zu bytes into %d tokens in %.1f ms (%.1f MB/s)\n", name, big_len,
           n_big, dt * 1e3, big_len / dt / 1e6);
    ms_free(ids);
    free(big);
done:
    free(inp);
    free(out);
    tokenizer_free(tok);
    gguf_close(gf);
}

/* ref.json of a tiny model: prompt -> prompt_ids; chat_example (specials parsed) -> ids. */
static void test_ref_json(const char *arch) {
    char rel[256];
    gguf_file *gf;
    snprintf(rel, sizeof rel, "tiny/%s/%s-f32.gguf", arch, arch);
    ms_tokenizer *tok = load(rel, &gf);
    snprintf(rel, sizeof rel, "tiny/%s/ref.json", arch);
    char *json = t_read_file(t_path(rel), NULL);
    CHECK(json != NULL, "cannot read %s", rel);
    if (!tok || !json) goto done;
    const char *keys[][2] = {{"prompt", "prompt_ids"}, {"chat_example", "chat_example_ids"}};
    for (int k = 0; k < 2; k++) {
        size_t len;
        int n_exp, n_got;
        char *text = t_json_string(json, keys[k][0], &len);
        int *exp = t_json_ints(json, keys[k][1], &n_exp);
        CHECK(text && exp, "%s: no %s / %s", rel, keys[k][0], keys[k][1]);
        int32_t *got = text ? encode(tok, text, len, k == 1, &n_got) : NULL;
        if (got && exp) {
            int ok = ids_equal(got, n_got, exp, n_exp);
            CHECK(ok, "%s: %s encodes differently", arch, keys[k][0]);
            if (!ok) {
                print_ids("got", got, n_got);
                print_ids("want", (const int32_t *)exp, n_exp);
            }
            char *dec;
            CHECK(tokenizer_decode(tok, got, n_got, 1, &dec, NULL, NULL) == MS_OK, "decode");
            CHECK(strcmp(dec, text) == 0, "%s: %s decodes to \"%s\"", arch, keys[k][0], dec);
            ms_free(dec);
        }
        ms_free(got);
        free(text);
        free(exp);
    }
    printf("  %s: prompt and chat example match ref.json\n", arch);
done:
    free(json);
    tokenizer_free(tok);
    gguf_close(gf);
}

/* The token whose piece is exactly the single byte b, or -1. */
static int32_t byte_token(const ms_tokenizer *tok, unsigned char b) {
    for (int32_t id = 0; id < tokenizer_n_vocab(tok); id++) {
        char c;
        if (tokenizer_token_bytes(tok, id, 0, &c, 1) == 1 && (unsigned char)c == b) return id;
    }
    return -1;
}

static void test_detok(const ms_tokenizer *tok) {
    /* "€" = E2 82 AC as three single-byte tokens: nothing until the last one. */
    int32_t e2 = byte_token(tok, 0xe2), x82 = byte_token(tok, 0x82), xac = byte_token(tok, 0xac);
    int32_t a = byte_token(tok, 'a');
    CHECK(e2 >= 0 && x82 >= 0 && xac >= 0 && a >= 0, "byte tokens not found");
    ms_detok d;
    size_t n;
    const char *s;
    CHECK(detok_init(&d, tok, 0, NULL) == MS_OK, "detok_init");
    s = detok_push(&d, e2, &n);
    CHECK(n == 0 && *s == 0, "partial character emitted");
    s = detok_push(&d, x82, &n);
    CHECK(n == 0, "partial character emitted");
    s = detok_push(&d, xac, &n);
    CHECK(n == 3 && memcmp(s, "\xe2\x82\xac", 3) == 0, "euro sign not completed");
    /* A character cut short by an ASCII byte: U+FFFD, then the byte. */
    detok_push(&d, e2, &n);
    s = detok_push(&d, a, &n);
    CHECK(n == 4 && memcmp(s, "\xef\xbf\xbd" "a", 4) == 0, "broken character: got %zu bytes", n);
    /* Held at the end: flushed as U+FFFD, and the decoder starts over. */
    detok_push(&d, e2, &n);
    detok_push(&d, x82, &n);
    s = detok_flush(&d, &n);
    CHECK(n == 3 && memcmp(s, "\xef\xbf\xbd", 3) == 0, "flush of a held character");
    s = detok_flush(&d, &n);
    CHECK(n == 0, "second flush");
    /* A stray continuation byte can never complete. */
    s = detok_push(&d, x82, &n);
    CHECK(n == 3 && memcmp(s, "\xef\xbf\xbd", 3) == 0, "stray continuation byte");
    /* Out-of-range ids add nothing. */
    s = detok_push(&d, -1, &n);
    CHECK(s && n == 0, "id -1");
    s = detok_push(&d, tokenizer_n_vocab(tok), &n);
    CHECK(s && n == 0, "id n_vocab");
    detok_free(&d);
    detok_free(&d);

    /* A real text whose characters the tokens cut apart (an emoji and CJK in the Qwen vocab). */
    const char *text = " this is \xf0\x9f\xa6\x99.cpp \xe6\x88\x91\xe6\x83\xb3\xe5\x9c\xa8" "apple";
    int nid;
    int32_t *ids = encode(tok, text, strlen(text), 0, &nid);
    int split = 0;
    for (int i = 0; ids && i < nid; i++) {
        size_t k;
        const char *p = tokenizer_token_piece(tok, ids[i], 0, &k);
        split += !uc_utf8_valid(p, k);
    }
    CHECK(split > 0, "expected some token to hold part of a character");
    size_t len;
    char *back = ids ? stream_decode(tok, ids, nid, &len) : NULL;
    CHECK(back && strcmp(back, text) == 0, "streamed text differs");
    free(back);
    ms_free(ids);

    /* Control tokens render only when asked. */
    int32_t im_end = tokenizer_find(tok, "<|im_end|>");
    CHECK(im_end >= 0, "<|im_end|> not found");
    CHECK(detok_init(&d, tok, 1, NULL) == MS_OK, "detok_init");
    s = detok_push(&d, im_end, &n);
    CHECK(n == strlen("<|im_end|>") && strcmp(s, "<|im_end|>") == 0, "rendered control token");
    detok_free(&d);
    CHECK(tokenizer_token_bytes(tok, im_end, 0, NULL, 0) == 0, "hidden control token");
}

static void test_special_and_queries(const ms_tokenizer *tok) {
    int32_t im_start = tokenizer_find(tok, "<|im_start|>");
    int32_t im_end = tokenizer_find(tok, "<|im_end|>");
    int32_t eot = tokenizer_find(tok, "<|endoftext|>");
    CHECK(im_start >= 0 && im_end >= 0 && eot >= 0, "chat tokens not found");
    CHECK(tokenizer_find(tok, "<|no such token|>") == -1, "find of a missing token");
    CHECK(tokenizer_is_eog(tok, im_end) && tokenizer_is_eog(tok, eot), "EOG tokens");
    CHECK(!tokenizer_is_eog(tok, im_start), "<|im_start|> is not EOG");
    CHECK(tokenizer_is_eog(tok, tokenizer_eos(tok)), "eos is EOG");
    CHECK(!tokenizer_is_eog(tok, -1) && !tokenizer_is_eog(tok, tokenizer_n_vocab(tok)), "EOG range");
    CHECK(tokenizer_add_bos(tok) == 0, "Qwen adds no BOS");
    CHECK(tokenizer_token_text(tok, -1) == NULL, "text of id -1");
    CHECK(tokenizer_token_text(tok, tokenizer_n_vocab(tok)) == NULL, "text of id n_vocab");
    CHECK(tokenizer_token_type(tok, im_start) == MS_TOKEN_CONTROL, "type of <|im_start|>");
    CHECK(tokenizer_token_type(tok, 1 << 30) == -1, "type out of range");
    CHECK(strcmp(tokenizer_token_text(tok, im_start), "<|im_start|>") == 0, "token text");
    char buf[8];
    CHECK(tokenizer_token_bytes(tok, -7, 0, buf, sizeof buf) == -1, "bytes of id -7");
    char *dec;
    int32_t bad[] = {im_start, tokenizer_n_vocab(tok)};
    ms_err e = {0};
    CHECK(tokenizer_decode(tok, bad, 2, 0, &dec, NULL, &e) == MS_ERR_ARG && !dec, "decode range");

    const char *chat = "<|im_start|>user\nHi<|im_end|>";
    int n1, n2;
    int32_t *with = encode(tok, chat, strlen(chat), 1, &n1);
    int32_t *without = encode(tok, chat, strlen(chat), 0, &n2);
    CHECK(with && n1 >= 3 && with[0] == im_start && with[n1 - 1] == im_end, "parsed specials");
    int found = 0;
    for (int i = 0; without && i < n2; i++) found |= without[i] == im_start || without[i] == im_end;
    CHECK(without && !found && n2 > n1, "specials must stay text without parse_special");
    if (without) {
        CHECK(tokenizer_decode(tok, without, n2, 0, &dec, NULL, NULL) == MS_OK, "decode");
        CHECK(strcmp(dec, chat) == 0, "special text round trip: %s", dec);
        ms_free(dec);
    }
    ms_free(with);
    ms_free(without);

    /* Adjacent and repeated specials, text between them. */
    const char *s2 = "<|im_end|><|im_end|>x<|im_start|>";
    int32_t *ids = encode(tok, s2, strlen(s2), 1, &n1);
    CHECK(ids && n1 == 4 && ids[0] == im_end && ids[1] == im_end && ids[3] == im_start,
          "adjacent specials");
    ms_free(ids);

    int n0 = -1;
    ids = encode(tok, "", 0, 1, &n0);
    CHECK(ids && n0 == 0, "empty text");
    ms_free(ids);
}

/* Invalid UTF-8 must not crash, and encodes as llama.cpp does: each byte that does not decode
 * becomes U+FFFD; overlong forms and surrogates decode leniently. */
static void test_bad_input(const ms_tokenizer *tok) {
    static const struct {
        const char *in, *same_as;
        size_t in_len, same_len;
    } cases[] = {
        {"a\xff" "b", "a\xef\xbf\xbd" "b", 3, 5},
        {"\x80\x80 x", "\xef\xbf\xbd\xef\xbf\xbd x", 4, 8},
        {"end\xe2\x82", "end\xef\xbf\xbd\xef\xbf\xbd", 5, 9},     /* truncated at the end */
        {"\xe2\x82" "abc", "\xef\xbf\xbd\xef\xbf\xbd" "abc", 5, 9}, /* truncated, then text */
        {"\xc0\x80", "\0", 2, 1},                                   /* overlong NUL */
        {"\xed\xa0\x80", "\xed\xa0\x80", 3, 3},                     /* surrogate kept */
        {"\xf7\xbf\xbf\xbf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 4, 12},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int na, nb;
        int32_t *a = encode(tok, cases[k].in, cases[k].in_len, 0, &na);
        int32_t *b = encode(tok, cases[k].same_as, cases[k].same_len, 0, &nb);
        CHECK(a && b && na > 0 && ids_equal(a, na, (const int *)b, nb),
              "bad input case %zu encodes unlike its U+FFFD form", k);
        ms_free(a);
        ms_free(b);
    }
    /* Every byte value, and random bytes: no crash, and the stream decoder stays valid. */
    char all[512];
    for (int i = 0; i < 512; i++) all[i] = (char)(i * 7 + (i >> 8));
    int n;
    int32_t *ids = encode(tok, all, sizeof all, 1, &n);
    CHECK(ids && n > 0, "all bytes");
    size_t len;
    char *s = ids ? stream_decode(tok, ids, n, &len) : NULL;
    free(s);
    ms_free(ids);
}

/* Unicode tables: spot checks against known categories and the UTF-8 checker. */
static void test_unicode(void) {
    CHECK(uc_gc('A') == UC_GC_LU && uc_gc('a') == UC_GC_LL && uc_gc('0') == UC_GC_ND, "ASCII gc");
    CHECK(uc_gc(0x0301) == UC_GC_MN && uc_gc(0x4e00) == UC_GC_LO && uc_gc(0x20ac) == UC_GC_SC,
          "gc");
    CHECK(uc_gc(0x2ebf0) == UC_GC_LO, "Unicode 15.1 CJK extension I");
    CHECK(uc_gc(0x0378) == UC_GC_CN && uc_gc(0x10ffff) == UC_GC_CN && uc_gc(0x110000) == UC_GC_CN,
          "unassigned");
    CHECK(uc_gc(0xd800) == UC_GC_CS && uc_gc(0xe000) == UC_GC_CO && uc_gc(0x1f999) == UC_GC_SO,
          "gc");
    CHECK(strcmp(uc_gc_name(uc_gc(0x00e9)), "Ll") == 0, "gc name");
    CHECK(uc_flags(' ') == (UC_Z | UC_WS) && uc_flags('\n') == (UC_C | UC_WS), "space flags");
    CHECK(uc_flags(0x3000) == (UC_Z | UC_WS) && uc_flags(0x200b) == UC_C, "wide space, ZWSP");
    CHECK(uc_flags(0x0085) & UC_WS && !(uc_flags(0x001c) & UC_WS), "White_Space, not isspace");
    CHECK(uc_flags(0x0660) == UC_N && uc_flags(0x00bd) == UC_N, "numbers");
    const unsigned char *u = (const unsigned char *)"\xe2\x82\xac\xe0\x80\xed\xa0\xf4\x90";
    CHECK(uc_utf8_check(u, 3) == 3 && uc_utf8_check(u, 2) == 0 && uc_utf8_check(u + 1, 2) == -1,
          "utf8 check");
    CHECK(uc_utf8_check(u + 3, 2) == -1 && uc_utf8_check(u + 5, 2) == -1 &&
          uc_utf8_check(u + 7, 2) == -1, "overlong, surrogate, too large");
    char buf[4];
    int len;
    for (uint32_t cp = 0; cp <= UC_MAX; cp += 0x3f) {
        int n = uc_encode(cp, buf);
        uint32_t back = uc_decode_lenient((const unsigned char *)buf, (size_t)n, &len);
        if (back != cp || len != n) {
            CHECK(0, "UTF-8 round trip of U+%04X", cp);
            break;
        }
    }
}

/* A synthetic vocabulary written to a temporary GGUF. */
static char *write_vocab(const char *model, const char *pre, const char **tokens,
                         const int32_t *types, int n, const char **merges, int n_merges) {
    static char path[64];
    snprintf(path, sizeof path, "/tmp/ms_test_tok_%d.gguf", (int)getpid());
    gguf_writer *w = gguf_writer_new();
    if (model) gguf_writer_kv(w, "tokenizer.ggml.model", GGUF_STRING, &model);
    if (pre) gguf_writer_kv(w, "tokenizer.ggml.pre", GGUF_STRING, &pre);
    gguf_writer_kv_arr(w, "tokenizer.ggml.tokens", GGUF_STRING, tokens, (uint64_t)n);
    if (types) gguf_writer_kv_arr(w, "tokenizer.ggml.token_type", GGUF_I32, types, (uint64_t)n);
    gguf_writer_kv_arr(w, "tokenizer.ggml.merges", GGUF_STRING, merges, (uint64_t)n_merges);
    ms_err e = {0};
    int rc = gguf_writer_write(w, path, 0, NULL, &e);
    CHECK(rc == MS_OK, "writing %s: %s", path, e.msg);
    gguf_writer_free(w);
    return path;
}

static ms_tokenizer *load_path(const char *path, ms_err *e) {
    gguf_file *f = gguf_open(path, e);
    CHECK(f != NULL, "%s", e->msg);
    ms_tokenizer *tok = f ? tokenizer_load(f, e) : NULL;
    gguf_close(f);
    remove(path);
    return tok;
}

static void test_synthetic(void) {
    const char *toks[] = {"a", "b", "c", "ab", "abc", "\xc4\xa0", "<x>", "d"};
    const char *merges[] = {"b d", "bd a", "a bda", "a b", "ab c"};
    ms_err e = {0};

    /* Unsupported model and pre-tokenizer: refused, naming the value. */
    ms_tokenizer *tok = load_path(write_vocab("llama", "qwen2", toks, NULL, 8, merges, 2), &e);
    CHECK(!tok && e.status == MS_ERR_UNSUPPORTED && strstr(e.msg, "\"llama\""), "%s", e.msg);
    tok = load_path(write_vocab("gpt2", "llama-bpe", toks, NULL, 8, merges, 2), &e);
    CHECK(!tok && e.status == MS_ERR_UNSUPPORTED && strstr(e.msg, "\"llama-bpe\""), "%s", e.msg);
    tok = load_path(write_vocab("gpt2", NULL, toks, NULL, 8, merges, 2), &e);
    CHECK(!tok && e.status == MS_ERR_UNSUPPORTED, "missing pre: %s", e.msg);

    /* Merges through strings the vocabulary lacks ("bd", "bda"): they still apply, and a
     * result that is no token falls back to single-byte tokens, as in llama.cpp. */
    int32_t types[] = {1, 1, 1, 1, 1, 1, 4, 1};
    tok = load_path(write_vocab("gpt2", "qwen35", toks, types, 8, merges, 5), &e);
    CHECK(tok != NULL, "%s", e.msg);
    if (!tok) return;
    CHECK(tokenizer_n_vocab(tok) == 8 && tokenizer_find(tok, "bd") == -1, "merge-only strings");
    int n;
    int32_t *ids = encode(tok, "abc", 3, 0, &n);
    CHECK(ids && n == 1 && ids[0] == 4, "abc -> [abc]");
    ms_free(ids);
    ids = encode(tok, "abda", 4, 0, &n); /* b+d -> bd, bd+a -> bda, a+bda -> "abda": no token */
    CHECK(ids && n == 4 && ids[0] == 0 && ids[1] == 1 && ids[2] == 7 && ids[3] == 0,
          "abda falls back to bytes");
    ms_free(ids);
    /* User-defined tokens are cut out even without parse_special. */
    ids = encode(tok, "a<x>b", 5, 0, &n);
    CHECK(ids && n == 3 && ids[0] == 0 && ids[1] == 6 && ids[2] == 1, "user-defined token");
    ms_free(ids);
    /* " a": the space's byte-level character is "Ġ" (id 5). */
    ids = encode(tok, " a", 2, 0, &n);
    CHECK(ids && n == 2 && ids[0] == 5 && ids[1] == 0, "space mapping");
    ms_free(ids);
    tokenizer_free(tok);
    tokenizer_free(NULL);
}

/* Fails the countdown-th allocation. */
static int alloc_countdown;
static int alloc_hook(void *ud) {
    (void)ud;
    return alloc_countdown-- != 0;
}

static void test_alloc_failures(void) {
    ms_err e = {0};
    gguf_file *f = gguf_open(t_path("tiny/qwen35moe/qwen35moe-f32.gguf"), &e);
    CHECK(f != NULL, "%s", e.msg);
    if (!f) return;
    const char *text = "<|im_start|>user\nHello, \xe4\xb8\x96\xe7\x95\x8c 123!<|im_end|>";
    int failures = 0, k;
    for (k = 0; k < 1000; k++) {
        alloc_countdown = k;
        ms_set_alloc_hook(alloc_hook, NULL);
        ms_tokenizer *tok = tokenizer_load(f, &e);
        int32_t *ids = NULL;
        int n = 0, rc = tok ? tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &e) : -1;
        ms_set_alloc_hook(NULL, NULL);
        if (tok && rc == MS_OK) {
            ms_free(ids);
            tokenizer_free(tok);
            break;
        }
        failures++;
        CHECK(e.status == MS_ERR_NOMEM, "allocation failure %d reported as %d: %s", k, e.status,
              e.msg);
        tokenizer_free(tok);
    }
    CHECK(k < 1000 && failures > 5, "allocation failure injection never succeeded");
    printf("  allocation failures: %d points in load+encode, each reported as out of memory\n",
           failures);
    gguf_close(f);
}

int main(int argc, char **argv) {
    t_fixtures(argc, argv);
    printf("unicode tables: Unicode %s\n", uc_data_version);
    test_unicode();
    test_vocab_file("ggml-vocab-qwen2.gguf");
    test_vocab_file("ggml-vocab-qwen35.gguf");
    test_ref_json("qwen35moe");
    test_ref_json("qwen3moe");
    test_ref_json("qwen3next");

    gguf_file *gf;
    ms_tokenizer *tok = load("vocab/ggml-vocab-qwen35.gguf", &gf);
    if (tok) {
        test_detok(tok);
        test_special_and_queries(tok);
        test_bad_input(tok);
    }
    tokenizer_free(tok);
    gguf_close(gf);
    test_synthetic();
    test_alloc_failures();
    return t_done("test_tokenizer");
}
