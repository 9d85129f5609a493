# Two entry points: `make demo` (dense vs radial on the embedded default model) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build lies on local disk; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test,plot]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidattn demo --out outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/vidattn bench --grid 21x30x52 --heads 2 --head-dim 128

clean:
	rm -rf $(VENV) outputs
