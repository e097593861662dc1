"""A grpcio server (gRPC C-core) implementing Triton's GRPCInferenceService with hostile settings: the reference peer
that serving/grpc_wire/ is tested against (tests/test_grpc_wire.py).

    python tests/grpc_peer.py PORT [--window N] [--max-frame N] [--max-streams N] [--hpack-table N] [--grace S]

ModelInfer behaves by model_name:
- "echo":  raw_input_contents come back as raw_output_contents (any size);
- "fail":  INVALID_ARGUMENT with the text of parameter "message" (a trailers-only answer);
- "abort": INTERNAL with the text of parameter "message", after the response headers went out;
- "slow":  sleeps parameter "seconds", then echoes; a cancelled call is counted;
- "churn": echoes, with trailing metadata that differs per call (the HPACK dynamic table keeps changing).
ModelStreamInfer (bidirectional, as Triton's; the client sends one request and half-closes) answers parameter
"count" responses, each with id "<request id>:<i>" and parameter "index" = i and `size` bytes of output, every
parameter "delay" seconds; "fail_at" = k aborts with INTERNAL after k responses; a cancelled call is counted.
ServerMetadata answers with its `name` holding JSON statistics: calls, cancelled, max_in_flight.
On SIGTERM the server stops with `server.stop(grace)` (GOAWAY, in-flight calls finish) and exits.
"""
import argparse
import json
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = self.cancelled = self.in_flight = self.max_in_flight = 0

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        with self.lock:
            stats = {"calls": self.calls, "cancelled": self.cancelled, "max_in_flight": self.max_in_flight}
        return service_pb2.ServerMetadataResponse(name=json.dumps(stats), version="peer")

    def ModelInfer(self, request, context):
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            n = self.calls
        try:
            model = request.model_name
            params = request.parameters
            if model == "fail":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, params["message"].string_param)
            if model == "abort":
                context.send_initial_metadata((("x-started", "1"),))
                context.abort(grpc.StatusCode.INTERNAL, params["message"].string_param)
            if model == "slow":
                end = time.monotonic() + params["seconds"].double_param
                while time.monotonic() < end:
                    if not context.is_active():
                        with self.lock:
                            self.cancelled += 1
                        return service_pb2.ModelInferResponse()
                    time.sleep(0.01)
            if model == "churn":
                context.set_trailing_metadata((("x-call", str(n) * (1 + n % 7)), (f"x-key-{n % 13}", "v" * (n % 50))))
            return service_pb2.ModelInferResponse(
                model_name=model, id=request.id,
                outputs=[service_pb2.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype,
                                                                          shape=t.shape) for t in request.inputs],
                raw_output_contents=list(request.raw_input_contents))
        finally:
            with self.lock:
                self.in_flight -= 1


    def ModelStreamInfer(self, request_iterator, context):
        for request in request_iterator:
            params = request.parameters
            count = int(params["count"].int64_param)
            delay = params["delay"].double_param if "delay" in params else 0.0
            fail_at = int(params["fail_at"].int64_param) if "fail_at" in params else -1
            size = int(params["size"].int64_param) if "size" in params else 0
            for i in range(count):
                if i == fail_at:
                    context.abort(grpc.StatusCode.INTERNAL, f"failed at response {i}")
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    if not context.is_active():
                        with self.lock:
                            self.cancelled += 1
                        return
                    time.sleep(0.005)
                response = service_pb2.ModelInferResponse(model_name=request.model_name, id=f"{request.id}:{i}",
                                                          raw_output_contents=[bytes([i % 256]) * size])
                response.parameters["index"].int64_param = i
                yield service_pb2.ModelStreamInferResponse(infer_response=response)
            if "then_wait" in params:   # keep the stream open after the last response (a client's deadline)
                end = time.monotonic() + params["then_wait"].double_param
                while time.monotonic() < end and context.is_active():
                    time.sleep(0.005)
                if not context.is_active():
                    with self.lock:
                        self.cancelled += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--window", type=int, default=0, help="grpc.http2.lookahead_bytes: the stream window")
    ap.add_argument("--max-frame", type=int, default=0, help="grpc.http2.max_frame_size")
    ap.add_argument("--max-streams", type=int, default=0, help="grpc.max_concurrent_streams")
    ap.add_argument("--hpack-table", type=int, default=-1, help="grpc.http2.hpack_table_size.encoder")
    ap.add_argument("--grace", type=float, default=3.0)
    args = ap.parse_args()
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 0)]
    if args.window:
        options += [("grpc.http2.lookahead_bytes", args.window), ("grpc.http2.bdp_probe", 0)]
    if args.max_frame:
        options.append(("grpc.http2.max_frame_size", args.max_frame))
    if args.max_streams:
        options.append(("grpc.max_concurrent_streams", args.max_streams))
    if args.hpack_table >= 0:
        options.append(("grpc.http2.hpack_table_size.encoder", args.hpack_table))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stopped = threading.Event()

    def stop(signum, frame):
        threading.Thread(target=lambda: (server.stop(args.grace).wait(), stopped.set()), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while not stopped.wait(0.1):
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
