/* test_regress.c - replays every saved fuzz finding (tests/regress/NAME/, one input a file) through
 * its fuzz target's code (fuzz/fuzz_NAME.c, built without libFuzzer): each input once crashed,
 * leaked, tripped a sanitizer or broke an invariant, and must now pass. Runs in every `make test`
 * build, so the ASan+UBSan and TSan builds replay them too. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "../fuzz/fuzz.h"
#include "testlib.h"

typedef struct target {
    const char *name;
    int (*init)(void);
    int (*one)(const uint8_t *, size_t);
} target;

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void replay(const char *root, const target *t) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", root, t->name);
    DIR *d = opendir(dir);
    if (!d) { /* no findings saved for this target */
        printf("  fuzz_%-10s no saved inputs\n", t->name);
        return;
    }
    char *names[4096];
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) && n < 4096;)
        if (de->d_name[0] != '.') names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp);
    if (n) CHECK(t->init() == 0, "fuzz_%s: init failed", t->name);
    for (int i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        size_t len;
        uint8_t *data = t_read_file(path, &len);
        CHECK(data != NULL, "cannot read %s", path);
        if (data) t->one(data, len); /* a failure aborts with the fuzz target's message */
        free(data);
        free(names[i]);
    }
    printf("  fuzz_%-10s %d saved inputs replayed\n", t->name, n);
}

int main(int argc, char **argv) {
    const char *fx = t_fixtures(argc, argv);
    setenv("MS_FIXTURES", fx, 1);
    const char *root = getenv("MS_REGRESS") ? getenv("MS_REGRESS") : "tests/regress";
    const target targets[] = {
        {"gguf", fuzz_gguf_init, fuzz_gguf_one},
        {"tokenizer", fuzz_tokenizer_init, fuzz_tokenizer_one},
        {"chat", fuzz_chat_init, fuzz_chat_one},
        {"http", fuzz_http_init, fuzz_http_one},
    };
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) replay(root, &targets[i]);
    return t_done("test_regress");
}
