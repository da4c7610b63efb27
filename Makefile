# The two commands: `make demo` and `make test`. Both work from a clean clone: they create .venv,
# install maturin and the test dependencies, build the extension, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
SOURCES := $(shell find src python -type f \( -name '*.rs' -o -name '*.py' -o -name '*.pyi' \) 2>/dev/null) Cargo.toml Cargo.lock pyproject.toml

.PHONY: demo test test-rust test-python lint build wheel bench clean venv

demo: build
	$(PY) -m tether demo

test: test-rust test-python

# The gates CI runs before the tests (.ci/run). PYO3_PYTHON points pyo3's build script at the venv.
lint: build
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	PYO3_PYTHON=$(CURDIR)/$(PY) cargo clippy --locked --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest tether._native --allowlist stubtest-allowlist.txt

test-rust:
	cargo test --locked

test-python: build
	$(PY) -m pytest -q -p no:cacheprovider tests

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(STAMP) $(SOURCES)
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin develop --release --locked -q
	touch $@

venv: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.9.4,<2" "pytest>=8" "pytest-asyncio>=0.23" "pytest-timeout>=2.3" "websockets>=12" \
		"ruff>=0.8" "mypy>=1.13"
	touch $@

# A release wheel installable on glibc >= 2.17 (manylinux2014): zig, from PyPI, links against old glibc
# symbols. `auditwheel show` prints the tag it earned.
wheel: $(STAMP)
	$(PIP) install -q "ziglang>=0.13" "auditwheel>=6"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin build --release --locked --zig --compatibility manylinux2014 -o dist
	$(VENV)/bin/maturin sdist -o dist
	$(VENV)/bin/auditwheel show dist/*manylinux*.whl

# QUICK=1 for a smoke run; ROUNDS, LIBS, HERD pass through (benches/README.md)
bench: build
	$(PIP) install -q -r benches/requirements.txt
	$(PY) benches/run_all.py

clean:
	rm -rf $(VENV) target
