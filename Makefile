# `make demo` and `make test` work from a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edge-installed
DEMO_STAMP := $(VENV)/.edge-demo
DEMO   := examples/digits/artifacts
PYTEST_ARGS ?=
# llama.cpp is compiled once per machine into a wheel outside the repo (portable: no -march=native), with
# its RPC backend (one model across several devices: edge serve-rpc, load(..., devices=...)); wheels built
# without it live in the older wheels/ folder and are not reused
LLAMA_VERSION := 0.3.36
WHEELS := $(HOME)/.cache/edgelift/wheels-rpc
LLAMA_WHEEL = $(firstword $(wildcard $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl))

.PHONY: demo test fuzz corpus bench clean llama-wheel system-deps wheel

# the demo needs the converters (torch, onnx) and scikit-learn's digits, nothing else: no llama.cpp build
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[convert,examples]'
	touch $(DEMO_STAMP)

# the tests need every backend: llama.cpp is compiled here (once per machine), never for the demo
$(STAMP): pyproject.toml $(DEMO_STAMP)
	$(BIN)/python -m pip install -q --upgrade pip
	$(MAKE) --no-print-directory llama-wheel
	$(BIN)/python -m pip install -q --no-deps $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

llama-wheel:
	@if [ -z "$(LLAMA_WHEEL)" ]; then \
		echo "building llama-cpp-python $(LLAMA_VERSION) (portable, ~4 min on 2 cores)"; \
		mkdir -p $(WHEELS); \
		CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_RPC=ON" $(BIN)/python -m pip wheel -q --no-deps --no-cache-dir \
			-w $(WHEELS) llama-cpp-python==$(LLAMA_VERSION); \
	fi

demo: $(DEMO_STAMP)
	$(BIN)/python -m examples.digits.train
	$(BIN)/edge convert $(DEMO)/digits.pt2 --to onnx -q none,fp16,int8,int4 \
		--calibration $(DEMO)/calib.npz --validation $(DEMO)/val.npz --out build/demo
	$(BIN)/edge inspect build/demo/digits.int8.onnx
	$(BIN)/edge run build/demo/digits.int8.onnx --input $(DEMO)/val.npz
	for m in fp32 fp16 int8 int4; do \
		$(BIN)/edge profile build/demo/digits.$$m.onnx --idle 1 --input $(DEMO)/val.npz \
			--json build/demo/profile.$$m.json --html build/demo/profile.$$m.html || exit 1; \
	done
	$(BIN)/edge report build/demo/profile.fp32.json build/demo/profile.fp16.json build/demo/profile.int8.json \
		build/demo/profile.int4.json --html build/demo/compare.html --markdown build/demo/compare.md

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the full fuzz campaign: 300 mutants per format through every entry point (tests/fuzzing/, ~25 min on 2 cores)
fuzz: $(STAMP)
	$(BIN)/python -m pytest -q -s -m fuzz tests/test_fuzz.py $(PYTEST_ARGS)

# every real third-party model (examples/models/corpus.py) through every target and mode (~20 min on 2 cores)
corpus: $(STAMP)
	$(BIN)/python -m pytest -q -m corpus tests/test_real_models.py $(PYTEST_ARGS)

# Debian packages the tests use: headless Chromium renders the HTML reports, an OpenSSH server on 127.0.0.1
# is the "device" of the remote-profiling tests (root installs them; otherwise those tests skip and say why)
SYSTEM_PACKAGES := chromium openssh-server
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! test -x /usr/sbin/sshd; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $(SYSTEM_PACKAGES); \
		else echo "not root: install $(SYSTEM_PACKAGES) for the HTML-rendering and SSH tests (they skip)"; fi; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/onnx_quant.py
	$(BIN)/python benchmarks/runtime_overhead.py
	$(BIN)/python benchmarks/import_time.py

# the wheel users install (pip install dist/edgelift-*.whl); `edge profile --install` sends a device the same code
wheel: $(DEMO_STAMP)
	$(BIN)/python -m pip wheel -q --no-deps -w dist .
	@ls dist/*.whl

clean:
	rm -rf build .pytest_cache examples/*/artifacts
