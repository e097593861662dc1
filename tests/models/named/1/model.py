"""Answers its own name after sleeping `sleep` seconds (at most 30). Parameters: initialize_sleep (s),
fail_to_load ("1": the load fails with a clear reason), log_requests (a file: each request's start time is
appended to it, as time.time())."""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        params = {k: v.get("string_value", "") for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        if params.get("fail_to_load") == "1":
            raise RuntimeError(f"{self.name} refuses to load (fail_to_load)")
        time.sleep(float(params.get("initialize_sleep") or 0))
        self.log = params.get("log_requests") or None

    def execute(self, requests):
        out = []
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{time.time():.6f}\n" * len(requests))
        for r in requests:
            seconds = float(pb_utils.get_input_tensor_by_name(r, "sleep").as_numpy().reshape(-1)[0])
            time.sleep(min(max(seconds, 0.0), 30.0))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("model", np.array([self.name], dtype=object))]))
        return out
