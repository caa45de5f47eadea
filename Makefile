# quantd build. Sources are found by wildcard: adding quant/foo.c or tests/test_foo.c needs no
# edit here. `make` builds build/quantd and every test binary; `make test` runs them all.
#   make            build (WERROR=1 or CI=true adds -Werror)
#   make test       deps + build + every test (unit, end-to-end)
#   make test-asan  the unit tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   make run        deps + build + `quantd serve` on the embedded defaults
#   make bench      benchmarks that print figures
#   make deps       install the Debian packages (root) or print the command

CC      ?= cc
BUILD   ?= build
PKGS     = libmicrohttpd libcjson openblas uuid libcrypto libcurl libpcre2-8 libutf8proc
DEB_PKGS = build-essential pkg-config libmicrohttpd-dev libcjson-dev libopenblas-dev uuid-dev \
           libssl-dev libcurl4-openssl-dev libpcre2-dev libutf8proc-dev curl jq chromium \
           slurmctld slurmd slurm-client munge
# Commands the tests need besides the libraries (chromium: the dashboard's browser test; a
# single-node Slurm for tests/e2e_slurm.sh).
TEST_CMDS = curl jq chromium munged slurmctld slurmd sbatch squeue scontrol scancel

OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -MMD -MP -pthread \
           -I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
ifneq ($(filter 1 true,$(WERROR) $(CI)),)
CFLAGS  += -Werror
endif
ifdef SANITIZE
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lmvec -lm -pthread

LIB_SRC  := $(wildcard base/*.c quant/*.c quant/*/*.c api/*.c worker/*.c server/*.c)
CLI_SRC  := $(wildcard cli/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
BENCH_SRC:= $(wildcard bench/bench_*.c)
TEST_AUX := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
AUX_OBJ  := $(TEST_AUX:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_BIN:= $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.SECONDARY:
.PHONY: all deps ensure-deps test test-unit test-asan run bench clean
all: $(BUILD)/quantd $(TEST_BIN) $(BENCH_BIN)

$(BUILD)/libquantd.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The commit the binary is built from, for `quantd --version`: `git describe --always --dirty`,
# or "unknown" outside a git checkout. The header is rewritten only when the text changes, so an
# unchanged tree does not relink.
GIT_DESCRIBE := $(shell git describe --always --dirty 2>/dev/null)
$(BUILD)/gen/git_version.h: FORCE
	@mkdir -p $(dir $@)
	@v='#define QD_GIT_DESCRIBE "$(or $(GIT_DESCRIBE),unknown)"'; \
	  [ -f $@ ] && [ "$$(cat $@)" = "$$v" ] || echo "$$v" > $@
$(BUILD)/cli/main.o: $(BUILD)/gen/git_version.h
$(BUILD)/cli/main.o: CFLAGS += -I$(BUILD)/gen
.PHONY: FORCE
FORCE:

$(BUILD)/quantd: $(CLI_OBJ) $(BUILD)/libquantd.a
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libquantd.a $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(AUX_OBJ) $(BUILD)/libquantd.a
	$(CC) $(LDFLAGS) -o $@ $< $(AUX_OBJ) $(BUILD)/libquantd.a $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BUILD)/libquantd.a
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libquantd.a $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# Install the Debian packages when pkg-config cannot find a library (root: apt-get; otherwise
# print the command to run).
deps:
	@if pkg-config --exists $(PKGS) && command -v cc >/dev/null && \
	   (for c in $(TEST_CMDS); do command -v $$c >/dev/null || exit 1; done); then \
	  echo "deps: all present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(DEB_PKGS); \
	else \
	  echo "deps: missing packages; run: sudo apt-get install -y $(DEB_PKGS)"; exit 1; \
	fi

ensure-deps:
	@(pkg-config --exists $(PKGS) && for c in $(TEST_CMDS); do command -v $$c >/dev/null || exit 1; done) || \
	  $(MAKE) --no-print-directory deps

# Recursive make so that pkg-config is asked again after deps installed the packages.
test: ensure-deps
	@$(MAKE) --no-print-directory all
	@QUANTD=$(BUILD)/quantd BUILD=$(BUILD) tests/run.sh

test-unit: ensure-deps
	@$(MAKE) --no-print-directory all
	@QUANTD=$(BUILD)/quantd BUILD=$(BUILD) tests/run.sh --unit

test-asan: ensure-deps
	@$(MAKE) --no-print-directory BUILD=build-asan SANITIZE=1 OPT=-O1 all
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  QUANTD=build-asan/quantd BUILD=build-asan tests/run.sh --unit

run: ensure-deps
	@$(MAKE) --no-print-directory $(BUILD)/quantd
	$(BUILD)/quantd serve

bench: ensure-deps
	@$(MAKE) --no-print-directory all
	@for b in $(BENCH_BIN); do echo "== $$b"; $$b || exit 1; done

clean:
	rm -rf build build-asan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(AUX_OBJ:.o=.d) $(TEST_BIN:=.d) $(BENCH_BIN:=.d)

# Files embedded with .incbin (base/embed.h): -MMD cannot see them, so name them here.
$(BUILD)/server/openapi_blob.o: api/openapi.yaml
$(BUILD)/server/dashboard.o: web/index.html
$(BUILD)/worker/dispatch_slurm.o: deploy/quantd.sbatch
