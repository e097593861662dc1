"""Echoes x; x = 1 kills this model's stub process (SIGKILL), as a segfault in a model's native code would."""
import os
import signal

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            if int(x.reshape(-1)[0]) == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
