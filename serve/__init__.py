"""Serve step: the real tritonserver from the nvidia-pytriton wheel, on a derived runtime repository."""
