# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU build of torch: this workplace ships the wheel locally; elsewhere pass TORCH_SPEC (e.g. a CUDA build).
TORCH_SPEC ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test install protos certs lint clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,bench]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install specdec into it (idempotent)

demo: $(STAMP)  ## the three services on the built-in tiny pair: target-only vs speculative, side by side
	$(BIN)/python -m specdec.tools.demo

test: $(STAMP)  ## run the whole test suite
	$(BIN)/python -m pytest -q

protos: $(STAMP)  ## regenerate specdec/v1 from protos/ (never edit generated code by hand)
	$(BIN)/python -m specdec.tools.protogen

certs: $(STAMP)  ## self-signed test certificates in certs/ (CA, server for localhost, client)
	$(BIN)/python -m specdec.tools.certs certs

lint: $(STAMP)  ## ruff over the hand-written code
	$(BIN)/python -m ruff check specdec draft_service target_service orchestrator tests scripts

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
