"""gRPC two ways: tritonclient.grpc directly (what any Triton client does), then RandomForestClient.

Usage: python examples/grpc_client.py [--url HOST:PORT] [--model NAME]
The address defaults to $RF_TRITON_GRPC_URL, else 127.0.0.1:8001 (the gRPC port).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from rf_triton.client import ClientError, RandomForestClient
from rf_triton.signature import numpy_dtype

# The same two rows as python_client.py's SAMPLE_ROWS.
SAMPLE_ROWS = [[0.5, -1.25, 0.25, 1.5, -0.75], [-0.5, 1.0, -1.5, 0.125, 2.0]]


def raw(url: str, model: str) -> None:
    """The tensor names and shapes come from the model's metadata; the batch is the first dimension."""
    client = grpcclient.InferenceServerClient(url)
    try:
        if not client.is_model_ready(model):
            raise InferenceServerException(f"model {model} is not ready at {url}")
        metadata = client.get_model_metadata(model, as_json=True)
        (features,), output_name = metadata["inputs"], metadata["outputs"][0]["name"]
        input_name, datatype = features["name"], features["datatype"]  # FP32, or FP64 for a model computing in double
        rows = np.asarray(SAMPLE_ROWS, dtype=numpy_dtype(datatype))
        tensor = grpcclient.InferInput(input_name, list(rows.shape), datatype)
        tensor.set_data_from_numpy(rows)
        result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(output_name)],
                              client_timeout=30)
        predictions = result.as_numpy(output_name).reshape(-1)
        print(f"raw tritonclient.grpc ({input_name} {datatype} -> {output_name}): "
              f"{' '.join(f'{v:.6g}' for v in predictions)}")
    finally:
        client.close()


def with_client(url: str, model: str) -> None:
    """The same call through RandomForestClient: checks inputs, splits big batches, retries when unavailable."""
    with RandomForestClient(url, protocol="grpc", model=model, init_timeout_s=10) as client:
        predictions = client.predict(SAMPLE_ROWS)
    print(f"RandomForestClient (grpc): {' '.join(f'{v:.6g}' for v in predictions)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("RF_TRITON_GRPC_URL", "127.0.0.1:8001"), help="HOST:PORT")
    parser.add_argument("--model", default="random_forest")
    args = parser.parse_args(argv)
    try:
        raw(args.url, args.model)
        with_client(args.url, args.model)
    except (InferenceServerException, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
