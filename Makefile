# The two commands: `make demo` and `make test`. Both work from a clean clone: they create .venv,
# install maturin and the test dependencies, build the extension, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp
BUILD_STAMP := $(VENV)/.build-stamp
INTEG_STAMP := $(VENV)/.integrations-stamp
# installed aside (tests/integrations run them in subprocesses): the older getstream releases the
# integration is also tested with (the latest of each minor of its signaling range, >=3.3,<7, besides the
# venv's 6.1), and pipecat-ai with only what its websocket_service imports (its full dependency set pins
# protobuf<7 and pulls numba/onnxruntime)
GETSTREAM_OLD := 3.3.4 3.4.0 3.5.0 4.0.0 4.1.0 4.2.0 4.3.0 5.0.0 5.1.0 6.0.0
# getstream 7 (signaling in Rust, getstream-rtc) for the call part; its other dependencies are the ones
# getstream[webrtc] 6.x already brought into the venv
GETSTREAM_NEW := 7.0.0
GETSTREAM_RTC := 0.1.0
PIPECAT := 1.14.0
# the latest of each older minor the pipecat part supports (>=1.8), installed without dependencies: they run
# on those of $(PIPECAT)
PIPECAT_OLD := 1.8.1 1.9.0 1.10.0 1.11.0 1.12.0 1.13.0
# one livekit-agents release per supported minor besides the venv's (tests/integrations/livekit/
# test_releases.py); 2.0 imports a few packages 1.x does not depend on
LIVEKIT_OLD := 1.5.17 1.6.10 1.7.1 2.0.0b1
LIVEKIT_2_EXTRA := starlette wsproto a2a-sdk>=1.1.2,<2 culsans aiologic wrapt google-api-core json-rpc
TEST_DEPS := "pytest>=8" "pytest-asyncio>=1.4" "pytest-timeout>=2.3" "websockets>=12" "uvloop>=0.19" "anyio>=4.14" \
	"opentelemetry-api>=1.23" "opentelemetry-sdk>=1.23"
SOURCES := $(shell find src crates python -type f \( -name '*.rs' -o -name '*.py' -o -name '*.pyi' \) 2>/dev/null) Cargo.toml Cargo.lock pyproject.toml

.PHONY: demo test test-rust test-python test-cpythons lint build wheel bench clean venv

demo: build
	$(PY) -m tether demo

test: test-rust test-python

# The gates CI runs before the tests (.ci/run). PYO3_PYTHON points pyo3's build script at the venv.
lint: build
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	PYO3_PYTHON=$(CURDIR)/$(PY) cargo clippy --locked --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest tether._native --allowlist stubtest-allowlist.txt

test-rust:
	cargo test --locked --workspace

# then everything but the framework integrations and the demo again on uvloop (its own timing of
# transports and callbacks: it once undid the pause of a transport's reading)
test-python: build $(INTEG_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) -m pytest -q -p no:cacheprovider --event-loop uvloop tests --ignore=tests/integrations --ignore=tests/demo

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(STAMP) $(SOURCES)
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin develop --release --locked -q
	touch $@

venv: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "maturin>=1.9.4,<2" $(TEST_DEPS) "ruff>=0.8" "mypy>=1.13"
	touch $@

# The suite but the framework integrations on every other CPython >= 3.10 this machine has (PATH, pyenv), each
# in .venv-3.X with the wheel installed: not part of `make test` (minutes per version). The main venv's pip
# installs into each: Debian's and Ubuntu's Pythons have no ensurepip without their python3.X-venv package.
test-cpythons: $(STAMP)
	rm -rf dist-cpythons
	$(VENV)/bin/maturin build --release --locked -q -i $(PY) -o dist-cpythons
	for exe in $$(cd tests && ../$(PY) -c 'from support import other_cpythons; print(*other_cpythons())'); do \
		v=$$($$exe -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		[ -f .venv-$$v/.deps-stamp ] || { rm -rf .venv-$$v && $$exe -m venv --without-pip .venv-$$v \
			&& $(PIP) --python .venv-$$v/bin/python install -q $(TEST_DEPS) && touch .venv-$$v/.deps-stamp; } || exit 1; \
		$(PIP) --python .venv-$$v/bin/python install -q --force-reinstall --no-deps dist-cpythons/*.whl || exit 1; \
		echo "== $$exe"; .venv-$$v/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/integrations || exit 1; \
	done

# A release wheel installable on glibc >= 2.17 (manylinux2014): zig, from PyPI, links against old glibc
# symbols. `auditwheel show` prints the tag it earned.
wheel: $(STAMP)
	$(PIP) install -q "ziglang>=0.13" "auditwheel>=6"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/maturin build --release --locked --zig --compatibility manylinux2014 -o dist
	$(VENV)/bin/maturin sdist -o dist
	$(VENV)/bin/auditwheel show dist/*manylinux*.whl

# QUICK=1 for a smoke run; ROUNDS, LIBS, HERD pass through (benches/README.md)
# the real frameworks of the integration tests (pins: the integrations-test extra of pyproject.toml);
# a package that cannot be installed makes its tests skip with the reason instead of failing the build.
# When they cannot be installed together (livekit-agents requires Python < 3.15), each is tried alone.
$(INTEG_STAMP): $(STAMP) pyproject.toml Makefile
	set -f; reqs=$$(sed -n 's/^integrations-test = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '",'); \
	$(PIP) install -q $$reqs || { for r in $$reqs; do \
		$(PIP) install -q "$$r" || echo "$$r not installed: its tests will skip"; \
	done; $(PIP) check || echo "the integration packages installed one by one do not fit together"; }
	for v in $(GETSTREAM_OLD); do \
		$(PIP) install -q --upgrade --no-deps --target $(VENV)/getstream-$$v "getstream==$$v" \
			|| { rm -rf $(VENV)/getstream-$$v; echo "getstream $$v not installed: its test will skip"; }; \
	done
	$(PIP) install -q --upgrade --no-deps --target $(VENV)/getstream7-$(GETSTREAM_NEW) "getstream==$(GETSTREAM_NEW)" \
		"getstream-rtc==$(GETSTREAM_RTC)" || echo "getstream $(GETSTREAM_NEW) not installed: its tests will skip"
	$(PIP) install -q --upgrade --no-deps --target $(VENV)/pipecat-$(PIPECAT) "pipecat-ai==$(PIPECAT)" \
		loguru wait_for2 loudness soxr sentencex "audioop-lts; python_version >= '3.13'" || echo "pipecat-ai $(PIPECAT) not installed: its tests will skip"
	for v in $(PIPECAT_OLD); do \
		$(PIP) install -q --upgrade --no-deps --target $(VENV)/older-pipecat-$$v "pipecat-ai==$$v" \
			|| { rm -rf $(VENV)/older-pipecat-$$v; echo "pipecat-ai $$v not installed: its test will skip"; }; \
	done
	for v in $(LIVEKIT_OLD); do \
		$(PIP) install -q --upgrade --no-deps --target $(VENV)/livekit-agents-$$v "livekit-agents==$$v" \
			$$(case $$v in 2.*) echo '$(LIVEKIT_2_EXTRA)';; esac) \
			|| { rm -rf $(VENV)/livekit-agents-$$v; echo "livekit-agents $$v not installed: its test will skip"; }; \
	done
	touch $@

bench: build
	$(PIP) install -q -r benches/requirements.txt
	$(PY) benches/run_all.py

clean:
	rm -rf $(VENV) .venv-3.* dist-cpythons target
