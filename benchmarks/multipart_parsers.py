"""The multipart parsers a proxy could use, on the MNIST upload and on a 5 MB file: CPU per parse, one process.

    python benchmarks/multipart_parsers.py        (make bench runs it too; results/multipart.md)

- serving/multipart.py: the proxy's (the whole body is read first, parts found with bytes.find);
- werkzeug's MultiPartParser (what Flask's request.files uses; the proxy's parser before);
- python-multipart (what Starlette and FastAPI use);
- streaming-form-data (Cython).
Each parser gets the same bytes and must return the same file; the figure is process CPU per parse.
"""
import io
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from serving import multipart  # noqa: E402

BOUNDARY = "bench-boundary-7f3a"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def body(data, filename="seven.jpg"):
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def ours(raw):
    return multipart.parse(raw, CT)[0]["images"][0]


def werkzeug(raw):
    from werkzeug.formparser import parse_form_data
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": CT, "CONTENT_LENGTH": str(len(raw)),
               "wsgi.input": io.BytesIO(raw)}
    return parse_form_data(environ)[2]["images"].read()


def python_multipart(raw):
    from python_multipart import MultipartParser
    found, chunks = [], []
    parser = MultipartParser(BOUNDARY, {"on_part_data": lambda b, s, e: chunks.append(b[s:e]),
                                        "on_part_end": lambda: (found.append(b"".join(chunks)), chunks.clear())})
    parser.write(raw)
    parser.finalize()
    return found[0]


def streaming_form_data(raw):
    from streaming_form_data import StreamingFormDataParser
    from streaming_form_data.targets import ValueTarget
    parser = StreamingFormDataParser(headers={"Content-Type": CT})
    target = ValueTarget()
    parser.register("images", target)
    parser.data_received(raw)
    return target.value


PARSERS = {"serving/multipart.py (the proxy)": ours, "werkzeug 3.1 (Flask)": werkzeug,
           "python-multipart (Starlette, FastAPI)": python_multipart, "streaming-form-data (Cython)": streaming_form_data}


def cpu_per_call(fn, raw, expect, budget_s=1.0):
    assert fn(raw) == expect, fn.__name__
    n, started = 0, time.process_time()
    while time.process_time() - started < budget_s:
        for _ in range(20):
            fn(raw)
        n += 20
    return (time.process_time() - started) / n * 1e6


def measure():
    seven = (HERE.parent / "tests" / "data" / "seven.jpg").read_bytes()
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    rows = {}
    for label, data in ((f"MNIST upload ({len(seven)} B)", seven), ("5 MB file", big)):
        raw = body(data)
        rows[label] = {name: cpu_per_call(fn, raw, data) for name, fn in PARSERS.items()}
    return rows


def report(rows):
    labels = list(rows)
    lines = ["## Multipart parsers (CPU µs per parse, one process; ratio to the proxy's)", "",
             "| parser | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for name in PARSERS:
        cells = [f"{rows[l][name]:.1f} ({rows[l][name] / rows[l][next(iter(PARSERS))]:.1f}x)" for l in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(report(measure()))
