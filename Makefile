# moestream - plain `make` builds the CPU binary; `make test` runs every test.
# Objects go to $(BUILD). Sanitizer builds go beside it: SAN=1 ASan+UBSan into $(BUILD)/san,
# SAN=thread TSan into $(BUILD)/tsan, SAN=fuzz clang's libFuzzer instrumentation with ASan+UBSan
# into $(BUILD)/fuzz (`make fuzz`; only that target needs clang).

CC      ?= cc
SAN     ?= 0
BUILD   ?= build
ifeq ($(SAN),1)
override BUILD := $(BUILD)/san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
ifeq ($(SAN),thread)
override BUILD := $(BUILD)/tsan
SANFLAGS = -fsanitize=thread -fno-omit-frame-pointer
endif
FUZZ_CC ?= clang
ifeq ($(SAN),fuzz)
override BUILD := $(BUILD)/fuzz
override CC := $(FUZZ_CC)
SANFLAGS = -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
# CUDA=1 adds the GPU backend (src/cuda.cu, built by nvcc) in place of its stand-in
# src/backend_none.c, with objects in $(BUILD)/cuda. Plain `make` never needs the CUDA toolkit.
CUDA    ?= 0
ifeq ($(CUDA),1)
NVCC    ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
ifeq ($(NVCC),)
$(error ✗ nvcc not found: install the CUDA toolkit, or run make CUDA=1 NVCC=/path/to/nvcc)
endif
CUDA_HOME ?= $(abspath $(dir $(NVCC))/..)
$(info ✓ nvcc found: $(NVCC) ($(shell $(NVCC) --version | grep -o 'release [0-9.]*')))
override BUILD := $(BUILD)/cuda
# Hopper machine code plus PTX, which the driver compiles for other GPUs at load time.
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCCFLAGS ?= -O2 -std=c++17 $(CUDA_ARCH) -Xcompiler -Wall,-Wextra$(if $(WERROR),$(comma)-Werror)
comma := ,
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
endif
OPT     ?= -O3
WERROR  ?=
CFLAGS  += -std=c11 $(OPT) -g -Wall -Wextra $(WERROR) -D_GNU_SOURCE -Iinclude -Isrc -pthread $(SANFLAGS)
LDFLAGS += -pthread $(SANFLAGS)
LDLIBS  += -lm

# Debian packages (scripts/install-deps.sh): jansson for the library's chat code, libmicrohttpd and
# libedit for the server and chat front ends.
PKG_CFLAGS := $(shell pkg-config --cflags jansson libmicrohttpd libedit 2>/dev/null)
LIB_LIBS   := $(or $(shell pkg-config --libs jansson 2>/dev/null),-ljansson)
FRONT_LIBS := $(or $(shell pkg-config --libs libmicrohttpd libedit 2>/dev/null),-lmicrohttpd -ledit)
CFLAGS  += $(PKG_CFLAGS)
LDLIBS  += $(LIB_LIBS)

