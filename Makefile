# pyusdt-prof: one command to set up and run each job.
#
#   make demo    install what is missing, build, record the bundled example
#                app and draw flamegraphs/demo-{cpu,offcpu,syscall,wakeup}.svg
#   make test    everything: fmt, clippy, Rust tests, Python tests per
#                interpreter, BPF end-to-end tests
#   make test-kernels  the BPF end-to-end subset on Linux 5.10, 6.1 and 6.12
#                (Debian's kernels, booted under QEMU) and on this machine's
#                kernel: a table kernel x test (root; KERNELS="6.1 host")
#   make bench   bench/RESULTS.md: cost beside cProfile, py-spy, bpftrace (root)
#   make bench-calls  per-call cost of `python -m pyusdt` without a tracer,
#                and of app probes and spans
#   make soak    ten minutes of recording: the recorder's memory over time
#   make fuzz    a minute of fuzzing the profile reader
#   make layout-tables  src/target/tables.json, each interpreter's layout
#                for recording a Python that runs without pyusdt
#
# PYTHONS lists the interpreters to build and test the extension for; it
# defaults to the 3.11, 3.12, 3.13, 3.14 and 3.15 found under pyenv or on
# PATH, and (as root) takes 3.14 and 3.15 from a Debian sid chroot where
# none is found (`sid:3.14`: make deps-sid makes it, tests/sid/setup):
#   make test PYTHONS="/usr/bin/python3.12 sid:3.15"

SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help deps deps-apt deps-sid deps-python deps-web bench-calls build layout-tables demo flamegraphs test test-rust test-python test-kernels lint bench soak fuzz clean

PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)
find_python = $(firstword $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1)) \
                          $(shell command -v python$(1) 2>/dev/null))
# An interpreter, or sid:X.Y where none is found and a chroot can hold it.
find_or_sid = $(or $(call find_python,$(1)),$(if $(filter 0,$(shell id -u)),sid:$(1)))
PYTHONS ?= $(strip $(foreach v,3.11 3.12 3.13,$(call find_python,$(v))) \
                   $(foreach v,3.14 3.15,$(call find_or_sid,$(v))))
# The interpreter for the demo, the benchmark and clippy: the newest one on
# this machine.
PYTHON := $(lastword $(filter-out sid:%,$(PYTHONS)))
SID_PYTHONS := $(filter sid:%,$(PYTHONS))

