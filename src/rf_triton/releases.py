"""The Triton container releases rf-triton exports for: one table of facts, each with its source.

A release fixes the ONNX Runtime built into its onnxruntime backend (which opsets and IR version a
graph may use) and the FIL backend's treelite and parameter names. Export checks a graph against
the release it targets, doctor compares the installed ONNX Runtime with it, and CI runs every
ONNX Runtime and treelite of the table (.ci/release_matrix.sh).

This module imports nothing outside the standard library at import time: the CI matrix loads it
in environments that hold only onnxruntime and numpy. Where a fact was not found, the field is
None and `notes` says so; nothing is filled in by guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SERVER_REPO = "https://github.com/triton-inference-server/server"
FIL_REPO = "https://github.com/triton-inference-server/fil_backend"
ORT_COMPATIBILITY = ("https://github.com/microsoft/onnxruntime/blob/gh-pages/docs/reference/compatibility.md "
                     "(ONNX Runtime version → ONNX opset, ONNX ML opset, IR version)")
PROBED = ("probed by .ci/release_matrix.sh in the onnxruntime==VERSION wheel: the newest ai.onnx opset and IR "
          "version its loader accepts, and whether it runs TreeEnsemble (ai.onnx.ml opset 5)")
IMAGE = "nvcr.io/nvidia/tritonserver:{tag}-py3"
ONNX_DOMAIN, ML_DOMAIN = "ai.onnx", "ai.onnx.ml"
# The opsets every graph is exported with: each release of the table loads them (its ONNX Runtime
# implements ai.onnx 21 and ai.onnx.ml 4 at least), so one model file serves them all.
EXPORT_OPSET = {"": 17, ML_DOMAIN: 3}


@dataclass(frozen=True)
class OnnxRuntime:
    """What one ONNX Runtime version loads: the newest opset it implements per domain, and IR version."""

    version: str
    onnx_opset: int | None
    onnx_ml_opset: int | None
    ir_version: int | None
    source: str
    # What this version computes wrongly for a binary TreeEnsembleClassifier, if anything: export
    # refuses such a graph for its releases (the release matrix checks the defect is still there).
    binary_classifier_defect: str | None = None

    def limits(self) -> dict[str, int | None]:
        return {ONNX_DOMAIN: self.onnx_opset, ML_DOMAIN: self.onnx_ml_opset}


@dataclass(frozen=True)
class FilParameters:
    """The FIL backend's names for its settings in one release (fil_backend src/shared_state.h).

    25.09 renamed algo → layout, threads_per_tree → chunk_size, output_class → is_classifier, and
    removed storage_type and blocks_per_sm; the old names still load there, with a warning.
    """

    is_classifier: str
    layout: str
    chunk_size: str
    removed: tuple[str, ...]  # names this release does not read (the other generation's)


OLD_FIL_NAMES = FilParameters("output_class", "algo", "threads_per_tree", ("is_classifier", "layout", "chunk_size"))
NEW_FIL_NAMES = FilParameters("is_classifier", "layout", "chunk_size",
                              ("output_class", "algo", "threads_per_tree", "storage_type", "blocks_per_sm"))
FIL_RENAMED_IN = "25.09"


@dataclass(frozen=True)
class Release:
    """One container tag (YY.MM) and what serves a model in it."""

    tag: str
    server: str
    onnxruntime: OnnxRuntime
    treelite: str | None  # the treelite the FIL backend is built with (reads checkpoints of the same major)
    fil_engine: str | None  # what evaluates the trees in the FIL backend
    notes: tuple[str, ...] = field(default=())

    @property
    def image(self) -> str:
        return IMAGE.format(tag=self.tag)

    @property
    def fil_parameters(self) -> FilParameters:
        return NEW_FIL_NAMES if _key(self.tag) >= _key(FIL_RENAMED_IN) else OLD_FIL_NAMES

    @property
    def sources(self) -> dict[str, str]:
        """Where each fact was read."""
        branch = f"r{self.tag}"
        found = {
            "server, onnxruntime": f"{SERVER_REPO}/blob/{branch}/build.py (TRITON_VERSION_MAP / DEFAULT_TRITON_VERSION_MAP); "
                                   f"{SERVER_REPO}/blob/r26.08/docs/introduction/compatibility.md (ONNX Runtime Versions)",
            "opsets, IR version": self.onnxruntime.source,
        }
        if self.treelite is not None:
            found["treelite, FIL engine, FIL parameters"] = (
                f"{FIL_REPO}/blob/{branch}/cmake/thirdparty/get_treelite.cmake, get_cuml.cmake, get_nvforest.cmake; "
                f"{FIL_REPO}/blob/{branch}/src/shared_state.h")
        return found

    def describe(self) -> str:
        return f"Triton {self.tag} (server {self.server}, ONNX Runtime {self.onnxruntime.version})"


def _key(tag: str) -> tuple[int, int]:
    year, month = tag.split(".")
    return int(year), int(month)


def _ort(version: str, onnx_opset: int, onnx_ml_opset: int, ir_version: int, documented: bool = False,
         binary_classifier_defect: str | None = None) -> OnnxRuntime:
    source = f"{ORT_COMPATIBILITY}; {PROBED}" if documented else PROBED
    return OnnxRuntime(version, onnx_opset, onnx_ml_opset, ir_version, source, binary_classifier_defect)


# Seen in the release matrix: every binary classifier's probabilities came back [-p, p], not [1 - p, p].
NEGATED_BINARY_SCORES = ("answers a binary TreeEnsembleClassifier's first probability as -p instead of 1 - p "
                         "(onnxruntime issue #28557, a regression of 1.26.0 that 1.28.0 no longer shows)")


# The ONNX Runtime versions Triton's releases ship. ONNX Runtime's compatibility table stops at 1.20
# (1.19 and 1.20: opset 21, ML opset 4, IR 10); the rest is what each wheel does (PROBED). Every
# loader accepts an ai.onnx.ml opset 5 import, but 1.19.2 and 1.20.1 fail TreeEnsemble ("Could not
# find an implementation for TreeEnsemble(5)"): their ML opset is 4.
ONNX_RUNTIMES = {ort.version: ort for ort in (
    _ort("1.19.2", 21, 4, 10, documented=True),
    _ort("1.20.1", 21, 4, 10, documented=True),
    _ort("1.21.0", 22, 5, 10),
    _ort("1.22.0", 22, 5, 10),
    _ort("1.23.0", 23, 5, 11),
    _ort("1.23.1", 23, 5, 11),
    _ort("1.23.2", 23, 5, 11),
    _ort("1.24.1", 25, 5, 13),
    _ort("1.24.2", 25, 5, 13),
    _ort("1.24.4", 25, 5, 13),
    _ort("1.27.0", 26, 5, 13, binary_classifier_defect=NEGATED_BINARY_SCORES),
    _ort("1.28.0", 26, 5, 13),
)}

_NO_FIL_BRANCH = ("fil_backend has no r{tag} branch in the sources read (newest r26.06): treelite and the FIL "
                  "engine of this release are not stated; treelite 4.x checkpoints are meant to load across 4.x")


def _release(tag: str, server: str, ort: str, treelite: str | None, fil_engine: str | None) -> Release:
    notes = () if treelite is not None else (_NO_FIL_BRANCH.format(tag=tag),)
    return Release(tag, server, ONNX_RUNTIMES[ort], treelite, fil_engine, notes)


_CUML = "cuML FIL {} (cuml.fil)"
# server rYY.MM build.py and fil_backend rYY.MM cmake files, read at each release branch.
RELEASES = {release.tag: release for release in (
    _release("24.10", "2.51.0", "1.19.2", "4.3.0", _CUML.format("24.08")),
    _release("24.11", "2.52.0", "1.19.2", "4.4.0", _CUML.format("24.10")),
    _release("24.12", "2.53.0", "1.20.1", "4.4.0", _CUML.format("24.10")),
    _release("25.01", "2.54.0", "1.20.1", "4.4.1", _CUML.format("24.12")),
    _release("25.02", "2.55.0", "1.20.1", "4.4.1", _CUML.format("24.12")),
    _release("25.03", "2.56.0", "1.21.0", "4.4.1", _CUML.format("25.02")),
    _release("25.04", "2.57.0", "1.21.0", "4.4.1", _CUML.format("25.02")),
    _release("25.05", "2.58.0", "1.22.0", "4.4.1", _CUML.format("25.04")),
    _release("25.06", "2.59.0", "1.22.0", "4.4.1", _CUML.format("25.04")),
    _release("25.07", "2.59.1", "1.22.0", "4.4.1", _CUML.format("25.06")),
    _release("25.08", "2.60.0", "1.23.0", "4.4.1", _CUML.format("25.06")),
    _release("25.09", "2.61.0", "1.23.0", "4.4.1", _CUML.format("25.08")),
    _release("25.10", "2.62.0", "1.23.1", "4.4.1", _CUML.format("25.08")),
    _release("25.11", "2.63.0", "1.23.2", "4.4.1", _CUML.format("25.10")),
    _release("25.12", "2.64.0", "1.23.2", "4.4.1", _CUML.format("25.10")),
    _release("26.01", "2.65.0", "1.23.2", "4.6.1", _CUML.format("25.12")),
    _release("26.02", "2.66.0", "1.24.1", "4.6.1", _CUML.format("25.12")),
    _release("26.03", "2.67.0", "1.24.2", "4.6.1", _CUML.format("26.02")),
    _release("26.04", "2.68.0", "1.24.4", "4.6.1", _CUML.format("26.02")),
    _release("26.05", "2.69.0", "1.24.4", "4.6.1", _CUML.format("26.04")),
    _release("26.06", "2.70.0", "1.24.4", "4.7.0", "nvForest 26.06"),
    _release("26.07", "2.71.0", "1.27.0", None, None),
    _release("26.08", "2.72.0", "1.28.0", None, None),
)}
# Releases Triton has published whose facts the sources read do not state (server main's build.py
# says 2.73.0dev / 26.09dev, and a development build.py is not a release).
NOT_STATED = {"26.09": "server 2.73.0; no r26.09 branch in the sources read, so its ONNX Runtime is not stated"}

TAGS = tuple(RELEASES)
OLDEST = RELEASES[TAGS[0]]
DEFAULT = RELEASES[TAGS[-1]]  # the newest release whose ONNX Runtime the sources state
EMBEDDED_SERVER = "2.51.0"  # the tritonserver in nvidia-pytriton 0.7.0 (container 24.10's server)


def get(tag: str) -> Release:
    """The release `tag` (YY.MM); an unknown tag is refused with the table's tags."""
    if tag not in RELEASES:
        raise ValueError(f"Triton release {tag!r} is not in rf-triton's table ({TAGS[0]} to {TAGS[-1]})")
    return RELEASES[tag]


