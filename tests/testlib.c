/* testlib.c - see testlib.h. */
#include "testlib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int t_failures, t_checks;
static const char *fixtures_dir = "../shared/fixtures";

const char *t_fixtures(int argc, char **argv) {
    const char *env = getenv("MS_FIXTURES");
    if (argc > 1) fixtures_dir = argv[1];
    else if (env) fixtures_dir = env;
    return fixtures_dir;
}

const char *t_path(const char *rel) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", fixtures_dir, rel);
    return buf;
}

int t_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

void *t_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

static void log_softmax(const float *x, int n, double *out) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, x[i]);
    for (int i = 0; i < n; i++) s += exp(x[i] - mx);
    double ls = log(s) + mx;
    for (int i = 0; i < n; i++) out[i] = x[i] - ls;
}

double t_kl(const float *ref, const float *got, int n) {
    double *lp = malloc(sizeof(double) * n), *lq = malloc(sizeof(double) * n);
    log_softmax(ref, n, lp);
    log_softmax(got, n, lq);
    double kl = 0;
    for (int i = 0; i < n; i++) kl += exp(lp[i]) * (lp[i] - lq[i]);
    free(lp);
    free(lq);
    return kl < 0 ? 0 : kl;
}

int t_argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

static const char *json_key(const char *json, const char *key) {
    char pat[256];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ' || *p == ':' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    return p;
}

int *t_json_ints(const char *json, const char *key, int *n) {
    const char *p = json_key(json, key);
    if (!p || *p != '[') return NULL;
    p++;
    int cap = 64, cnt = 0;
    int *v = malloc(sizeof(int) * cap);
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\n' || *p == '\r' || *p == '\t') p++;
        if (*p == ']') break;
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p) {
            free(v);
            return NULL;
        }
        if (cnt == cap) v = realloc(v, sizeof(int) * (cap *= 2));
        v[cnt++] = (int)x;
        p = end;
    }
    *n = cnt;
    return v;
}

int t_json_number(const char *json, const char *key, double *out) {
    const char *p = json_key(json, key);
    if (!p) return 0;
    char *end;
    *out = strtod(p, &end);
    return end != p;
}

int t_done(const char *name) {
    if (t_failures) {
        fprintf(stderr, "%s: %d of %d checks FAILED\n", name, t_failures, t_checks);
        return 1;
    }
    if (t_checks == 0) {
        fprintf(stderr, "%s: no checks ran - a test that checks nothing fails\n", name);
        return 1;
    }
    printf("%s: %d checks passed\n", name, t_checks);
    return 0;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

char *t_json_string(const char *json, const char *key, size_t *len) {
    const char *p = json_key(json, key);
    if (!p || *p != '"') return NULL;
    p++;
    char *out = malloc(strlen(p) + 1), *o = out; /* unescaping never grows the text */
    if (!out) return NULL;
    while (*p && *p != '"') {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        p++;
        char c = *p++;
        unsigned cp;
        switch (c) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case '"': case '\\': case '/': *o++ = c; break;
        case 'u':
            if (hex4(p, &cp)) goto bad;
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p[0] == '\\' && p[1] == 'u') {
                unsigned lo;
                if (hex4(p + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else if (cp < 0x800) {
                *o++ = (char)(0xc0 | cp >> 6);
                *o++ = (char)(0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                *o++ = (char)(0xe0 | cp >> 12);
                *o++ = (char)(0x80 | (cp >> 6 & 0x3f));
                *o++ = (char)(0x80 | (cp & 0x3f));
            } else {
                *o++ = (char)(0xf0 | cp >> 18);
                *o++ = (char)(0x80 | (cp >> 12 & 0x3f));
                *o++ = (char)(0x80 | (cp >> 6 & 0x3f));
                *o++ = (char)(0x80 | (cp & 0x3f));
            }
            break;
        default: goto bad;
        }
    }
    if (*p != '"') goto bad;
    *o = 0;
    if (len) *len = (size_t)(o - out);
    return out;
bad:
    free(out);
    return NULL;
}