APT_PACKAGES := clang llvm libelf-dev zlib1g-dev pkg-config bpftool bpftrace
# For the export test: the real speedscope (npm, tests/web) in Chromium;
# for the top test: tmux.
APT_PACKAGES += chromium tmux
WEB_DIR := tests/web
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROF := target/release/pyusdt-prof
# The venv of an interpreter: .venv/X.Y
venv_of = .venv/$$($(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# For the shell variable py, one of PYTHONS: v its venv, run what runs a
# command where it lives (tests/sid/run for sid:X.Y), exe the interpreter
# there.
with_py = case $$py in \
    sid:*) v=.venv/$${py\#sid:}; run=$(CURDIR)/tests/sid/run; exe=python$${py\#sid:} ;; \
    *) v=$(call venv_of,$$py); run=; exe=$$py ;; \
    esac

help:
	@awk 'NR > 1 && !/^#/ { exit } NR > 1' Makefile | sed 's/^# \{0,1\}//'
	@echo "PYTHONS = $(PYTHONS)"

deps: deps-apt deps-sid deps-python deps-web

# The Debian sid chroot for 3.14 and 3.15, if PYTHONS asks for it.
deps-sid:
	@[ -z "$(SID_PYTHONS)" ] || tests/sid/setup

deps-web: deps-apt
	@command -v npm >/dev/null || { echo "deps: npm not found (Node.js is needed for tests/web)" >&2; exit 1; }
	@if [ ! -d $(WEB_DIR)/node_modules ]; then \
	    echo "deps: npm ci in $(WEB_DIR)"; \
	    npm ci --prefix $(WEB_DIR) --no-audit --no-fund --loglevel=error; \
	fi

deps-apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "deps: installing" $$missing; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

deps-python: deps-sid
	@[ -n "$(PYTHONS)" ] || { echo "deps: no Python 3.11-3.15 found; set PYTHONS" >&2; exit 1; }
	@for py in $(PYTHONS); do \
	    $(with_py); \
	    if ! $$run $$v/bin/python -c 'import maturin, pytest, grpc_tools, pyperformance' \
	            2>/dev/null; then \
	        echo "deps: $$v from $$py"; \
	        [ -e $$v/bin/python ] || $$run $$exe -m venv $$v || exit 1; \
	        $$run $$v/bin/pip install -q 'maturin>=1.7,<2' 'pytest>=8' \
	            'protobuf>=5' 'grpcio-tools>=1.60' pyperf pyperformance || exit 1; \
	    fi; \
	    if [ -n "$$run" ]; then \
	        mkdir -p target/sid && \
	        printf '#!/bin/sh\nexec %s %s "$$@"\n' "$(CURDIR)/tests/sid/run" \
	            "$(CURDIR)/$$v/bin/python" > target/sid/$${py#sid:} && \
	        chmod +x target/sid/$${py#sid:}; \
	    fi; \
	done

# The profiler, the extension built into each interpreter's venv, and
# the Python API (pyusdt_prof: built once, abi3, installed into each venv),
# whose wheel carries the pyusdt-prof command too.
build: deps
	cargo build --release --locked
	@for py in $(PYTHONS); do \
	    $(with_py); \
	    echo "build: pyusdt for $$v"; \
	    (cd pyext && $$run env VIRTUAL_ENV=$(CURDIR)/$$v PATH=$(CURDIR)/$$v/bin:$$PATH \
	        CARGO_TARGET_DIR=$(CURDIR)/target/$$(basename $$v) \
	        maturin develop --release --locked -q) || exit 1; \
	done
	@echo "build: pyusdt_prof, one abi3 wheel for every venv"
	@rm -f target/wheels/pyusdt_prof-*.whl
	@rm -rf pyprof/pyusdt_prof.data && mkdir -p pyprof/pyusdt_prof.data/scripts
	@strip --strip-debug -o pyprof/pyusdt_prof.data/scripts/pyusdt-prof target/release/pyusdt-prof
	@v=$(call venv_of,$(PYTHON)); \
	(cd pyprof && PATH=$(CURDIR)/$$v/bin:$$PATH \
	    maturin build --release --locked -q -o $(CURDIR)/target/wheels) || exit 1
	@for py in $(PYTHONS); do \
	    $(with_py); \
	    $$run $$v/bin/pip install -q --force-reinstall --no-deps \
	        target/wheels/pyusdt_prof-*-abi3-*.whl || exit 1; \
	done

# src/target/tables.json: the layout of each interpreter of PYTHONS, as
# pyext/csrc/layout.c compiles it against that interpreter's headers, for
# recording a process without pyusdt. Run it when an interpreter is added.
layout-tables: build
	$(PYTHON) pyext/layout_tables.py src/target/tables.json $(venv_pythons)

demo: build
	examples/demo.sh $(call venv_of,$(PYTHON))/bin/python $(PROF)

# The example flamegraphs in flamegraphs/ (what make demo draws).
flamegraphs: demo

lint: deps
	cargo fmt --all --check
	PYO3_PYTHON=$(PYTHON) cargo clippy --release --locked --workspace --all-targets -- -D warnings

# Each interpreter of PYTHONS as one command that runs it in its venv.
venv_pythons = $$(for py in $(PYTHONS); do $(with_py); \
	    if [ -n "$$run" ]; then echo $(CURDIR)/target/sid/$${py\#sid:}; \
	    else echo $(CURDIR)/$$v/bin/python; fi; done)

test-rust: build
	@PYUSDT_TEST_PYTHONS="$(venv_pythons)" cargo test --release --locked -p pyusdt-prof -p pyusdt-contract

test-python: build
	@for py in $(PYTHONS); do \
	    $(with_py); \
	    echo "test: Python tests under $$v"; \
	    $$run env PYUSDT_PROF=$(CURDIR)/$(PROF) $$v/bin/python -m pytest -q \
	        -p no:cacheprovider tests/python || exit 1; \
	done

test: lint test-rust test-python

# The kernel matrix (tests/kernels/run): the kernels are downloaded once
# into PYUSDT_KERNEL_CACHE (default /var/cache/pyusdt-prof). The tests run
# under the newest interpreter.
KERNELS ?= 5.10 6.1 6.12 host
test-kernels: build
	PYTHON=$(CURDIR)/$(call venv_of,$(PYTHON))/bin/python tests/kernels/run $(KERNELS)

# A minute of fuzzing the profile reader (cargo-fuzz, on the stable
# toolchain without sanitizers); the corpus lives in fuzz/corpus.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run profile_parse -s none -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=8192

# Ten minutes of recording; the recorder's memory, every 30 s.
soak: build
	bench/soak.sh $(call venv_of,$(PYTHON))/bin/python $(PROF)

# bench/RESULTS.md: overhead and cost beside cProfile, py-spy and bpftrace
# on the seed's probes, with the interpreter of BENCH_PYTHON (the newest).
BENCH_PYTHON ?= $(PYTHON)
bench: build
	cargo build --release --locked --example floor
	@v=$(call venv_of,$(BENCH_PYTHON)); \
	rm -rf target/trap-site target/trap-wheel && \
	(cd pyext && VIRTUAL_ENV=$(CURDIR)/$$v PATH=$(CURDIR)/$$v/bin:$$PATH \
	    CARGO_TARGET_DIR=$(CURDIR)/target/trap maturin build --release --locked -q \
	    --features trap-nop -i $(CURDIR)/$$v/bin/python -o $(CURDIR)/target/trap-wheel) && \
	$$v/bin/pip install -q --no-deps --target target/trap-site target/trap-wheel/*.whl && \
	$$v/bin/pip install -q pyperf pyperformance py-spy && \
	{ command -v inferno-flamegraph >/dev/null || [ -x $$HOME/.cargo/bin/inferno-flamegraph ] || \
	  cargo install inferno --locked --quiet; } && \
	PYUSDT_PROF=$(CURDIR)/$(PROF) $$v/bin/python bench/bench.py

# Per-call cost of python -m pyusdt in instructions (callgrind) and time,
# and what an untraced app probe or span costs beside an attribute read,
# for every interpreter.
bench-calls: build
	@for py in $(PYTHONS); do $(call venv_of,$$py)/bin/python bench/overhead.py || exit 1; echo; \
	    $(call venv_of,$$py)/bin/python bench/app_probes.py || exit 1; echo; done

clean:
	cargo clean
	rm -rf .venv pyext/python/pyusdt/*.so pyprof/python/pyusdt_prof/*.so
