"""What a served forest takes and gives back: the contract between export, the servers and the client.

Export writes it into config.pbtxt: the inputs and outputs as Triton's tensors, and the whole
signature as one JSON parameter (`signature`), which every version of the model shares; the
embedded server and the client read it back from there, so every step agrees on one description of
the model whatever backend serves it. Configs written before that parameter existed carry the
signature in separate parameters (`task`, `classes`, `feature_names`, `known_categories`): they
are still read.

- Inputs: one matrix (`X`, dims [n_features]) for numeric models, or one input per original
  DataFrame column (dims [1], BYTES for strings) for pipelines fitted on a DataFrame that select
  columns by name. Numbers are FP32 where the forest reads them as they are (a bare forest,
  encoders, passthrough: sklearn casts them to float32 itself) and FP64 where a step computes
  with them first (sklearn computes preprocessing in float64: float32 inputs cannot reproduce it).
- Regression: one FP32 output, dims [n_outputs].
- Classification: FP32 class probabilities (dims [n_classes], in `classes_` order), marked by its
  `label_filename` (labels.txt: Triton's classification extension), and, where the backend can
  compute it, the predicted label (INT64 or BYTES, dims [1]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

REGRESSION = "regression"
CLASSIFICATION = "classification"

# The config.pbtxt parameter (a string value) that carries the whole signature as JSON.
SIGNATURE_PARAMETER = "signature"
# The separate parameters of older configs, read when SIGNATURE_PARAMETER is absent.
TASK_PARAMETER = "task"
CLASSES_PARAMETER = "classes"
FEATURE_NAMES_PARAMETER = "feature_names"
CATEGORIES_PARAMETER = "known_categories"
LEGACY_PARAMETERS = (TASK_PARAMETER, CLASSES_PARAMETER, FEATURE_NAMES_PARAMETER, CATEGORIES_PARAMETER)
LABELS_FILENAME = "labels.txt"

# Triton's datatypes as the model metadata and the client name them, and numpy's for each.
FP32, FP64, INT64, BYTES = "FP32", "FP64", "INT64", "BYTES"
NUMBERS = (FP32, FP64)


def numpy_dtype(datatype: str):
    """The numpy dtype a tensor of `datatype` is sent and read as (object for BYTES)."""
    import numpy as np

    return {FP32: np.float32, FP64: np.float64, INT64: np.int64, BYTES: np.object_}[datatype]


@dataclass(frozen=True)
class Tensor:
    """One input or output: Triton datatype and dims without the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    label_filename: str = ""  # set on a classifier's probabilities output


