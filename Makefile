VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pear-edge-setup

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/llama_cmake_args.py
	bash scripts/setup.sh
	touch $@

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/pear-edge demo

clean:
	rm -rf $(VENV) build *.egg-info
