"""perf_analyzer on a model through the service's port and straight to Triton, in one go, with the ratio.

    make perf MODEL=mnist CONCURRENCY=8              # against make serve: :8080 and Triton's HTTP port 8000
    make perf MODEL=mnist SAMPLE=images=tests/data/seven.jpg URL=127.0.0.1:8080 DIRECT=127.0.0.1:8000

It does what a user otherwise does by hand: finds tritonclient 2.51's perf_analyzer and the CUDA runtime library
it links against (LD_LIBRARY_PATH), builds its --input-data from the model's metadata (a BYTES input from a file:
4-byte little-endian length and the bytes, base64; a numeric input as zeros of its shape), and runs the same
perf_analyzer (-i http) on both sides, one after the other. MNIST's `images` gets tests/data/seven.jpg unless
SAMPLE says otherwise. The input file is left in build/perf/ for running perf_analyzer by hand.
"""
import argparse
import base64
import csv
import json
import os
import pathlib
import struct
import subprocess
import sys
import sysconfig

import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SAMPLES = {("mnist", "images"): ROOT / "tests" / "data" / "seven.jpg"}


def perf_analyzer():
    """(the binary, its environment): the tritonclient 2.51 wheel's perf_analyzer needs libcudart.so.12 from the
    nvidia-cuda-runtime wheel, even on a machine with no GPU."""
    exe = pathlib.Path(sys.executable).parent / "perf_analyzer"
    if not exe.exists():
        raise SystemExit("perf_analyzer is missing: run `make bench-tools` (tritonclient 2.51's wheel has it)")
    lib = os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cuda_runtime", "lib")
    return str(exe), dict(os.environ, LD_LIBRARY_PATH=lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))


def input_data(model, metadata, samples):
    """perf_analyzer's --input-data for one request of `model`, from its v2 metadata."""
    item = {}
    for tensor in metadata["inputs"]:
        name, datatype = tensor["name"], tensor["datatype"]
        shape = [1 if d < 0 else d for d in tensor["shape"]]
        path = samples.get(name) or DEFAULT_SAMPLES.get((model, name))
        if datatype == "BYTES":
            if path is None:
                raise SystemExit(f"input {name!r} is BYTES: give a sample file, SAMPLE={name}=path")
            data = pathlib.Path(path).read_bytes()
            item[name] = {"b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode()}
        else:
            n = 1
            for d in shape:
                n *= d
            zero = 0.0 if datatype.startswith(("FP", "BF")) else False if datatype == "BOOL" else 0   # perf_analyzer
            item[name] = {"content": [zero] * n, "shape": shape[1:] if len(shape) > 1 else shape}      # checks types
    return {"data": [item]}


def run(model, url, concurrency, seconds, data, out):
    exe, env = perf_analyzer()
    csv_path = out / f"perf-{url.replace(':', '-').replace('/', '-')}.csv"
    cmd = [exe, "-m", model, "-i", "http", "-u", url, "--input-data", str(data), "--concurrency-range",
           f"{concurrency}:{concurrency}", "--measurement-interval", str(int(seconds * 1000)),
           "--stability-percentage", "100", "--max-trials", "3", "-f", str(csv_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60 * seconds + 120)
    if proc.returncode != 0:
        raise SystemExit(f"perf_analyzer -u {url} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    row = next(csv.DictReader(csv_path.open()))
    return float(row["Inferences/Second"]), int(row["p50 latency"]) / 1000, int(row["p99 latency"]) / 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--url", default="127.0.0.1:8080", help="the service's port (its KServe v2 pass-through)")
    parser.add_argument("--direct", default="127.0.0.1:8000", help="Triton's own HTTP port")
    parser.add_argument("--sample", action="append", default=[], metavar="INPUT=PATH",
                        help="a file for a BYTES input (repeatable)")
    parser.add_argument("--seconds", type=float, default=5, help="perf_analyzer's measurement window")
    parser.add_argument("--out", default=str(ROOT / "build" / "perf"))
    args = parser.parse_args()
    samples = dict(s.split("=", 1) for s in args.sample if "=" in s)
    try:
        metadata = requests.get(f"http://{args.url}/v2/models/{args.model}", timeout=30).json()
    except requests.RequestException as exc:
        raise SystemExit(f"no service at {args.url} ({type(exc).__name__}): start it with `make serve`")
    if "inputs" not in metadata:
        raise SystemExit(f"{args.url}: model {args.model!r}: {metadata}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{args.model}-input.json"
    data.write_text(json.dumps(input_data(args.model, metadata, samples)))
    results = {}
    for side, url in (("direct", args.direct), ("proxy", args.url)):
        results[side] = run(args.model, url, args.concurrency, args.seconds, data, out)
        rps, p50, p99 = results[side]
        print(f"{side:6} {url:22} c={args.concurrency}: {rps:8.1f} infer/s, p50 {p50:7.2f} ms, p99 {p99:7.2f} ms",
              flush=True)
    print(f"through the service / direct: {results['proxy'][0] / results['direct'][0]:.2f} of the throughput "
          f"(input: {data})")


if __name__ == "__main__":
    main()
