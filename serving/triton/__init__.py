"""Triton's gRPC API as this worker speaks it, one job per module; nothing here knows an HTTP route or handler
(tests/test_structure.py holds that as a rule of the import graph).

- client.py     the worker's one connection (serving/grpc_wire/) and its unary and streaming calls
- models.py     what Triton says of its models (ModelInfo, the ready repository)
- status.py     a gRPC status -> the HTTP error a caller sees; a model whose process died
- guard.py      what every call to a model goes through: deadline, on-demand hold, slots, failures
- calls.py      the prebuilt calls: InferCall (one answer), StreamCall (a decoupled model's responses)
- readiness.py  /health's view of Triton and the models' processes
"""
