"""Weighted routing between model versions or models, with a record of which variant answered.

A variant is written ``model`` or ``model:version``; every variant is served by the same Triton,
side by side (``export --serve-versions 1,2``, or two model names in one repository).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .client import RandomForestClient


@dataclass(frozen=True)
class RoutedPrediction:
    variant: str
    values: np.ndarray


def parse_variant(variant: str) -> tuple[str, str]:
    """'random_forest:2' → ('random_forest', '2'); 'random_forest' → ('random_forest', '')."""
    model, _, version = variant.partition(":")
    if not model or (version and not version.isdigit()):
        raise ValueError(f"variant {variant!r} must be MODEL or MODEL:VERSION")
    return model, version


def parse_weights(text: str) -> dict[str, float]:
    """'random_forest:1=0.9,random_forest:2=0.1' → {variant: weight} (for the CLI and Locust)."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        variant, sep, weight = item.rpartition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected VARIANT=WEIGHT")
        try:
            weights[variant] = float(weight)
        except ValueError:
            raise ValueError(f"{item!r}: weight {weight!r} is not a number") from None
    return weights


def normalised(weights: Mapping[str, float]) -> dict[str, float]:
    """Check the variants and their weights; return the weights as shares that sum to 1."""
    if len(weights) < 2:
        raise ValueError("A/B routing needs at least two variants")
    if any(not (w >= 0) for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative and not all zero: {dict(weights)}")
    for variant in weights:
        parse_variant(variant)
    total = sum(weights.values())
    return {variant: w / total for variant, w in weights.items()}


class ABRouter:
    """Send each call to one variant drawn by weight; `counts` says how many each answered."""

    def __init__(self, weights: Mapping[str, float], url: str = "127.0.0.1:8000", *, protocol: str = "http",
                 seed: int | None = None, **client_options) -> None:
        self.weights = normalised(weights)
        self.clients = {}
        for variant in self.weights:
            model, version = parse_variant(variant)
            self.clients[variant] = RandomForestClient(url, protocol=protocol, model=model, version=version,
                                                       **client_options)
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._variants = list(self.weights)
        self._cumulative = list(np.cumsum([self.weights[v] for v in self._variants]))

    def __enter__(self) -> "ABRouter":
        try:
            for client in self.clients.values():
                client.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def choose(self) -> str:
        return self._random.choices(self._variants, cum_weights=self._cumulative)[0]

    def predict(self, X) -> RoutedPrediction:
        """Predict X with one variant, drawn by weight; the variant is recorded and returned."""
        variant = self.choose()
        values = self.clients[variant].predict(X)
        self.counts[variant] += 1
        return RoutedPrediction(variant, values)
