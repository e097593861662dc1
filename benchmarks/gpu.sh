#!/bin/sh
# The benchmark suite on a GPU machine with no network, in a few minutes: every workload through the proxy and
# straight to Triton, with every torch model required to load on the GPU (the run fails if one is on the CPU).
#
#   here:   benchmarks/gpu_pack.sh              # packs Triton, the proxy's packages and wrk into .gpu/ (~45 MB)
#   there:  sh benchmarks/gpu.sh                # with .gpu/ carried beside the working tree
#
# It uses the machine's own python3 for torch, Pillow, requests and pytest (put after ours on sys.path, so that
# the models get numpy 1.26.4). Results: benchmarks/results/gpu-<card>.{md,json,png}, or under $OUT when set.
# Environment: GPU_PYTHON (default python3), GPU_WORK (default /tmp/gpu-bench), BENCH_SECONDS (default 3),
# REQUIRE_GPU (default 1; 0 for a dry run on a machine without one).
set -eu
cd "$(dirname "$0")/.."
[ -f .gpu/triton.tar.xz ] && [ -f .gpu/site.tar.xz ] || { echo "gpu.sh: no .gpu/: run benchmarks/gpu_pack.sh first" >&2; exit 2; }
PY=${GPU_PYTHON:-python3}
W=${GPU_WORK:-/tmp/gpu-bench}
started=$(date +%s)

rm -rf "$W" && mkdir -p "$W/triton"
xz -dc .gpu/triton.tar.xz | tar -C "$W/triton" -xf -
"$PY" -m venv --without-pip "$W/venv"
site=$("$W/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
xz -dc .gpu/site.tar.xz | tar -C "$site" -xf -
# The machine's packages come after ours: a .pth line is appended to sys.path.
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz-machine.pth"
echo "gpu.sh: environment ready in $(( $(date +%s) - started ))s"

export PATH="$PWD/.gpu/bin:$PATH" LD_LIBRARY_PATH="$PWD/.gpu/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TRITON_HOME="$W/triton/pytriton/tritonserver" MODEL_PYTHON="$W/venv/bin/python" PROXY_PYTHON="$W/venv/bin/python"
"$W/venv/bin/python" -c 'import numpy, torch, grpc, gevent, flask; print("numpy", numpy.__version__, "| torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())'

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
name=gpu-$(echo "${gpu:-none}" | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
require=--require-gpu
[ "${REQUIRE_GPU:-1}" = 1 ] || require=
# The proxy gets the product's default workers (one per CPU). The per-worker peers (FastAPI, hand-rolled) need
# packages the pack does not carry (uvicorn, grpcio's aio client): that comparison is made on the CPU machine.
# The LLM section needs SmolLM2's converted weights (514 MB), over what a GPU run may carry (64 MiB): left out.
"$W/venv/bin/python" benchmarks/bench.py $require --gpu "${gpu:-no GPU}" --seconds "${BENCH_SECONDS:-3}" \
    --no-perf-analyzer --no-peers --no-llm --name "$name" --out "${OUT:-benchmarks/results}"
echo "gpu.sh: done in $(( $(date +%s) - started ))s"
