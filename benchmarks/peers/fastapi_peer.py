"""The FastAPI peer: what a user who leaves Flask writes, following FastAPI's and tritonclient's docs. uvicorn (uvloop,
httptools) and `tritonclient.grpc.aio`, an InferInput per request, one process.

    TRITON_GRPC=127.0.0.1:8001 uvicorn fastapi_peer:app --app-dir benchmarks/peers --port PORT \
        --loop uvloop --http httptools --no-access-log
"""
import base64
import os
from contextlib import asynccontextmanager

import numpy as np
import tritonclient.grpc.aio as grpcclient
from fastapi import FastAPI, HTTPException

client = None


@asynccontextmanager
async def lifespan(app):
    global client
    client = grpcclient.InferenceServerClient(os.environ.get("TRITON_GRPC", "127.0.0.1:8001"))
    yield
    await client.close()


app = FastAPI(lifespan=lifespan)


async def infer(model, name, x):
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = await client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    return result.as_numpy("OUTPUT0")[0].tolist()


@app.post("/identity")
async def identity(body: dict):
    x = np.asarray(body.get("INPUT0"), dtype=np.float32)
    if x.shape != (16,):
        raise HTTPException(400, "INPUT0 must be 16 numbers")
    return {"OUTPUT0": await infer("identity", "INPUT0", x[None])}


@app.post("/resnet")
async def resnet(body: dict):
    x = np.frombuffer(base64.b64decode(body["INPUT0"]), dtype=np.float32).reshape(1, 3, 224, 224)
    return {"OUTPUT0": await infer("resnet_bench", "INPUT0", x)}
