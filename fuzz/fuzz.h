/* fuzz.h - the fuzz targets (fuzz/fuzz_NAME.c) and what they share.
 *
 * Each target has NAME_init(), run once (loads what it needs from the fixtures: $MS_FIXTURES,
 * default ../shared/fixtures; returns 0 or -1), and NAME_one(data, size), run per input. An input
 * may be anything; a violated invariant aborts with a message, which libFuzzer reports like a
 * crash or a sanitizer report. The same code is built twice: as libFuzzer binaries (make fuzz,
 * clang) and, with FUZZ_NO_ENTRY, into tests/test_regress.c, which replays the saved findings in
 * tests/regress/NAME/ in every `make test` build.
 */
#ifndef MS_FUZZ_H
#define MS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int fuzz_gguf_init(void);
int fuzz_gguf_one(const uint8_t *data, size_t size);
int fuzz_tokenizer_init(void);
int fuzz_tokenizer_one(const uint8_t *data, size_t size);
int fuzz_chat_init(void);
int fuzz_chat_one(const uint8_t *data, size_t size);
int fuzz_http_init(void);
int fuzz_http_one(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, ...)                                                       \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "fuzz invariant failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                           \
            fputc('\n', stderr);                                                    \
            abort();                                                                \
        }                                                                           \
    } while (0)

/* A path under the fixtures directory (static buffer, valid until the next call). */
static inline const char *fuzz_fixture(const char *rel) {
    static char p[4096];
    const char *dir = getenv("MS_FIXTURES");
    snprintf(p, sizeof p, "%s/%s", dir && *dir ? dir : "../shared/fixtures", rel);
    return p;
}

/* libFuzzer's entry points for target NAME. */
#ifdef FUZZ_NO_ENTRY
#define FUZZ_ENTRY(name)
#else
#define FUZZ_ENTRY(name)                                                            \
    int LLVMFuzzerInitialize(int *argc, char ***argv);                              \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);                   \
    int LLVMFuzzerInitialize(int *argc, char ***argv) {                             \
        (void)argc, (void)argv;                                                     \
        if (fuzz_##name##_init()) {                                                 \
            fprintf(stderr, "fuzz_" #name ": cannot load the fixtures (set MS_FIXTURES)\n"); \
            exit(1);                                                                \
        }                                                                           \
        return 0;                                                                   \
    }                                                                               \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return fuzz_##name##_one(data, size); }
#endif

#endif
