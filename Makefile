# The commands people run. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stagegpt prepare shakespeare --variant tiny --tokenizer char --out data/shakespeare_char --if-missing
	$(BIN)/stagegpt ladder --data data/shakespeare_char --out runs/ladder --resume \
		--max-steps 2000 --lr 2e-3 --eval-every 200 --prompt "ROMEO:"

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/user_run.py

clean:
	rm -rf $(VENV) build *.egg-info
