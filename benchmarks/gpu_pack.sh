#!/bin/sh
# Pack what benchmarks/gpu.sh needs on a GPU machine with no network into .gpu/ (git-ignored), here, where the
# package registries are reachable. About 60 MB: it has to travel beside the working tree.
#   - triton.tar.xz: Triton 2.51 from the nvidia-pytriton wheel, slimmed: the server, the python backend with the
#     stub for the GPU machine's Python, and its libraries without libpython (the machine has its own);
#   - site.tar.xz: the proxy's packages (the v2 pass-through's client and prometheus_client included) and numpy
#     1.26.4 for that Python (the models need numpy < 2; torch, Pillow and requests come from the machine's own
#     Python);
#   - wrk and its LuaJIT library.
# Usage: benchmarks/gpu_pack.sh [PYTHON_VERSION]   (default 3.12, the GPU machine's)
set -eu
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
OUT=.gpu
VENV_SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$OUT" && mkdir -p "$OUT/bin" "$OUT/stage"

# Triton, as the wheel lays it out (the server finds its libraries through RPATH: keep the relative layout).
mkdir -p "$OUT/stage/triton/pytriton/tritonserver/backends" "$OUT/stage/triton/nvidia_pytriton.libs"
cp -a "$VENV_SITE/pytriton/tritonserver/bin" "$VENV_SITE/pytriton/tritonserver/caches" "$OUT/stage/triton/pytriton/tritonserver/"
cp -a "$VENV_SITE/pytriton/tritonserver/backends/python" "$OUT/stage/triton/pytriton/tritonserver/backends/"
rm -f "$OUT/stage/triton/pytriton/tritonserver/backends/python/triton_python_backend_stub"
cp "$VENV_SITE/pytriton/tritonserver/python_backend_stubs/$PYV/triton_python_backend_stub" \
   "$OUT/stage/triton/pytriton/tritonserver/backends/python/"
find "$VENV_SITE/nvidia_pytriton.libs" -maxdepth 1 -type f ! -name 'libpython3*' -exec cp {} "$OUT/stage/triton/nvidia_pytriton.libs/" \;
tar -C "$OUT/stage/triton" -cf - . | xz -6 -T0 > "$OUT/triton.tar.xz"

# The proxy's packages and the models' numpy, for that Python, without their dependencies already there.
.venv/bin/python -m pip install --quiet --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --target "$OUT/stage/site" \
    numpy==1.26.4 flask==3.1.3 werkzeug==3.1.9 gunicorn==27.0.1 gevent==26.9.0 greenlet==3.5.6 grpcio==1.85.3 \
    protobuf==4.25.9 blinker itsdangerous zope.event zope.interface \
    geventhttpclient==2.0.2 brotli certifi six prometheus_client==0.26.0 markupsafe hpack==4.2.0 orjson==3.13.0 jinja2
# From tritonclient only its KServe v2 gRPC modules: the wheel's bundled perf_analyzer alone is 20 MB.
mkdir -p "$OUT/stage/site/tritonclient/grpc"
cp "$VENV_SITE/tritonclient/__init__.py" "$OUT/stage/site/tritonclient/"
cp "$VENV_SITE"/tritonclient/grpc/*_pb2*.py "$OUT/stage/site/tritonclient/grpc/"
: > "$OUT/stage/site/tritonclient/grpc/__init__.py"
rm -rf "$OUT"/stage/site/bin "$OUT"/stage/site/*/tests "$OUT"/stage/site/numpy/*/tests
tar -C "$OUT/stage/site" -cf - . | xz -6 -T0 > "$OUT/site.tar.xz"

cp "$(command -v wrk)" "$OUT/bin/"
cp -L /usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2 "$OUT/bin/"
rm -rf "$OUT/stage"
du -sh "$OUT"/*
