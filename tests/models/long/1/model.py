"""Works `seconds` (up to 10 minutes), then answers how long it worked; a cancelled request (its client gone, its
deadline passed, the proxy's drain ended it) stops within 0.1 s and is logged as `long: cancelled after X s`."""
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            seconds = float(pb_utils.get_input_tensor_by_name(request, "seconds").as_numpy().reshape(-1)[0])
            started = time.monotonic()
            while time.monotonic() - started < min(max(seconds, 0.0), 600.0):
                if request.is_cancelled():
                    pb_utils.Logger.log_info(f"long: cancelled after {time.monotonic() - started:.1f} s")
                    out.append(pb_utils.InferenceResponse(
                        error=pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED)))
                    break
                time.sleep(0.1)
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("worked", np.array([seconds], np.float32))]))
        return out
