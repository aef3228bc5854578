"""The Triton model repository format: one owner for export, serve, doctor, bench and tune.

- layout: model folders, numbered versions, file names (:mod:`.layout`);
- config.pbtxt: read and written atomically, the whole Signature in one parameter, instance counts
  as Triton derives them (:mod:`.config`);
- per-version facts in each version's metadata.json only;
- the rules a model folder must satisfy, with their messages and fixes (:mod:`.validation`);
- publishing a version whole, under a lock (:mod:`.publishing`).
"""

from .config import (
    DATA_TYPES, PER_VERSION_PARAMETERS, check_same_signature, feature_names, from_json_config, instance_count,
    instance_groups_on_cpu_host, read_config, set_signature, signature_of, to_text, write_config,
)
from .errors import RepositoryError
from .layout import (
    CONFIG_FILENAME, FIL_FILENAME, LOCK_FILENAME, METADATA_FILENAME, MODEL_FILENAMES, ONNX_FILENAME, PYTHON_FILENAME,
    check_model_name, model_dirs, model_filename, next_version, versions,
)
from .publishing import Published, publish, reading, update_config
from .validation import CONFIG, GRAPH, VERSIONS, Problem, complete_versions, mismatches, validate

__all__ = [
    "CONFIG", "CONFIG_FILENAME", "DATA_TYPES", "FIL_FILENAME", "GRAPH", "LOCK_FILENAME", "METADATA_FILENAME",
    "MODEL_FILENAMES", "ONNX_FILENAME", "PER_VERSION_PARAMETERS", "PYTHON_FILENAME", "Problem", "Published",
    "RepositoryError", "VERSIONS", "check_model_name", "check_same_signature", "complete_versions", "feature_names",
    "from_json_config", "instance_count", "instance_groups_on_cpu_host", "mismatches", "model_dirs", "model_filename",
    "next_version", "publish", "read_config", "reading", "set_signature", "signature_of", "to_text", "update_config",
    "validate", "versions", "write_config",
]