def releases_with_onnxruntime(version: str) -> list[Release]:
    """The releases whose onnxruntime backend runs ONNX Runtime `version`."""
    return [release for release in RELEASES.values() if release.onnxruntime.version == version]


def onnxruntime_versions() -> list[str]:
    return list(ONNX_RUNTIMES)


def treelite_versions() -> list[str]:
    """The treelite versions of the table, oldest first."""
    found = {release.treelite for release in RELEASES.values() if release.treelite}
    return sorted(found, key=lambda v: tuple(map(int, v.split("."))))


def reads_treelite_checkpoint(release: Release, version: tuple[int, int, int]) -> bool:
    """treelite's deserializer: the same major version; a newer minor loads only with "some
    functionalities may be unavailable", not good enough for production. A release whose treelite
    is not stated is held to the oldest treelite of the table."""
    reader = tuple(map(int, (release.treelite or treelite_versions()[0]).split(".")))
    return version[0] == reader[0] and version[1] <= reader[1]


def problems_loading(model, release: Release) -> list[str]:
    """Why `release`'s ONNX Runtime would not load this ONNX model (bytes or ModelProto): an opset
    import past what it implements, per domain, or an IR version past its reader. Empty: it loads."""
    if isinstance(model, (bytes, bytearray)):
        import onnx

        model = onnx.load_from_string(bytes(model))
    ort = release.onnxruntime
    limits = ort.limits()
    problems = []
    for opset in model.opset_import:
        domain = opset.domain or ONNX_DOMAIN
        newest = limits.get(domain)
        if domain in limits and newest is None:
            problems.append(f"the newest {domain} opset of ONNX Runtime {ort.version} is not known")
        elif newest is not None and opset.version > newest:
            problems.append(f"the graph imports {domain} opset {opset.version}, ONNX Runtime {ort.version} "
                            f"implements up to {newest}")
    if ort.ir_version is not None and model.ir_version > ort.ir_version:
        problems.append(f"the graph has IR version {model.ir_version}, ONNX Runtime {ort.version} reads up to "
                        f"{ort.ir_version}")
    if ort.binary_classifier_defect and any(_binary_tree_classifier(node) for node in model.graph.node):
        problems.append(f"ONNX Runtime {ort.version} {ort.binary_classifier_defect}")
    return problems


