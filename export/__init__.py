"""Export step: a fitted or freshly trained forest → ONNX → a version in a Triton model repository."""
