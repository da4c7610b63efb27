# The two commands: `make demo` and `make test`. Both work from a clean clone: they create .venv,
# install maturin and the test dependencies, build the extension, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
SOURCES := $(shell find src python -type f \( -name '*.rs' -o -name '*.py' -o -name '*.pyi' \) 2>/dev/null) Cargo.toml Cargo.lock pyproject.toml

.PHONY: demo test test-rust test-python build bench clean venv

demo: build
	$(PY) -m tether demo

test: test-rust test-python

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
	$(PIP) install -q "maturin>=1.7,<2" "pytest>=8" "pytest-asyncio>=0.23" "pytest-timeout>=2.3" "websockets>=12"
	touch $@

# QUICK=1 for a smoke run; ROUNDS, LIBS, HERD pass through (benches/README.md)
bench: build
	$(PIP) install -q -r benches/requirements.txt
	$(PY) benches/run_all.py

clean:
	rm -rf $(VENV) target
