"""Answers the size of the uploaded file, in bytes."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            data = pb_utils.get_input_tensor_by_name(r, "file").as_numpy().reshape(-1)[0]
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("size", np.array([len(data)], dtype=np.int64))]))
        return out
