/* testlib.h - the small harness every test uses: checks that count failures, fixture paths,
 * whole-file reads, and the logit comparison metrics (KL divergence, argmax agreement). */
#ifndef MS_TESTLIB_H
#define MS_TESTLIB_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

extern int t_failures;
extern int t_checks;

#define CHECK(cond, ...)                                                            \
    do {                                                                            \
        t_checks++;                                                                 \
        if (!(cond)) {                                                              \
            t_failures++;                                                           \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                           \
            fputc('\n', stderr);                                                    \
        }                                                                           \
    } while (0)

/* Directory of ../shared/fixtures (argv[1] of every test, or $MS_FIXTURES). */
const char *t_fixtures(int argc, char **argv);
/* Joins the fixtures dir and a relative path into a static-per-call buffer (caller copies). */
const char *t_path(const char *rel);
/* Reads a whole file. Returns a malloc'd buffer (caller frees) or NULL; *len gets its size. */
void *t_read_file(const char *path, size_t *len);
/* 1 if the path exists. */
int t_exists(const char *path);

/* KL(p || q) where p = softmax(ref), q = softmax(got), over n logits. */
double t_kl(const float *ref, const float *got, int n);
int t_argmax(const float *v, int n);

/* Reads integers from the JSON array named key in a JSON text (e.g. "prompt_ids").
 * Returns a malloc'd array and its count in *n, or NULL. Enough JSON for ref.json. */
int *t_json_ints(const char *json, const char *key, int *n);
/* Reads the number after "key": in a JSON text; returns 1 on success. */
int t_json_number(const char *json, const char *key, double *out);

/* Prints the summary line and returns the process exit code. */
int t_done(const char *name);

/* Reads the JSON string named key in a JSON text, undoing its escapes (\n, \", \uXXXX with
 * surrogate pairs, ...). Returns a malloc'd NUL-terminated buffer (caller frees) and its length
 * in *len (may be NULL; the text may hold NUL bytes), or NULL. Enough JSON for ref.json. */
char *t_json_string(const char *json, const char *key, size_t *len);

#endif
