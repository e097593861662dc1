"""What the benchmark sections share: CPU and memory of processes from /proc, the processes of a session, a free
port, and how a section runs on its own. bench.py, on_demand.py and streaming.py import it; it imports none of them."""
import argparse
import json
import os
import pathlib
import shutil
import socket
import tempfile

CLK = os.sysconf("SC_CLK_TCK")
HERE = pathlib.Path(__file__).resolve().parent


def proc_cpu(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def session_pids(proc):
    """The PIDs of a Popen started with start_new_session (it and its children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[3]) == proc.pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def standalone(name, doc, measure_fn, seconds):
    """A section run on its own: `measure_fn(workdir, seconds)` -> (markdown, doc), written to <out>/<name>.{md,json}."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=seconds)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp())
    try:
        text, result = measure_fn(workdir, args.seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
