"""rf-triton: serve scikit-learn random forests on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"
