# Two commands matter: `make demo` and `make test`. Both install everything first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := exp/demo

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch is installed first and pinned: any looser request downloads a CUDA build.
$(VENV)/.installed: setup.cfg scripts/fix_torchaudio_cpu.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 torchaudio==2.11.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps resemblyzer  # ge2e's weights only (extra "ge2e")
	$(PY) scripts/fix_torchaudio_cpu.py
	touch $@

demo: setup
	$(PY) -m corpora.synthesize speech_commands $(DEMO)/corpus --speakers 40
	$(PY) -m framework run kws --config configs/kws_demo.yaml target_dir=$(DEMO)/kws \
	    prepare_data.dataset_root=$(DEMO)/corpus/speech_commands_v0.01 \
	    prepare_data.test_root=$(DEMO)/corpus/speech_commands_test_set_v0.01
	$(PY) -m corpora.synthesize voxceleb1 $(DEMO)/corpus
	$(PY) -m framework run asv --config configs/asv_demo.yaml target_dir=$(DEMO)/asv \
	    prepare_data.dev_root=$(DEMO)/corpus/vox1_dev_wav \
	    prepare_data.test_root=$(DEMO)/corpus/vox1_test_wav prepare_data.trials_dir=$(DEMO)/corpus
	$(PY) -m corpora.synthesize gtzan $(DEMO)/corpus/gtzan --clips-per-genre 20 --secs 10
	$(PY) -m framework run genre --config configs/genre_demo.yaml target_dir=$(DEMO)/genre \
	    prepare_data.dataset_root=$(DEMO)/corpus/gtzan
	$(PY) -m framework predict $(DEMO)/genre --top-k 3 \
	    $(DEMO)/corpus/gtzan/genres_original/jazz/jazz.00001.wav

test: setup
	$(PY) -m pytest -q  # setup.cfg [tool:pytest]: tests/ and the doctests of framework/, corpora/

bench: setup
	$(PY) bench/kws_train_throughput.py
	$(PY) bench/feature_cache_speed.py
	$(PY) bench/asv_scoring.py
	$(PY) bench/asv_embedding_memory.py
	$(PY) bench/classification_quality.py

clean:
	rm -rf $(VENV) exp
