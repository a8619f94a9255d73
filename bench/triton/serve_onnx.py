"""Triton Inference Server (the build PyTriton ships on PyPI: Triton's HTTP
and gRPC front ends, its Python backend) serving an ONNX classifier through
onnxruntime, with dynamic batching: the peer for bench/oip_transports.sh.
The ONNX Runtime backend is not on any registry this machine reaches, so
the model runs in Triton's Python backend, as PyTriton serves models.

    python serve_onnx.py MODEL.onnx HTTP_PORT GRPC_PORT
"""
import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

path, http_port, grpc_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name


@batch
def infer(X):
    label, probabilities = session.run(None, {input_name: X})
    # Triton wants every output to have dimensions past the batch's.
    return {"label": label.astype(np.int64).reshape(-1, 1), "probabilities": probabilities.astype(np.float32)}


config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                      grpc_port=grpc_port, metrics_port=0, allow_metrics=False)
with Triton(config=config) as triton:
    triton.bind(
        model_name="cancer",
        infer_func=infer,
        inputs=[Tensor(name="X", dtype=np.float32, shape=(30,))],
        outputs=[Tensor(name="label", dtype=np.int64, shape=(1,)),
                 Tensor(name="probabilities", dtype=np.float32, shape=(2,))],
        config=ModelConfig(max_batch_size=1024, batcher=DynamicBatcher()),
    )
    print("ready", flush=True)
    triton.serve()
