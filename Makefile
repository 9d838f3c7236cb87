# taper — build, test, demo. `make help` lists the targets.
# Switches (printed at build time): SANITIZE=1 (ASan+UBSan), OPENMP=0, BLAS=0, DNNL=0, MPI=0, NATIVE=0, CC=clang.
# STRICT=1 (make test; CI sets it): a test skipped for anything but an optional part fails.

CC      ?= cc
SANITIZE ?= 0
STRICT  ?= 0
OPENMP  ?= 1
BLAS    ?= 1
DNNL    ?= 1
MPI     ?= 1
NATIVE  ?= 1
TAPER_CACHE ?= $(HOME)/.cache/taper
TAPER_DATA  ?= $(abspath ../shared/data)
# Sleeping (not spinning) OpenMP threads: far faster when the 2 cores are shared (see cli/taper.c).
OMP_WAIT_POLICY ?= PASSIVE
export TAPER_CACHE TAPER_DATA OMP_WAIT_POLICY

BUILD   ?= build$(if $(filter 1,$(SANITIZE)),-san,)
CFLAGS  := -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Iinclude -Isrc -MMD -MP
LDLIBS  := -lm -lcjson -lpcre2-8 -lutf8proc -lpthread

ifeq ($(NATIVE),1)
  CFLAGS += -march=native
endif
ifeq ($(SANITIZE),1)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif

# --- detection (results printed by `make config` and before every build) ---
HAVE_OPENMP := $(shell [ "$(OPENMP)" = 1 ] && echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo 1 || echo 0)
BLAS_INFO   := $(shell [ "$(BLAS)" = 1 ] && CC="$(CC)" scripts/have-blas.sh)
HAVE_BLAS   := $(if $(BLAS_INFO),1,0)
HAVE_DNNL   := $(shell [ "$(DNNL)" = 1 ] && printf '#include <dnnl.h>\nint main(void){dnnl_engine_t e;return dnnl_engine_create(&e,dnnl_cpu,0)!=dnnl_success;}\n' | $(CC) -x c - -ldnnl -o /dev/null 2>/dev/null && echo 1 || echo 0)
HAVE_CUDA   := $(shell command -v nvcc >/dev/null 2>&1 && echo 1 || echo 0)
# Open MPI (libopenmpi-dev): the flags its compiler wrapper would add, so that CC stays the compiler.
MPI_CFLAGS  := $(shell [ "$(MPI)" = 1 ] && mpicc --showme:compile 2>/dev/null)
MPI_LIBS    := $(shell [ "$(MPI)" = 1 ] && mpicc --showme:link 2>/dev/null)
HAVE_MPI    := $(shell [ "$(MPI)" = 1 ] && [ -n "$(MPI_LIBS)" ] && printf '#include <mpi.h>\nint main(void){return MPI_Init(0,0);}\n' | $(CC) $(MPI_CFLAGS) -x c - $(MPI_LIBS) -o /dev/null 2>/dev/null && echo 1 || echo 0)

ifeq ($(HAVE_OPENMP),1)
  CFLAGS  += -fopenmp
  LDFLAGS += -fopenmp
endif
ifeq ($(HAVE_BLAS),1)
  CFLAGS  += -DTP_HAVE_BLAS $(filter -I%,$(word 2,$(subst |, ,$(BLAS_INFO))))
  LDLIBS  += $(filter-out -I%,$(wordlist 2,99,$(subst |, ,$(BLAS_INFO))))
endif

ifeq ($(HAVE_DNNL),1)
  CFLAGS  += -DTP_HAVE_DNNL
  LDLIBS  += -ldnnl
endif
ifeq ($(HAVE_MPI),1)
  CFLAGS  += -DTP_HAVE_MPI $(MPI_CFLAGS)
  LDLIBS  += $(MPI_LIBS)
endif

