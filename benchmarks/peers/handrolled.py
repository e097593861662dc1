"""The hand-rolled image most users write: Flask under gunicorn's gevent worker and `tritonclient.grpc` with
grpcio's gevent mode, following Triton's client examples.

    TRITON_GRPC=127.0.0.1:8001 gunicorn -w 1 -k gevent -b 127.0.0.1:PORT -c benchmarks/peers/handrolled.py \
        --chdir benchmarks/peers handrolled:app
"""
import os

import numpy as np
from flask import Flask, jsonify, request

app = Flask("handrolled")
client = None


def post_fork(server, worker):   # gunicorn hook (this file is also the -c config): grpcio on gevent's hub
    from gevent import monkey
    monkey.patch_all()
    import grpc.experimental.gevent
    grpc.experimental.gevent.init_gevent()


@app.post("/identity")
def identity():
    global client
    import tritonclient.grpc as grpcclient
    if client is None:   # one client per worker, made after the fork
        client = grpcclient.InferenceServerClient(os.environ.get("TRITON_GRPC", "127.0.0.1:8001"))
    x = np.asarray(request.get_json()["INPUT0"], dtype=np.float32)[None]
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("identity", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    return jsonify({"OUTPUT0": result.as_numpy("OUTPUT0")[0].tolist()})
