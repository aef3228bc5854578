"""RandomForestClient from Python: one row, a DataFrame by feature names, a batch larger than the
model's max_batch_size (the client splits it), and concurrent requests from several threads.

Usage: python examples/python_client.py [--url HOST:PORT] [--protocol http|grpc] [--model NAME]
The address defaults to $RF_TRITON_URL, else 127.0.0.1:8000 (the HTTP port; the gRPC one with --protocol grpc).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from rf_triton.client import ClientError, RandomForestClient

# Two rows of the demo model's five features; curl_http.sh and predict.sh send the same ones.
SAMPLE_ROWS = [[0.5, -1.25, 0.25, 1.5, -0.75], [-0.5, 1.0, -1.5, 0.125, 2.0]]
BATCH_SEED = 7
THREADS, REQUESTS_PER_THREAD = 4, 10


def batch_rows(n_rows: int, n_features: int) -> np.ndarray:
    """Reproducible random rows, so the printed predictions can be checked against sklearn."""
    return np.random.default_rng(BATCH_SEED).normal(size=(n_rows, n_features)).astype(np.float32)


def show(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def single_row(client: RandomForestClient) -> float:
    prediction = client.predict([SAMPLE_ROWS[0]])  # always a list of rows, here one
    print(f"single row: {show(prediction)}")
    return float(prediction[0])


def dataframe(client: RandomForestClient) -> None:
    """Columns are matched to the model's feature names (config.pbtxt's signature parameter), in any order."""
    names = client.feature_names or [f"x{i}" for i in range(client.n_features)]
    frame = pd.DataFrame(SAMPLE_ROWS, columns=names)[names[::-1]]
    print(f"dataframe columns, in the frame's order: {', '.join(frame.columns)}")
    print(f"dataframe: {show(client.predict(frame))}")


def large_batch(client: RandomForestClient) -> None:
    """More rows than max_batch_size: the client sends several requests and joins the answers in order."""
    rows = batch_rows(2 * client.max_batch_size + 500, client.n_features)
    requests = -(-len(rows) // client.max_batch_size)
    started = time.perf_counter()
    predictions = client.predict(rows)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"large batch: {len(predictions)} rows in {requests} requests (max_batch_size {client.max_batch_size}), "
          f"{elapsed_ms:.0f} ms")
    print(f"large batch first 3: {show(predictions[:3])}")
    print(f"large batch last 3: {show(predictions[-3:])}")


def concurrent(url: str, protocol: str, model: str, expected: float) -> bool:
    """One client per thread: tritonclient's HTTP client must not be shared between threads."""
    def worker(_: int) -> list[float]:
        with RandomForestClient(url, protocol=protocol, model=model) as client:
            return [float(client.predict([SAMPLE_ROWS[0]])[0]) for _ in range(REQUESTS_PER_THREAD)]

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        answers = [value for values in pool.map(worker, range(THREADS)) for value in values]
    agree = all(value == expected for value in answers)
    print(f"concurrent: {THREADS} threads x {REQUESTS_PER_THREAD} requests, {len(answers)} answers, "
          f"all equal to the single-row prediction: {'yes' if agree else 'NO'}")
    return agree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("RF_TRITON_URL", "127.0.0.1:8000"), help="HOST:PORT")
    parser.add_argument("--protocol", default="http", choices=["http", "grpc"])
    parser.add_argument("--model", default="random_forest")
    args = parser.parse_args(argv)
    try:
        with RandomForestClient(args.url, protocol=args.protocol, model=args.model, init_timeout_s=10) as client:
            print(f"model {args.model} at {args.url} ({args.protocol}): {client.n_features} features "
                  f"{client.feature_names}, max_batch_size {client.max_batch_size}")
            expected = single_row(client)
            dataframe(client)
            large_batch(client)
        return 0 if concurrent(args.url, args.protocol, args.model, expected) else 1
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
