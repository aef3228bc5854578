"""rf-triton: serve scikit-learn random forests on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"

# The header that unlocks Triton's model-repository API (load/unload/index) when a control key is
# set: `--http-restricted-api` / `--grpc-restricted-protocol` on the server, sent by `rf-triton models`.
CONTROL_KEY_HEADER = "control-key"
# Triton's gRPC frontend looks for restricted-protocol keys under this prefix in the call metadata.
GRPC_CONTROL_KEY_HEADER = "triton-grpc-protocol-" + CONTROL_KEY_HEADER
CONTROL_KEY_ENV = "RF_TRITON_CONTROL_KEY"
