VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pear-edge-setup

.PHONY: setup setup-cuda gpu-check check test demo clean lock

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock scripts/setup.sh scripts/llama_cmake_args.py
	bash scripts/setup.sh
	touch $@

# A GPU machine: torch's CUDA build, llama-cpp-python built with CUDA for this GPU, onnxruntime-gpu.
# Marks the set-up as done, so `make test` / `make demo` keep the CUDA builds.
setup-cuda:
	bash scripts/setup.sh --cuda
	touch $(STAMP)

# The prepared GPU measurements (set-up included), into OUT (default: out/gpu-check).
gpu-check:
	bash scripts/gpu_check.sh $(or $(OUT),out/gpu-check)

# The fast tier: every test that needs no real model (not marked slow), in a few minutes on 2 cores.
check: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/pear-edge demo

clean:
	rm -rf $(VENV) build *.egg-info

# Refresh requirements.lock: a new venv with the newest releases the project admits, then their versions and
# PyPI hashes. Run `make test` on the result before committing it.
lock:
	python3 scripts/lock.py --refresh
