"""Answers n copies of 0.123456 (n at most 3 000 000); sleeps initialize_sleep seconds while loading."""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        time.sleep(float(params.get("initialize_sleep", {}).get("string_value", "0")))

    def execute(self, requests):
        out = []
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "n").as_numpy().reshape(-1)[0])
            values = np.full(min(max(n, 0), 3_000_000), 0.123456, dtype=np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("values", values)]))
        return out
