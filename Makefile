# Two commands do all set-up on a fresh machine: `make quickstart` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QS_DIR ?= runs/quickstart
QS_DATA ?= $(QS_DIR)/data
QS_WORK ?= $(QS_DIR)/tokenizer

.PHONY: install quickstart test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

quickstart: install
	@echo "== 1/3 generate the embedded bouncing-objects dataset -> $(QS_DATA)"
	test -f $(QS_DATA)/dataset_info.json || $(PY) -m worldmodel.data.generate --source=bouncing --out=$(QS_DATA) \
	  --episodes=400 --frames=32 --size=32 --seed=0
	@echo "== 2/3 train the video tokenizer (FSQ) -> $(QS_WORK)"
	$(PY) -m worldmodel.train --config=experiments/tokenizer.py:quickstart --workdir=$(QS_WORK) \
	  --config.data.dir=$(QS_DATA)
	@echo "== 3/3 evaluate on the held-out test split"
	$(PY) -m worldmodel.evaluate --workdir=$(QS_WORK) --split=test
	@echo "Results: $(QS_WORK)/eval/<step>/metrics.json, truth_vs_recon.gif, psnr_per_frame.png; TensorBoard: $(QS_WORK)/tb"

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m worldmodel.bench --config=experiments/tokenizer.py:small --steps=10

clean:
	rm -rf $(VENV) runs
