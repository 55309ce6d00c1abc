#!/usr/bin/env python3
"""gen_unicode.py - writes src/unicode_data.c, the Unicode tables the tokenizer's pre-tokenizer needs.

Reads the Unicode Character Database text files (UnicodeData.txt and PropList.txt; Debian's
`unicode-data` package puts them in /usr/share/unicode) and prints compact C tables:
  - general-category ranges (every code point's two-letter category, Cn where unassigned),
  - the White_Space property (what \\s means in the pre-tokenizer regexes, as in llama.cpp),
  - a flag byte per code point below 256 (the hot path: ASCII and Latin-1 text).
Nothing is downloaded; the output is checked in. Usage:
    python3 tools/gen_unicode.py [UCD_DIR] > src/unicode_data.c
"""
import os
import sys

MAX_CP = 0x110000

# Order must match enum uc_gc in src/unicode.h.
GC_NAMES = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No",
            "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So",
            "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"]
GC_INDEX = {name: i for i, name in enumerate(GC_NAMES)}

# Flag bits, as in src/unicode.h (UC_L ... UC_WS).
UC_L, UC_M, UC_N, UC_P, UC_S, UC_Z, UC_C, UC_WS = 1, 2, 4, 8, 16, 32, 64, 128
CLASS_FLAG = {"L": UC_L, "M": UC_M, "N": UC_N, "P": UC_P, "S": UC_S, "Z": UC_Z}


# Characters added in Unicode 15.1, the version llama.cpp's tables are built from. Debian 12 ships
# the 15.0 database, so these are applied on top of a 15.0 input (source: the Unicode 15.1.0
# release, https://www.unicode.org/versions/Unicode15.1.0/ - 627 new characters, no other
# category or White_Space changes). Inclusive ranges with their general category.
UNICODE_15_1_ADDITIONS = [
    (0x2FFC, 0x2FFF, "So"),    # Ideographic Description Characters (4)
    (0x31EF, 0x31EF, "So"),    # CJK STROKE HXG
    (0x2EBF0, 0x2EE5D, "Lo"),  # CJK Unified Ideographs Extension I (622)
]


def class_flag(gc):
    if gc == "Cn":
        return 0
    if gc[0] == "C":
        return UC_C
    return CLASS_FLAG[gc[0]]


def read_unicode_data(path):
    """Returns (categories per code point, simple lowercase mappings)."""
    cats = bytearray(MAX_CP)  # 0 = Cn
    lower = {}
    first = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(";")
            if len(fields) < 15:
                continue
            cp = int(fields[0], 16)
            name, gc = fields[1], fields[2]
            if gc not in GC_INDEX:
                sys.exit("unknown general category %r at U+%04X" % (gc, cp))
            if fields[13]:
                lower[cp] = int(fields[13], 16)
            if name.endswith(", First>"):
                first = cp
                continue
            start = cp
            if name.endswith(", Last>"):
                assert first is not None
                start, first = first, None
            for c in range(start, cp + 1):
                cats[c] = GC_INDEX[gc]
    return cats, lower


def read_white_space(path):
    ranges, version = [], "unknown"
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# PropList-") and version == "unknown":
                version = line[len("# PropList-"):].strip().removesuffix(".txt")
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            cps, prop = [x.strip() for x in body.split(";")]
            if prop != "White_Space":
                continue
            lo, _, hi = cps.partition("..")
            ranges.append((int(lo, 16), int(hi or lo, 16)))
    return sorted(ranges), version


def main():
    ucd = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/unicode"
    cats, lower = read_unicode_data(os.path.join(ucd, "UnicodeData.txt"))
    ws, version = read_white_space(os.path.join(ucd, "PropList.txt"))
    ucd_version = version
    if version == "15.0.0":
        for lo, hi, gc in UNICODE_15_1_ADDITIONS:
            for cp in range(lo, hi + 1):
                assert cats[cp] == GC_INDEX["Cn"]
                cats[cp] = GC_INDEX[gc]
        version = "15.1.0"
        extra = "\n * plus the 15.1 additions listed in tools/gen_unicode.py"
    else:
        extra = ""

    # The contraction alternatives (?i:'s|'t|'re|'ve|'m|'ll|'d) are matched by lower-casing the
    # letters after the apostrophe (llama.cpp's unicode_tolower). The tokenizer compares ASCII
    # only; that is exact as long as nothing outside A-Z lower-cases to one of these letters.
    for cp, lo in lower.items():
        if chr(lo) in "stmdrevl" and not (0x41 <= cp <= 0x5A):
            sys.exit("U+%04X lower-cases to %r: the tokenizer's ASCII contraction check "
                     "would no longer be exact" % (cp, chr(lo)))

    ranges = []
    for cp in range(MAX_CP):
        if not ranges or cats[cp] != ranges[-1][1]:
            ranges.append((cp, cats[cp]))

    is_ws = bytearray(256)
    for lo, hi in ws:
        for cp in range(lo, min(hi, 255) + 1):
            is_ws[cp] = 1
    latin1 = [class_flag(GC_NAMES[cats[cp]]) | (UC_WS if is_ws[cp] else 0) for cp in range(256)]

    out = sys.stdout
    out.write("/* unicode_data.c - GENERATED by tools/gen_unicode.py; do not edit.\n")
    out.write(" * Unicode %s tables. Source: Unicode Character Database %s\n" % (version, ucd_version))
    out.write(" * (UnicodeData.txt, PropList.txt from Debian's unicode-data package)%s.\n" % extra)
    out.write(" * Regenerate with:\n")
    out.write(" *     python3 tools/gen_unicode.py /usr/share/unicode > src/unicode_data.c\n")
    out.write(" * The lookups that use these tables are in unicode.c. */\n")
    out.write('#include "unicode.h"\n\n')
    out.write("const char uc_data_version[] = \"%s\";\n\n" % version)

    out.write("/* General category by range: entry = first code point << 5 | enum uc_gc; a range runs up to\n")
    out.write(" * the next entry's first code point, the last one to U+10FFFF. */\n")
    out.write("const uint32_t uc_gc_ranges[] = {\n")
    for i in range(0, len(ranges), 8):
        row = ranges[i:i + 8]
        out.write("    " + " ".join("0x%08X," % (start << 5 | gc) for start, gc in row) + "\n")
    out.write("};\n")
    out.write("const int uc_gc_n_ranges = %d;\n\n" % len(ranges))

    out.write("/* White_Space property: inclusive [first, last] ranges. */\n")
    out.write("const uint32_t uc_ws_ranges[][2] = {\n")
    for lo, hi in ws:
        out.write("    {0x%04X, 0x%04X},\n" % (lo, hi))
    out.write("};\n")
    out.write("const int uc_ws_n_ranges = %d;\n\n" % len(ws))

    out.write("/* UC_* flags of U+0000..U+00FF. */\n")
    out.write("const uint8_t uc_flags_latin1[256] = {\n")
    for i in range(0, 256, 16):
        out.write("    " + " ".join("0x%02X," % f for f in latin1[i:i + 16]) + "\n")
    out.write("};\n")


if __name__ == "__main__":
    main()
