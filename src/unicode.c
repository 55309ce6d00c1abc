/* unicode.c - category lookups over the generated tables, and UTF-8 coding. See unicode.h. */
#include "unicode.h"

static const uint8_t gc_class[UC_GC_COUNT] = {
    [UC_GC_CN] = 0,
    [UC_GC_LU] = UC_L, [UC_GC_LL] = UC_L, [UC_GC_LT] = UC_L, [UC_GC_LM] = UC_L, [UC_GC_LO] = UC_L,
    [UC_GC_MN] = UC_M, [UC_GC_MC] = UC_M, [UC_GC_ME] = UC_M,
    [UC_GC_ND] = UC_N, [UC_GC_NL] = UC_N, [UC_GC_NO] = UC_N,
    [UC_GC_PC] = UC_P, [UC_GC_PD] = UC_P, [UC_GC_PS] = UC_P, [UC_GC_PE] = UC_P,
    [UC_GC_PI] = UC_P, [UC_GC_PF] = UC_P, [UC_GC_PO] = UC_P,
    [UC_GC_SM] = UC_S, [UC_GC_SC] = UC_S, [UC_GC_SK] = UC_S, [UC_GC_SO] = UC_S,
    [UC_GC_ZS] = UC_Z, [UC_GC_ZL] = UC_Z, [UC_GC_ZP] = UC_Z,
    [UC_GC_CC] = UC_C, [UC_GC_CF] = UC_C, [UC_GC_CS] = UC_C, [UC_GC_CO] = UC_C,
};

static const char gc_names[UC_GC_COUNT][3] = {
    "Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
    "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co",
};

const char *uc_gc_name(int gc) { return gc >= 0 && gc < UC_GC_COUNT ? gc_names[gc] : "??"; }

int uc_gc(uint32_t cp) {
    if (cp > UC_MAX) return UC_GC_CN;
    /* Last entry whose start is <= cp; entries are start << 5 | category, sorted by start. */
    uint32_t key = cp << 5 | 31;
    int lo = 0, hi = uc_gc_n_ranges - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (uc_gc_ranges[mid] <= key) lo = mid;
        else hi = mid - 1;
    }
    return (int)(uc_gc_ranges[lo] & 31);
}

static int is_white_space(uint32_t cp) {
    for (int i = 0; i < uc_ws_n_ranges; i++) {
        if (cp < uc_ws_ranges[i][0]) return 0;
        if (cp <= uc_ws_ranges[i][1]) return 1;
    }
    return 0;
}

unsigned uc_flags(uint32_t cp) {
    if (cp < 256) return uc_flags_latin1[cp];
    return gc_class[uc_gc(cp)] | (is_white_space(cp) ? UC_WS : 0);
}

uint32_t uc_decode_lenient(const unsigned char *s, size_t n, int *len) {
    unsigned b0 = s[0];
    int need;
    uint32_t cp;
    *len = 1;
    if (b0 < 0x80) return b0;
    if ((b0 & 0x40) == 0) return UC_REPLACEMENT;  /* continuation byte as lead */
    if ((b0 & 0x20) == 0) need = 2, cp = b0 & 0x1f;
    else if ((b0 & 0x10) == 0) need = 3, cp = b0 & 0x0f;
    else if ((b0 & 0x08) == 0) need = 4, cp = b0 & 0x07;
    else return UC_REPLACEMENT;                  /* F8..FF */
    if (n < (size_t)need) return UC_REPLACEMENT;
    for (int i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80) return UC_REPLACEMENT;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    /* llama.cpp would throw on these when re-encoding; one U+FFFD per byte keeps going. */
    if (cp > UC_MAX) return UC_REPLACEMENT;
    *len = need;
    return cp;
}

int uc_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18 & 0x07));
    out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

int uc_utf8_check(const unsigned char *s, size_t n) {
    unsigned b0 = s[0];
    int need;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (b0 < 0x80) return 1;
    if (b0 < 0xc2) return -1;
    if (b0 < 0xe0) need = 2;
    else if (b0 < 0xf0) {
        need = 3;
        if (b0 == 0xe0) lo = 0xa0;      /* no overlong forms */
        else if (b0 == 0xed) hi = 0x9f; /* no surrogates */
    } else if (b0 < 0xf5) {
        need = 4;
        if (b0 == 0xf0) lo = 0x90;
        else if (b0 == 0xf4) hi = 0x8f; /* nothing above U+10FFFF */
    } else {
        return -1;
    }
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) return 0;
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) return -i;
    }
    return need;
}

int uc_utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int r = uc_utf8_check((const unsigned char *)s + i, n - i);
        if (r <= 0) return 0;
        i += (size_t)r;
    }
    return 1;
}
