VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test demo bench gpu-check mutation clean app browser

$(INSTALLED): setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch torchvision
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(INSTALLED)

test: $(INSTALLED) browser
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

demo: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) demo.py

bench: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_model.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_eval.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_data.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_train.py --threads 1 --rounds 5 --ours sdpa compile pooled
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_train.py --variant l14-336-base --batch-size 2 --threads 1 --rounds 3 \
		--ours sdpa compile pooled pooled+compile
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_train.py --variant l14-336-base --batch-size 1 --threads 1 --rounds 5 \
		--image-tower --ours sdpa pooled compile pooled+compile
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_processor.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_embed.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_search.py
	HF_HUB_OFFLINE=1 $(PYTHON) bench/bench_finetune.py

# The training-throughput check on one GPU (about 7 minutes): bench/results/gpu_check/gpu_check.json and a table.
gpu-check: $(INSTALLED)
	bash bench/gpu_check.sh

mutation: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) tests/mutants.py --all

# Chromium for the app's browser tests (tests/test_app.py drives it with Playwright): Debian's package where missing.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
		&& ! command -v google-chrome >/dev/null 2>&1 && [ -z "$$CHROMIUM" ]; then \
		if ! command -v apt-get >/dev/null 2>&1; then \
			echo "The browser tests need Chromium: install it, or set CHROMIUM to its executable." >&2; exit 1; \
		fi; \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends chromium; \
	fi

# The Space on the demo's model (trained by `make demo` if missing), searching the demo's held-out images;
# `make app MODEL=DIR_OR_REPO` serves another model over the app's own gallery.
DEMO_MODEL := demo_output/run/final
DEMO_EMBEDDINGS := demo_output/embeddings

$(DEMO_MODEL)/model.safetensors: | $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) demo.py

$(DEMO_EMBEDDINGS)/unimedclip_embeddings.json: $(DEMO_MODEL)/model.safetensors
	rm -rf $(DEMO_EMBEDDINGS) $(DEMO_EMBEDDINGS).partial
	HF_HUB_OFFLINE=1 $(PYTHON) -m unimedclip.inference.embedding --image-folder demo_output/raw/heldout \
		--model $(DEMO_MODEL) --output $(DEMO_EMBEDDINGS)

ifdef MODEL
app: $(INSTALLED)
	GRADIO_ANALYTICS_ENABLED=False $(PYTHON) app/app.py --model $(MODEL)
else
app: $(INSTALLED) $(DEMO_EMBEDDINGS)/unimedclip_embeddings.json
	GRADIO_ANALYTICS_ENABLED=False $(PYTHON) app/app.py --model $(DEMO_MODEL) --embeddings $(DEMO_EMBEDDINGS)
endif

clean:
	rm -rf $(VENV) .pytest_cache demo_output
