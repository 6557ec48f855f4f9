# sdlearn: the whole course from a fresh machine (GNU make; Linux and macOS).
# Windows, or without make: create a virtual environment, `pip install -e ".[test]"`, then
# `python -m sdlearn course|test|lab|exercises|gpu-check` does what the targets below do.
#
#   make course      run every chapter headlessly -> build/course/ (executed notebooks + HTML)
#   make test        the whole test suite (pass pytest options with ARGS="-k ddpm -x")
#   make lab         JupyterLab in chapters/ (student copies: make lab ARGS=build/student)
#   make exercises   student copies of the chapters (solutions removed) -> build/student/
#   make gpu-check   on a CUDA machine: benchmarks and every chapter in full mode, with times
#                    (with a .whl/ folder: on a machine without a network, with its own python3; see gpu-wheels)
#   make gpu-wheels  here, with a network: the wheels gpu-check needs on such a machine -> .whl/

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Marks a finished install; it is redone whenever pyproject.toml changes.
STAMP := $(VENV)/.sdlearn-installed

# torch is installed before sdlearn so that a machine without an NVIDIA GPU gets a CPU build
# (on these machines torch==2.13.0 is a CPU wheel on local disk; elsewhere you may want e.g.
# TORCH_CPU="torch --index-url https://download.pytorch.org/whl/cpu"). GPU machines get plain torch.
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch

ARGS ?=

.PHONY: help venv course test lab exercises gpu-check gpu-wheels clean distclean

help:
	@sed -n '1,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

venv: $(STAMP)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	 { echo "sdlearn needs Python 3.10 or newer; try: make $(MAKECMDGOALS) PYTHON=python3.12"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@if nvidia-smi >/dev/null 2>&1; then torch="$(TORCH_GPU)"; echo "NVIDIA GPU found: installing $$torch";\
	 else torch="$(TORCH_CPU)"; echo "no NVIDIA GPU: installing the CPU build $$torch"; fi;\
	 $(PY) -m pip install $$torch
	$(PY) -m pip install -e ".[test]"
	@touch $(STAMP)

course: venv
	$(PY) -m sdlearn course $(ARGS)

test: venv
	$(PY) -m sdlearn test $(ARGS)

lab: venv
	$(PY) -m sdlearn lab $(ARGS)

exercises: venv
	$(PY) -m sdlearn exercises $(ARGS)

# The lent GPU machine has no network and its own python3 (torch, transformers, accelerate, safetensors, matplotlib)
# but not diffusers, mlxtend or the notebook runners: with .whl/ present (make gpu-wheels, then carry .whl), they are
# installed from it into /tmp/sdlearn-site and that python3 runs the check; without .whl/, the venv does.
GPU_SITE ?= /tmp/sdlearn-site
gpu-check:
	@if [ -d .whl ]; then \
	  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl \
	  && PYTHONPATH=$(GPU_SITE):$$PWD PYTHONUNBUFFERED=1 python3 -m sdlearn gpu-check $(ARGS); \
	else $(MAKE) venv && $(PY) -m sdlearn gpu-check $(ARGS); fi

# cp312 manylinux wheels of scripts/gpu_wheels.txt (the GPU machine's python is 3.12), no dependencies resolved: the
# list names every package that machine lacks.
gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r scripts/gpu_wheels.txt

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV)
