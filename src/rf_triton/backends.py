"""Which Triton backend serves a model config, and which of them the embedded server can run.

One encoding for export (a model keeps its backend across versions), the embedded server (which
models it can translate) and doctor (which files and graphs to check).
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

ONNXRUNTIME = "onnxruntime"
FIL = "fil"
PYTHON = "python"
PLATFORM_BACKENDS = {"onnxruntime_onnx": ONNXRUNTIME}  # the older `platform:` spelling
# The embedded server has the Python backend only: onnxruntime models run there through a Python-backend twin.
EMBEDDED_BACKENDS = {PYTHON, ONNXRUNTIME}


def served_by(config: mc.ModelConfig) -> str:
    """The backend that serves `config`, whether it says `backend:` or the older `platform:`."""
    return config.backend or PLATFORM_BACKENDS.get(config.platform, config.platform)


def is_onnx(config: mc.ModelConfig) -> bool:
    return served_by(config) == ONNXRUNTIME


def embeddable(config: mc.ModelConfig) -> bool:
    """Whether the embedded server (Python backend only) can serve this model; others are skipped."""
    return served_by(config) in EMBEDDED_BACKENDS
