# `make demo` and `make test` work from a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edge-installed
DEMO   := examples/digits/artifacts
PYTEST_ARGS ?=

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.digits.train
	$(BIN)/edge convert $(DEMO)/digits.pt2 --to onnx -q none -q fp16 -q int8 -q int4 \
		--calibration $(DEMO)/calib.npz --validation $(DEMO)/val.npz --out build/demo
	$(BIN)/edge inspect build/demo/digits.int8.onnx

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/onnx_quant.py

clean:
	rm -rf build .pytest_cache examples/*/artifacts
