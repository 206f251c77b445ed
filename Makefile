# Two commands do all the set-up on a fresh machine:
#   make demo   - install, then optimize the embedded model on optimization.yaml
#   make test   - install, then run the whole test suite (slow real-model tests included)
#   make lint   - install, then ruff and mypy (CI runs it before the tests)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

PLUGINS := $(wildcard plugins/*/pyproject.toml)
PLUGINS := $(PLUGINS:/pyproject.toml=)

$(VENV)/.installed: pyproject.toml constraints.txt $(PLUGINS:=/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	# llama-cpp-python builds from source here (5-12 minutes, once per venv). Built for AVX2, not
	# -march=native: the native build segfaults in llama_decode on our Xeons (AMX / AVX-512 FP16).
	# --no-cache-dir so a native wheel in pip's cache is never reused.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/python -m pip install --quiet \
		--no-cache-dir -c constraints.txt llama-cpp-python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,ray]"
	# the plugins shipped in plugins/ are separate distributions (entry points in convergence.plugins)
	$(BIN)/python -m pip install --quiet -c constraints.txt $(foreach p,$(PLUGINS),-e $(p))
	touch $@

demo: install
	$(BIN)/convergence optimize optimization.yaml

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check convergence tests benchmarks plugins
	$(BIN)/mypy convergence

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .convergence results
