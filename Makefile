VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test demo bench mutation clean

$(INSTALLED): setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch torchvision
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(INSTALLED)

test: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

demo: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) demo.py

bench: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_model.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_eval.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_data.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_train.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_processor.py

mutation: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) tests/mutants.py

clean:
	rm -rf $(VENV) .pytest_cache demo_output
