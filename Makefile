# moestream - plain `make` builds the CPU binary; `make test` runs every test.
# Objects go to $(BUILD); SAN=1 builds with ASan+UBSan into build/san.

CC      ?= cc
SAN     ?= 0
BUILD   ?= build
ifeq ($(SAN),1)
BUILD   := build/san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
OPT     ?= -O2
WERROR  ?=
CFLAGS  += -std=c11 $(OPT) -g -Wall -Wextra $(WERROR) -D_GNU_SOURCE -Iinclude -Isrc -pthread $(SANFLAGS)
LDFLAGS += -pthread $(SANFLAGS)
LDLIBS  += -lm

ARCH := $(shell uname -m)
LIB_SRC := $(filter-out src/main.c,$(wildcard src/*.c))
# SIMD kernel files are compiled with their own target flags and chosen at run time.
ifneq ($(ARCH),x86_64)
LIB_SRC := $(filter-out src/%_avx2.c src/%_avx512.c,$(LIB_SRC))
endif
LIB_OBJ := $(LIB_SRC:src/%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/%)

$(BUILD)/%_avx2.o: CFLAGS += -mavx2 -mfma -mf16c
$(BUILD)/%_avx512.o: CFLAGS += -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c

.PHONY: all test clean san-test deps
.SECONDARY:
all: moestream

$(BUILD)/%.o: src/%.c $(wildcard src/*.h) include/moestream.h | $(BUILD)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/tests/%.o: tests/%.c $(wildcard src/*.h) $(wildcard tests/*.h) | $(BUILD)/tests
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmoestream.a: $(LIB_OBJ)
	rm -f $@; ar rcs $@ $^

$(BUILD)/moestream: $(BUILD)/main.o $(BUILD)/libmoestream.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

moestream: $(BUILD)/moestream
	cp $< $@

$(BUILD)/test_%: $(BUILD)/tests/test_%.o $(BUILD)/tests/testlib.o $(BUILD)/libmoestream.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD) $(BUILD)/tests:
	mkdir -p $@

FIXTURES ?= ../shared/fixtures
# The test runner builds everything, runs each test binary, then the sanitizer build of the tests.
test: deps
	$(MAKE) all $(TEST_BIN)
	./tests/run.sh $(BUILD) $(FIXTURES)
ifeq ($(SAN),0)
	$(MAKE) SAN=1 OPT=-O1 san-test
endif

san-test: $(BUILD)/moestream $(TEST_BIN)
	MS_SANITIZED=1 ./tests/run.sh $(BUILD) $(FIXTURES)

deps:
	@./scripts/install-deps.sh

clean:
	rm -rf build moestream
