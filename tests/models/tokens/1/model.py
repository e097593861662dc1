"""Streams " tok0", " tok1", ... (max_tokens of them, each followed by `pad` x's) after the prompt, one per response, in its own thread per
request so that concurrent streams interleave; honours is_cancelled() and fail_at."""
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _input(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            t = threading.Thread(target=self.generate, args=(request,), daemon=True)
            t.start()
            self.threads.append(t)
        self.threads = [t for t in self.threads if t.is_alive()]
        return None

    def generate(self, request):
        sender = request.get_response_sender()
        prompt = _input(request, "text_input", "")
        stream = bool(_input(request, "stream", True))
        params = json.loads(_input(request, "sampling_parameters", "") or "{}")
        exclude = bool(_input(request, "exclude_input_in_output", True))
        n, delay, fail_at = int(params.get("max_tokens", 8)), float(params.get("delay", 0)), params.get("fail_at")
        pad = "x" * int(params.get("pad", 0))   # bytes added to each token: a long, heavy stream
        tokens = [f" tok{i}{pad}" for i in range(n)]
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

        def text(t):
            return pb_utils.Tensor("text_output", np.array([t.encode()], dtype=object))

        if not stream:
            time.sleep(delay * n)
            whole = "".join(tokens) if exclude else prompt + "".join(tokens)
            sender.send(pb_utils.InferenceResponse([text(whole)]), flags=final)
            return
        for i, token in enumerate(tokens):
            if request.is_cancelled():
                pb_utils.Logger.log_info(f"tokens: request cancelled after {i} responses")
                sender.send(flags=final)
                return
            if fail_at is not None and i == int(fail_at):
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"failed at response {i}")),
                            flags=final)
                return
            time.sleep(delay)
            sender.send(pb_utils.InferenceResponse([text(token if exclude or i else prompt + token)]))
        sender.send(flags=final)
