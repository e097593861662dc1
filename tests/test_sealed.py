"""Triton is sealed: from another address, its HTTP, gRPC and metrics ports cannot be reached, while the proxy's
port answers from that same address.

The other address is a network namespace that this test makes, joined to this machine by a veth pair with
addresses of its own; both are removed at the end. No traffic leaves this machine.
"""
import json
import subprocess
import sys

import pytest

from conftest import require

# Fixed names, so that a run that was killed half-way is cleaned up by the next one.
NS = "serving-sealed"
HOST_IF, NS_IF = "vsealed-h", "vsealed-n"
HOST_IP, NS_IP = "10.213.77.1", "10.213.77.2"

PROBE = r"""
import json, socket, sys
host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
out = {}
for port in ports:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out[port] = s.recv(200).decode(errors="replace").split("\r\n")[0]
    except OSError as exc:
        out[port] = type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


def sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def namespace():
    require("ip", root=True)   # it makes a network namespace
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", HOST_IF, check=False)
    try:
        sh("ip", "netns", "add", NS)
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        sh("ip", "link", "set", NS_IF, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
        sh("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        yield NS
    finally:
        sh("ip", "netns", "del", NS, check=False)          # takes its end of the pair, and so the pair, with it
        sh("ip", "link", "del", HOST_IF, check=False)
    assert sh("ip", "link", "show", HOST_IF, check=False).returncode != 0


def test_only_the_proxy_port_answers_from_another_address(stack, namespace):
    env = stack.env
    triton = [int(env["TRITON_HTTP_PORT"]), int(env["TRITON_GRPC_PORT"]), int(env["TRITON_METRICS_PORT"])]
    proc = sh("ip", "netns", "exec", namespace, sys.executable, "-c", PROBE, HOST_IP, str(stack.port), *map(str, triton))
    seen = {int(k): v for k, v in json.loads(proc.stdout).items()}
    assert seen[stack.port] == "HTTP/1.1 200 OK", seen
    for port in triton:
        assert seen[port] == "ConnectionRefusedError", seen
    # The same ports answer on loopback: what is sealed is the address, not the service.
    proc = sh(sys.executable, "-c", PROBE, "127.0.0.1", *map(str, triton))
    local = {int(k): v for k, v in json.loads(proc.stdout).items()}
    assert local[triton[0]].startswith("HTTP/1.1 ") and local[triton[2]].startswith("HTTP/1.1 "), local
