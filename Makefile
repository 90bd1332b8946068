# rbtrace: set-up, run and test, on a fresh Debian machine, as root.
#
#   make run     install what is missing, then trace every exec live
#   make test    install what is missing, then run every test
#
# Set-up is incremental: apt runs only when a package is missing, pip only
# when setup.cfg changed.  BCC comes from Debian (python3-bpfcc) and is
# importable only by Debian's python, so the venv is made from
# /usr/bin/python3 with --system-site-packages; everything else is PyPI.

VENV      := .venv
PY        := $(VENV)/bin/python
ARCH      := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
# Runtime: BCC.  No kernel headers: without them rbtrace compiles from the
# running kernel's BTF (rbtrace/btftree.py), and headers of another
# version (all Debian has for this kernel) would add nothing but 64 MB.
# Tests: kernel headers (any version), so that both ways of compiling are
# tested (tests/kernel/test_no_headers.py hides them); the ground truths
# (strace, /proc via procps), tmux for the live table, jq for the man
# page recipes, groff-base and man-db (groff, man, lexgrog) to render the
# man pages, gcc/make for workloads, bpftool to check nothing is left
# loaded.  bpftrace is a benchmark baseline.
APT_RUN   := python3-bpfcc python3-venv python3-pip
APT_TEST  := linux-headers-$(ARCH) strace tmux jq gcc libc6-dev make bpftool bpftrace procps util-linux groff-base man-db
STAMP     := $(VENV)/.installed

.PHONY: setup setup-test run test unit kernel bench man clean

setup: apt-run $(STAMP)

setup-test: setup apt-test $(VENV)/.test-installed

apt-run:
	@./.ci/apt-ensure $(APT_RUN)

apt-test:
	@./.ci/apt-ensure $(APT_TEST)

$(PY):
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

$(STAMP): setup.cfg pyproject.toml $(wildcard man/*.8) | $(PY)
	@# compat: a plain path in a .pth file; the default editable finder
	@# costs every start of rbtrace 9 ms of imports.
	$(PY) -m pip install -q --disable-pip-version-check -e . --config-settings editable_mode=compat
	@# An editable install skips data_files: put the man pages where man(1)
	@# looks for a bin/ on PATH (a wheel install carries them itself).
	@mkdir -p $(VENV)/share/man/man8 && cp man/*.8 $(VENV)/share/man/man8/
	@touch $@

$(VENV)/.test-installed: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	@touch $@

run: setup
	@$(PY) -m compileall -q rbtrace
	$(VENV)/bin/rbtrace exec

# Byte-compiled first: where PYTHONDONTWRITEBYTECODE is set, every
# rbtrace a test starts would otherwise compile the package from source.
test: setup-test
	@$(PY) -m compileall -q rbtrace
	$(PY) -m pytest tests

unit: setup-test
	$(PY) -m pytest tests/unit

kernel: setup-test
	$(PY) -m pytest tests/kernel

# BENCH_BASE=REV: also run rbtrace's rows with the code of git revision
# REV, pair by pair (e.g. make bench BENCH_BASE=ffaf5a4).
BENCH_BASE ?=

bench: setup-test
	@$(PY) -m compileall -q rbtrace
	$(PY) benchmarks/run.py $(if $(BENCH_BASE),--against $(BENCH_BASE))

# The man pages' generated regions (OPTIONS, COLUMNS, the FIELDS entries)
# and schema/rbtrace-events.schema.json, from the kinds' specs
# (rbtrace/mandoc.py); tests/unit/test_docs.py fails when they are stale.
man: setup
	$(PY) -m rbtrace.mandoc

clean:
	rm -rf $(VENV) build *.egg-info
