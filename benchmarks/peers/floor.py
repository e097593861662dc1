"""The floor: the same routes as the proxy's identity and resnet workloads, as a Flask user writes them, under the
same gunicorn gevent worker, with no Triton call. What any Flask-based proxy costs before it does any work.

    gunicorn -w 1 -k gevent -b 127.0.0.1:PORT --chdir benchmarks/peers floor:app

- /identity: the JSON body parsed (request.get_json()), its INPUT0 echoed with jsonify;
- /resnet: the JSON body parsed, INPUT0 base64-decoded into a float32 [3,224,224] array (as the proxy decodes it),
  and 1000 floats answered.
"""
import base64

import numpy as np
from flask import Flask, jsonify, request

app = Flask("floor")
ANSWER = np.linspace(-1, 1, 1000, dtype=np.float32).tolist()


@app.post("/identity")
def identity():
    return jsonify({"OUTPUT0": request.get_json()["INPUT0"]})


@app.post("/resnet")
def resnet():
    tensor = np.frombuffer(base64.b64decode(request.get_json()["INPUT0"]), dtype=np.float32).reshape(1, 3, 224, 224)
    return jsonify({"OUTPUT0": ANSWER if tensor.size else []})