LIB_SRC  := $(shell find src -name '*.c' | sort)
CLI_SRC  := $(wildcard cli/*.c)
TEST_SRC := $(wildcard tests/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
LIB      := $(BUILD)/libtaper.a
BIN      := $(BUILD)/taper
TESTBIN  := $(BUILD)/taper-tests

.PHONY: all config deps llama-cpp test test-long test-ref demo bench quality clean help alloc-fail fuzz

all: config $(BIN)

config:
	@echo "taper build: CC=$(CC) SANITIZE=$(SANITIZE) OpenMP=$(HAVE_OPENMP) BLAS=$(HAVE_BLAS) ($(firstword $(subst |, ,$(BLAS_INFO)))) oneDNN=$(HAVE_DNNL) CUDA(nvcc)=$(HAVE_CUDA) [backend not built yet] MPI=$(HAVE_MPI) (Open MPI: mpirun -np N taper train|distill|teacher-cache|importance) -> $(BUILD)/"

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# comm.c is the one file that differs with MPI: rebuilt when MPI=0/1 flips in the same BUILD.
$(BUILD)/.mpi-$(HAVE_MPI):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/.mpi-* && touch $@
$(BUILD)/src/core/comm.o: $(BUILD)/.mpi-$(HAVE_MPI)

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(CLI_OBJ) $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@
	@if [ "$(BUILD)" = build ]; then ln -sf build/taper taper 2>/dev/null || true; fi

# The test binary links a -DTP_TESTING build of the checkpoint writer (its crash hook); the
# shipped library has none. Linked before the archive, it replaces the archive's checkpoint.o.
TEST_HOOKS := $(BUILD)/tests/checkpoint_testing.o
$(TEST_HOOKS): src/train/checkpoint.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DTP_TESTING -c $< -o $@

$(TESTBIN): $(TEST_OBJ) $(TEST_HOOKS) $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# The CLI with the same hook, for the tests that crash a taper process on purpose.
TESTING_BIN := $(BUILD)/taper-testing
$(TESTING_BIN): $(CLI_OBJ) $(TEST_HOOKS) $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# Kernel timings no CLI command isolates (bench/kernels.c; bench/run.sh kernels).
KBENCH := $(BUILD)/taper-kernel-bench
$(KBENCH): $(BUILD)/bench/kernels.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

deps:
	@scripts/deps.sh

# llama.cpp's CPU tools (llama-perplexity, llama-completion, ...) built from the source fetched
# by deps, kept in the cache: the second runtime that tests/test_llamacpp.c loads exports into.
llama-cpp: deps
	@scripts/llama-cpp.sh build

# The whole C suite: needs the default model (fetched by deps), llama.cpp's tools, ../shared/data.
test: deps llama-cpp
	@$(MAKE) --no-print-directory all $(TESTBIN) $(TESTING_BIN)
	TAPER_STRICT=$(STRICT) TAPER_BIN=$(abspath $(BIN)) TAPER_TESTING_BIN=$(abspath $(TESTING_BIN)) $(TESTBIN) $(T)

# Regenerates reference values with transformers/tokenizers/gguf (Python venv in the cache)
# and checks the fixtures committed under tests/fixtures still agree.
test-ref: deps llama-cpp
	@$(MAKE) --no-print-directory all $(TESTBIN) $(TESTING_BIN)
	@scripts/ref.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo.sh

# Speed side by side with the peer (transformers); results go into bench/RESULTS.md by hand.
bench: deps
	@$(MAKE) --no-print-directory all $(KBENCH)
	@TAPER_BIN=$(abspath $(BIN)) TAPER_KERNEL_BENCH=$(abspath $(KBENCH)) bench/run.sh $(SECTIONS)

# Issue 18's quality ablations (hours; resumable: run it again to go on). RUNS="kd-mix ..." picks.
quality: deps
	@$(MAKE) --no-print-directory all
	@TAPER_BIN=$(abspath $(BIN)) bench/quality.sh $(RUNS)

# The suite with the long checks on (whole WikiText-2 file, ...).
test-long: deps llama-cpp
	@$(MAKE) --no-print-directory all $(TESTBIN) $(TESTING_BIN)
	TAPER_STRICT=$(STRICT) TAPER_LONG=1 TAPER_BIN=$(abspath $(BIN)) TAPER_TESTING_BIN=$(abspath $(TESTING_BIN)) $(TESTBIN) $(T)

# Allocation-failure injection (tests/alloc/alloc_fail.c): the k-th allocation of each loader,
# checkpoint and export call fails, for every k, under ASan+UBSan; every run must return a status
# (or TP_OK with the undisturbed result) and leak nothing. Its own program (the wrapped allocator
# would disturb the suite), built against the sanitizer library. T=SCENARIO [K] runs one.
ALLOC_BUILD ?= build-san
ALLOC_WRAP  := malloc calloc realloc strdup strndup aligned_alloc posix_memalign vasprintf mmap \
               pcre2_compile_8 pcre2_match_data_create_8 pcre2_jit_compile_8 utf8proc_map
comma := ,
alloc-fail: deps
	@$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) SANITIZE=1 BUILD=$(ALLOC_BUILD) $(ALLOC_BUILD)/alloc_fail
	OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1 $(ALLOC_BUILD)/alloc_fail $(T)

$(BUILD)/alloc_fail: tests/alloc/alloc_fail.c $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(LIB) $(addprefix -Wl$(comma)--wrap=,$(ALLOC_WRAP)) $(LDLIBS) -o $@

# libFuzzer targets (tests/fuzz/), FUZZ_TIME seconds each (default 600), FUZZ_TARGETS to choose.
fuzz: deps
	@scripts/fuzz.sh

clean:
	rm -rf build build-san taper

help:
	@echo "make          build ./taper (prints what it detected)"
	@echo "make deps     install Debian packages and fetch the default model into $(TAPER_CACHE)"
	@echo "make test     build and run the whole C test suite (T=name filters)"
	@echo "make llama-cpp  build llama.cpp's CPU tools into the cache (a second runtime for GGUF exports)"
	@echo "make test-long  the suite with the long checks (whole WikiText-2 perplexity, ...)"
	@echo "make bench    speed of taper vs PyTorch on this machine, SECTIONS=\"forward importance train distill\" (bench/RESULTS.md)"
	@echo "make quality  the compression-quality ablations, resumable, hours (bench/quality.sh; bench/quality.json)"
	@echo "make test-ref regenerate reference values with Python (transformers etc.) and compare"
	@echo "make demo     run the main job on the default model and print a short report"
	@echo "make SANITIZE=1 test   the suite under ASan+UBSan"
	@echo "make alloc-fail        fail every allocation of the loaders / checkpoints / exports in turn, under ASan"
	@echo "make fuzz              the libFuzzer targets, FUZZ_TIME=600 s each (docs/fuzzing.md)"
	@echo "make test STRICT=1     what CI runs: a test skipped because the model, binary, data or llama.cpp is missing fails"

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(TEST_HOOKS:.o=.d) $(BUILD)/bench/kernels.d