ARCH := $(shell uname -m)
# Front ends (they print) link into the binary, not the library.
FRONT_SRC := src/main.c src/front.c src/chat_cli.c src/server.c
FRONT_OBJ := $(FRONT_SRC:src/%.c=$(BUILD)/%.o)
LIB_SRC := $(filter-out $(FRONT_SRC),$(wildcard src/*.c))
# SIMD kernel files are compiled with their own target flags and chosen at run time.
ifneq ($(ARCH),x86_64)
LIB_SRC := $(filter-out src/%_avx2.c src/%_avx512.c,$(LIB_SRC))
endif
LIB_OBJ := $(LIB_SRC:src/%.c=$(BUILD)/%.o)
ifeq ($(CUDA),1)
LIB_OBJ := $(filter-out $(BUILD)/backend_none.o,$(LIB_OBJ)) $(BUILD)/cuda.o
LDLIBS  += $(CUDA_LIBS)
endif
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/%)
# Fuzz targets (fuzz/fuzz_NAME.c): libFuzzer binaries under SAN=fuzz; in every build their code also
# replays the saved findings in tests/regress/NAME/ (test_regress).
FUZZ_TARGETS := gguf tokenizer chat http
FUZZ_SECONDS ?= 60
# What the HTTP request path needs from the front ends (not main.o: the fuzzer has its own main).
SERVER_OBJ := $(BUILD)/server.o $(BUILD)/front.o

$(BUILD)/%_avx2.o: CFLAGS += -mavx2 -mfma -mf16c
$(BUILD)/%_avx512.o: CFLAGS += -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c

.PHONY: cuda-test all test clean san-test tsan-test deps demo fuzz fuzz-run
.SECONDARY:
# The Debian packages come first (scripts/install-deps.sh installs what is missing as root, or
# says which to install): a fresh Debian 12 builds with plain `make`.
all: deps
	@$(MAKE) --no-print-directory moestream

$(BUILD)/%.o: src/%.c $(wildcard src/*.h) include/moestream.h | $(BUILD)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/tests/%.o: tests/%.c $(wildcard src/*.h) $(wildcard tests/*.h) | $(BUILD)/tests
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/cuda.o: src/cuda.cu $(wildcard src/*.h) include/moestream.h | $(BUILD)
	$(NVCC) $(NVCCFLAGS) -Iinclude -Isrc -D_GNU_SOURCE -c $< -o $@

# Benchmarks (bench/bench_*.c) are programs over the library, built on request: make build/bench_gpu
$(BUILD)/bench_%: bench/bench_%.c $(BUILD)/libmoestream.a
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/libmoestream.a: $(LIB_OBJ)
	rm -f $@; ar rcs $@ $^

$(BUILD)/moestream: $(FRONT_OBJ) $(BUILD)/libmoestream.a
	$(CC) $(LDFLAGS) $^ $(FRONT_LIBS) $(LDLIBS) -o $@

moestream: $(BUILD)/moestream
	cp $< $@

$(BUILD)/test_%: $(BUILD)/tests/test_%.o $(BUILD)/tests/testlib.o $(BUILD)/libmoestream.a
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/fuzz_%.o: fuzz/fuzz_%.c fuzz/fuzz.h $(wildcard src/*.h) include/moestream.h | $(BUILD)/tests
	$(CC) $(CFLAGS) -DFUZZ_NO_ENTRY -c $< -o $@

$(BUILD)/test_regress: $(BUILD)/tests/test_regress.o $(BUILD)/tests/testlib.o $(FUZZ_TARGETS:%=$(BUILD)/tests/fuzz_%.o) \
		$(SERVER_OBJ) $(BUILD)/libmoestream.a
	$(CC) $(LDFLAGS) $^ $(FRONT_LIBS) $(LDLIBS) -o $@

$(BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz.h $(SERVER_OBJ) $(BUILD)/libmoestream.a
	$(CC) $(CFLAGS) -fsanitize=fuzzer $(filter-out %.h,$^) $(FRONT_LIBS) $(LDLIBS) -o $@

ifeq ($(SAN),fuzz)
# clang 14 does not know __builtin_cpu_supports("f16c"): quant.c's CPU dispatch is compiled by cc,
# without instrumentation (the kernels are not what the fuzz targets look at).
$(BUILD)/quant.o: src/quant.c $(wildcard src/*.h) include/moestream.h | $(BUILD)
	cc $(filter-out $(SANFLAGS),$(CFLAGS)) -c $< -o $@
endif

$(BUILD) $(BUILD)/tests:
	mkdir -p $@

FIXTURES ?= ../shared/fixtures
# The test runner builds everything, runs each test binary, then the sanitizer build of the tests.
test: deps
	$(MAKE) all $(TEST_BIN)
	./tests/run.sh $(BUILD) $(FIXTURES)
ifeq ($(SAN)$(CUDA),00)
	$(MAKE) SAN=1 OPT=-O1 san-test
	$(MAKE) SAN=thread OPT=-O1 tsan-test
	$(MAKE) cuda-test
endif

# The CUDA backend compiled wherever nvcc is (CPU-only machines too): test_cuda then checks the
# GPU against the CPU path, or says "skipped: no GPU" and passes.
cuda-test:
	@if command -v nvcc >/dev/null 2>&1 || test -x /usr/local/cuda/bin/nvcc; then \
	    $(MAKE) CUDA=1 $(BUILD)/cuda/test_cuda && ./$(BUILD)/cuda/test_cuda $(FIXTURES); \
	else echo "test_cuda: skipped: nvcc not found, the CUDA backend was not compiled"; fi

san-test: $(BUILD)/moestream $(TEST_BIN)
	MS_SANITIZED=1 ./tests/run.sh $(BUILD) $(FIXTURES)

# TSan over what runs threads: the expert store's I/O threads and the worker pool (every forward
# pass of test_experts and test_faults), faults while reads are in flight, and the server with
# concurrent clients (tests/run.sh runs only server.sh of the scripts under TSan).
TSAN_TESTS := test_experts test_faults test_threads
tsan-test: $(BUILD)/moestream $(TSAN_TESTS:%=$(BUILD)/%)
	MS_SANITIZED=thread ./tests/run.sh $(BUILD) $(FIXTURES)

# Each fuzz target for FUZZ_SECONDS from seeds made from the fixtures (fuzz/run.sh); any crash,
# leak, timeout or sanitizer report fails. Needs clang with libFuzzer (Debian: clang, libclang-rt-dev).
fuzz:
	@./scripts/install-deps.sh fuzz
	$(MAKE) SAN=fuzz OPT=-O1 fuzz-run

fuzz-run: $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%)
	./fuzz/run.sh $(BUILD) $(FIXTURES) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

deps:
	@./scripts/install-deps.sh

# The main job on a bundled default, no download: a synthetic qwen3next-80b-a3b cut to 4 layers
# (~3.9 GB) run within a 2 GiB budget, about half of it, with the expert statistics.
DEMO_DIR ?= /tmp/moestream-demo
demo: all
	@mkdir -p $(DEMO_DIR)
	@test -f $(DEMO_DIR)/demo.gguf || ./moestream synth --preset qwen3next-80b-a3b --layers 4 --type Q4_K -o $(DEMO_DIR)/demo.gguf
	./moestream info -m $(DEMO_DIR)/demo.gguf | head -12
	./moestream run -m $(DEMO_DIR)/demo.gguf --mem 2G --lookahead -p "The quick brown fox" -n 64 --ignore-eos --stats --timing

clean:
	rm -rf build moestream