@dataclass(frozen=True)
class Signature:
    task: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    feature_names: tuple[str, ...]
    classes: tuple = ()  # classification: sklearn's classes_, in order (ints or strings)
    # string columns whose values must be known categories (the encoder refuses others, as sklearn does)
    known_categories: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION

    @property
    def columnar(self) -> bool:
        """One input per DataFrame column (a pipeline that selects columns by name) instead of one matrix."""
        return (len(self.inputs) > 1 or any(i.datatype == BYTES for i in self.inputs)
                or (len(self.inputs) == 1 and (self.inputs[0].name,) == self.feature_names
                    and self.inputs[0].dims == (1,)))

    @property
    def probabilities(self) -> Tensor | None:
        return next((o for o in self.outputs if o.label_filename), None)

    @property
    def label(self) -> Tensor | None:
        """The predicted-label output of a classifier, when the backend computes one."""
        if not self.is_classifier:
            return None
        return next((o for o in self.outputs if not o.label_filename), None)

    @property
    def values(self) -> Tensor | None:
        """A regressor's output."""
        return None if self.is_classifier else self.outputs[0]

    @property
    def n_outputs(self) -> int:
        """Values per row: regression targets, or 1 (the label) for a classifier."""
        return 1 if self.is_classifier else int(self.outputs[0].dims[0])

    def to_json(self) -> str:
        """The whole signature as the JSON text of SIGNATURE_PARAMETER (stable: equal signatures, equal text)."""
        def tensors(items) -> list[dict]:
            return [{"name": t.name, "datatype": t.datatype, "dims": list(t.dims),
                     **({"label_filename": t.label_filename} if t.label_filename else {})} for t in items]

        return json.dumps({"task": self.task, "inputs": tensors(self.inputs), "outputs": tensors(self.outputs),
                           "feature_names": list(self.feature_names), "classes": classes_to_json(self.classes),
                           "known_categories": {c: list(v) for c, v in self.known_categories}})

    @classmethod
    def from_json(cls, text: str) -> "Signature":
        """The inverse of to_json; ValueError (json's included) when the text is not one."""
        try:
            data = json.loads(text)

            def tensors(items) -> tuple[Tensor, ...]:
                return tuple(Tensor(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["dims"]),
                                    str(t.get("label_filename", ""))) for t in items)

            return cls(str(data["task"]), tensors(data["inputs"]), tensors(data["outputs"]),
                       tuple(str(n) for n in data["feature_names"]), tuple(data.get("classes", ())),
                       tuple((str(c), tuple(str(v) for v in values))
                             for c, values in data.get("known_categories", {}).items()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a model signature: {type(exc).__name__} {exc}") from None

    def differences(self, other: "Signature") -> list[str]:
        """What differs between two signatures, field by field, in words."""
        fields = ("task", "inputs", "outputs", "feature_names", "classes", "known_categories")
        return [name.replace("_", " ") for name in fields if getattr(self, name) != getattr(other, name)]

    def unknown_categories(self, column: str, values) -> list[int]:
        """Rows of `values` (strings of `column`) that the model's encoder would refuse."""
        known = dict(self.known_categories).get(column)
        if known is None:
            return []
        allowed = set(known)
        return [i for i, v in enumerate(values) if v not in allowed]

    def labels_file(self) -> str:
        """labels.txt: one class name a line, in probability order."""
        return "".join(f"{c}\n" for c in self.classes)


def classes_to_json(classes) -> list:
    """sklearn's classes_ as JSON values: ints stay ints, everything else becomes its string."""
    out = []
    for c in classes:
        if isinstance(c, bool) or not _is_integer(c):
            out.append(str(c))
        else:
            out.append(int(c))
    return out


def _is_integer(value) -> bool:
    import numbers

    return isinstance(value, numbers.Integral)


def task_from_parameters(parameters: dict[str, str]) -> str:
    """Configs written before classifiers existed have no `task`: they are regressors."""
    return parameters.get(TASK_PARAMETER, REGRESSION)


def classes_from_parameters(parameters: dict[str, str]) -> tuple:
    text = parameters.get(CLASSES_PARAMETER)
    return tuple(json.loads(text)) if text else ()


@dataclass(frozen=True)
class Prediction:
    """What an exported model computed for a batch of rows, in sklearn's layout.

    values: regression, (rows, n_outputs). probabilities: classification, (rows, n_classes) in
    classes_ order. labels: classification, (rows,) class labels, when the model computes them.
    """

    values: Any = None
    probabilities: Any = None
    labels: Any = None


CONFIG_DATATYPES = {"TYPE_FP32": FP32, "TYPE_FP64": FP64, "TYPE_INT64": INT64, "TYPE_STRING": BYTES}


def from_config(config: dict) -> Signature:
    """The signature of a served model, from its config as Triton returns it in JSON.

    Works for both protocols (gRPC's JSON gives dims as strings), for configs that carry the
    signature parameter, and for older ones (separate parameters; before `task`: regressors).
    """
    parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    if parameters.get(SIGNATURE_PARAMETER):
        return Signature.from_json(parameters[SIGNATURE_PARAMETER])

    def tensors(items) -> tuple[Tensor, ...]:
        found = []
        for item in items:
            datatype = CONFIG_DATATYPES.get(item.get("data_type", ""))
            if datatype is None:
                raise ValueError(f"tensor {item.get('name')!r} has type {item.get('data_type')}, "
                                 f"expected one of {', '.join(CONFIG_DATATYPES)}")
            found.append(Tensor(item["name"], datatype, tuple(int(d) for d in item.get("dims", ())),
                                item.get("label_filename", "")))
        return tuple(found)

    inputs = tensors(config.get("input", []))
    names = parameters.get(FEATURE_NAMES_PARAMETER)
    feature_names = tuple(json.loads(names)) if names else (
        tuple(i.name for i in inputs) if len(inputs) > 1 else tuple(f"x{i}" for i in range(inputs[0].dims[-1])))
    categories = json.loads(parameters.get(CATEGORIES_PARAMETER) or "{}")
    return Signature(task_from_parameters(parameters), inputs, tensors(config.get("output", [])), feature_names,
                     classes_from_parameters(parameters),
                     tuple((column, tuple(values)) for column, values in categories.items()))
