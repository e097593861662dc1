"""Sleeps `seconds` (at most 60), then answers how long it slept."""
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            seconds = float(pb_utils.get_input_tensor_by_name(r, "seconds").as_numpy().reshape(-1)[0])
            time.sleep(min(max(seconds, 0.0), 60.0))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("slept", np.array([seconds], dtype=np.float32))]))
        return out