def _binary_tree_classifier(node) -> bool:
    if node.op_type != "TreeEnsembleClassifier":
        return False
    labels = {a.name: len(a.ints) or len(a.strings) for a in node.attribute if a.name.startswith("classlabels_")}
    return any(count == 2 for count in labels.values())


def refusal(problems: list[str], release: Release) -> str:
    """One line saying why `release` cannot serve the graph as sklearn answers, and what to do."""
    return f"{release.describe()} cannot serve this graph: {'; '.join(problems)}; export for another --triton-release"


def installed_onnxruntime() -> str | None:
    """The onnxruntime version installed here, read without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime")
    except PackageNotFoundError:
        return None


def answers_statement(installed: str | None) -> str:
    """Which release's answers ONNX Runtime `installed` computes (the embedded server is Triton 2.51,
    but its Python-backend model runs the installed ONNX Runtime)."""
    if installed is None:
        return "onnxruntime is not installed"
    matching = releases_with_onnxruntime(installed)
    if not matching:
        return (f"answers computed by ONNX Runtime {installed}, which no release of rf-triton's table runs "
                f"({TAGS[0]}–{TAGS[-1]})")
    tags = ", ".join(release.tag for release in matching)
    return (f"answers computed by ONNX Runtime {installed}, the onnxruntime backend's in Triton {tags} "
            f"(embedded server: Triton {EMBEDDED_SERVER}, Python backend)")


TABLE_HEADERS = {
    "en": ("container", "server", "ONNX Runtime", "ai.onnx / ai.onnx.ml opset, IR", "FIL: treelite, engine",
           "FIL classifier flag"),
    "fr": ("conteneur", "serveur", "ONNX Runtime", "opset ai.onnx / ai.onnx.ml, IR", "FIL : treelite, moteur",
           "drapeau classifieur FIL"),
}
NOT_STATED_TEXT = {"en": "not stated", "fr": "non indiqué"}


def markdown_table(language: str = "en") -> str:
    """The table as the README and the guides show it (tests/test_releases.py compares them)."""
    headers, missing = TABLE_HEADERS[language], NOT_STATED_TEXT[language]

    def value(item) -> str:
        return missing if item is None else str(item)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for release in RELEASES.values():
        ort = release.onnxruntime
        tag = f"**{release.tag}**" if release is DEFAULT else release.tag
        fil = missing if release.treelite is None else f"{release.treelite}, {release.fil_engine}"
        lines.append(f"| {tag} | {release.server} | {ort.version} | {value(ort.onnx_opset)} / "
                     f"{value(ort.onnx_ml_opset)}, IR {value(ort.ir_version)} | {fil} | "
                     f"`{release.fil_parameters.is_classifier}` |")
    return "\n".join(lines)
