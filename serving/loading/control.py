"""Triton's model control, as the loader uses it (explicit mode): the repository index, readiness, load, and an
unload that waits until Triton has let go of the model (its unload API returns before that)."""
import time

import gevent
from tritonclient.grpc import service_pb2

HELD = ("READY", "LOADING", "UNLOADING")   # states that hold the model's memory
UNLOAD_WAIT_S = 60.0


class ModelControl:
    def __init__(self, client, timeout):
        self.client, self.timeout = client, timeout

    def index(self, timeout=None):
        """{model: (state, reason)} of every model in the repository."""
        answer = self.client.call("RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=False),
                                  timeout or self.timeout)
        return {m.name: (m.state, m.reason) for m in answer.models}

    def loaded(self):
        """How many models are READY."""
        return sum(state == "READY" for state, _ in self.index().values())

    def ready(self, name, timeout):
        return self.client.call("ModelReady", service_pb2.ModelReadyRequest(name=name), timeout).ready

    def load(self, name, timeout):
        self.client.call("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name=name), timeout)

    def unload(self, name, timeout, deadline):
        """Unload `name` and wait, at most until `deadline` (and UNLOAD_WAIT_S), until Triton holds it no more:
        True when it is gone."""
        self.client.call("RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name=name), timeout)
        limit = min(time.monotonic() + UNLOAD_WAIT_S, deadline)
        while True:
            # each look at the index within what is left of the wait, not the default timeout
            if self.index(max(0.001, min(self.timeout, limit - time.monotonic()))).get(name, ("", ""))[0] not in HELD:
                return True
            if time.monotonic() >= limit:
                return False
            gevent.sleep(0.05)
