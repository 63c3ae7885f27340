"""The model bundle: one directory that the offline tools write and everything online reads.

Layout::

    manifest.yaml          what is in the bundle (below); written last, atomically
    teacher.safetensors    the frozen segmentation teacher's weights (our parameter names)
    student.safetensors    the AuxCon student (optional, from ``cosme train-student``)
    anomaly.safetensors    memory bank and statistics (optional, from ``cosme build-memory``)

``manifest.yaml``::

    format: cosme-bundle
    version: 1
    name: espnetv2-cityscapes
    teacher: {arch: espnetv2, config: {s: 2.0, num_classes: 20}, weights: teacher.safetensors,
              source: {...}}
    preprocess: {input_size: [512, 1024], mean: [...], std: [...]}     # RGB in [0, 1]
    classes: {names: [...], palette: [[r, g, b], ...], void: [19]}
    student: {config: {...}, weights: student.safetensors}            # optional
    anomaly: {weights: anomaly.safetensors, memory_layers: [c4, c5, lh],
              consensus_layers: [c5], build: {...}}                   # optional
    thresholds: {cosme: {value: 1.23, fpr: 0.01, data: ..., ...}}     # optional (cosme calibrate)

Tensors live in safetensors only (no pickle anywhere in a bundle). Every reader validates and
fails with a :class:`BundleError` that names the file and the field.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from cosme_ros import atomic
from cosme_ros.errors import BundleError, MissingPartError
from cosme_ros.manifest_io import dump_manifest, read_manifest_text

FORMAT = "cosme-bundle"
VERSION = 1
MANIFEST = "manifest.yaml"
TEACHER_FILE = "teacher.safetensors"
STUDENT_FILE = "student.safetensors"
ANOMALY_FILE = "anomaly.safetensors"
# The anomaly section's optional layer fields (Bundle.anomaly_layers fills in the paper's).
LAYER_FIELDS = ("memory_layers", "consensus_layers")
MAX_NAME_CHARS = 200  # the name is echoed in logs and in every /diagnostics message


# ----------------------------------------------------------------------------- validation helpers


def _need(section: Mapping, key: str, where: str, kind: type) -> Any:
    if not isinstance(section, Mapping) or key not in section:
        raise BundleError(f"{where}: missing field '{key}'")
    value = section[key]
    if not isinstance(value, kind):
        raise BundleError(
            f"{where}: field '{key}' should be a {kind.__name__}, " f"got {type(value).__name__}"
        )
    return value


def _numbers(value: Any, n: int, where: str, key: str) -> List[float]:
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    ):
        raise BundleError(
            f"{where}: field '{key}' should be a list of {n} finite numbers, got " f"{value!r}"
        )
    return [float(v) for v in value]


MAX_INPUT_SIDE = 8192  # network input side; [100000, 100000] asked for a 28 GiB tensor
MAX_CHANNELS = 4096  # any *_channels of a network config (10^7 made the node grow to 10 GB)
MAX_CONFIG_INT = 65536  # any other integer of a network config (classes, depth, strides, …)


def _check_config(value: Any, where: str, key: str) -> None:
    """Every number of a network config within sane bounds, before anything is built."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_config(v, where, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_config(v, where, f"{key}[{i}]")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        limit = MAX_CHANNELS if key.endswith("channels") else MAX_CONFIG_INT
        low = 1 if key.endswith(("channels", "num_classes")) else 0
        if not low <= value <= limit:
            raise BundleError(
                f"{where}: field '{key}' is {value}; it must be within " f"[{low}, {limit}]"
            )
    elif isinstance(value, float):
        if not (math.isfinite(value) and abs(value) <= 1e6):
            raise BundleError(f"{where}: field '{key}' is {value}; it must be a finite number")
    elif isinstance(value, str):
        if len(value) > MAX_NAME_CHARS:
            raise BundleError(f"{where}: field '{key}' is a string of {len(value)} characters")
    else:
        raise BundleError(f"{where}: field '{key}' has a value of type {type(value).__name__}")


def _check_sha256(section: Mapping[str, Any], where: str, part: str) -> None:
    sha = section.get("sha256")
    if sha is not None and not (
        isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
    ):
        raise BundleError(f"{where}: field '{part}.sha256' should be 64 lower-case hex digits")


# ----------------------------------------------------------------------------- the bundle


@dataclass
class Bundle:
    """A validated bundle directory. Cheap to open; networks are built on request."""

    path: Path
    manifest: Dict[str, Any]
    input_size: Tuple[int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    class_names: List[str]
    palette: List[Tuple[int, int, int]]
    void_classes: List[int] = field(default_factory=list)

    # -- reading

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        """Open and validate a bundle directory: every field of the manifest is checked and
        every error is one :class:`BundleError` line naming the file and the field."""
        path = Path(path)
        where = str(path / MANIFEST)
        manifest = _read(path, where)
        teacher = _need(manifest, "teacher", where, dict)
        _need(teacher, "arch", f"{where} teacher", str)
        _check_config(_need(teacher, "config", f"{where} teacher", dict), where, "teacher.config")
        _check_file(
            path, _need(teacher, "weights", f"{where} teacher", str), where, "teacher.weights"
        )
        _check_sha256(teacher, where, "teacher")
        size, mean, std = _check_preprocess(_need(manifest, "preprocess", where, dict), where)
        names, palette, void = _check_classes(manifest, teacher, where)
        if "student" in manifest:
            student = _need(manifest, "student", where, dict)
            _check_config(
                _need(student, "config", f"{where} student", dict), where, "student.config"
            )
            _check_file(
                path, _need(student, "weights", f"{where} student", str), where, "student.weights"
            )
            _check_sha256(student, where, "student")
        if "anomaly" in manifest:
            _check_anomaly(path, _need(manifest, "anomaly", where, dict), where)
        _check_thresholds(manifest.get("thresholds", {}), where)
        return cls(
            path=path,
            manifest=manifest,
            input_size=(size[0], size[1]),
            mean=tuple(mean),
            std=tuple(std),
            class_names=list(names),
            palette=[tuple(c) for c in palette],
            void_classes=list(void),
        )

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_student(self) -> bool:
        return "student" in self.manifest

    @property
    def has_anomaly(self) -> bool:
        return "anomaly" in self.manifest

    @property
    def teacher_align_corners(self) -> bool:
        """How the teacher upsamples its outputs (:func:`cosme_ros.nets.teacher_align_corners`)."""
        from cosme_ros.nets import teacher_align_corners

        t = self.manifest["teacher"]
        return teacher_align_corners(t["arch"], t["config"])

    @property
    def named_default_method(self) -> Optional[str]:
        """The method spec ``cosme bundle set-default`` named for ``auto``, or None (what
        ``auto`` then runs is the registry's rule: :func:`cosme_ros.anomaly.registry.default_method`)."""
        return (self.manifest.get("anomaly") or {}).get("default_method")

    @property
    def teacher_taps(self) -> Tuple[str, ...]:
        """The taps the teacher's architecture has (built on the meta device: no weights read)."""
        from cosme_ros.nets import build_network

        section = self.manifest["teacher"]
        with torch.device("meta"):
            module = _build(
                build_network, section["arch"], section["config"], self.path / MANIFEST, "teacher"
            )
        return tuple(module.tap_channels)

    def paper_layers(self) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        """(memory layers, consensus layers) of the paper on this teacher
        (:func:`cosme_ros.anomaly.parts.paper_layers`)."""
        from cosme_ros.anomaly.parts import paper_layers

        return paper_layers(self.teacher_taps)

    def anomaly_layers(self) -> Dict[str, Tuple[str, ...]]:
        """``{"memory_layers": …, "consensus_layers": …}``: those the manifest's anomaly section
        names, the paper's on this teacher for any it does not (the teacher's architecture is
        only built when one is missing)."""
        section = self.manifest.get("anomaly") or {}
        named = {k: tuple(section[k]) for k in LAYER_FIELDS if k in section}
        if len(named) < len(LAYER_FIELDS):
            named = {**dict(zip(LAYER_FIELDS, self.paper_layers())), **named}
        return named

    def teacher(self) -> nn.Module:
        """The teacher in eval mode with its weights loaded strictly."""
        from cosme_ros.nets import build_network

        section = self.manifest["teacher"]
        module = _build(
            build_network, section["arch"], section["config"], self.path / MANIFEST, "teacher"
        )
        _load_weights(module, self.path / section["weights"], section.get("sha256"))
        return module.eval()

    def student(self) -> nn.Module:
        from cosme_ros.nets import build_network

        if not self.has_student:
            raise MissingPartError(
                f"{self.path}: bundle has no student: run `cosme train-student "
                f"--bundle {self.path} --data KIND:PATH`"
            )
        section = self.manifest["student"]
        module = _build(
            build_network, "student", section["config"], self.path / MANIFEST, "student"
        )
        _load_weights(module, self.path / section["weights"], section.get("sha256"))
        return module.eval()

    def student_sha256(self) -> Optional[str]:
        """The student's weights' SHA-256: the manifest's, or (bundles written before parts
        carried one) the file's own."""
        section = self.manifest.get("student")
        if section is None:
            return None
        if section.get("sha256"):
            return str(section["sha256"])
        return hashlib.sha256((self.path / section["weights"]).read_bytes()).hexdigest()

    def anomaly_parts(self):
        """The scorers' view of the bundle: memory, statistics, whether a student exists."""
        from cosme_ros.anomaly.parts import AnomalyParts

        section = self.manifest.get("anomaly")
        layers = self.anomaly_layers()
        if section is None:
            return AnomalyParts(
                has_student=self.has_student, align_corners=self.teacher_align_corners, **layers
            )
        tensors = read_tensors(self.path / section["weights"], section.get("sha256"))
        try:
            parts = AnomalyParts.from_tensors(
                tensors,
                has_student=self.has_student,
                align_corners=self.teacher_align_corners,
                **layers,
            )
        except (ValueError, KeyError) as exc:
            raise BundleError(f"{self.path / section['weights']}: {exc}") from None
        if parts.psi_stats is not None:
            # Ψ statistics describe one student (psi_stats.py): a replaced one makes them stale.
            gathered = (section.get("psi_stats") or {}).get("student_sha256")
            current = self.student_sha256()
            if gathered is None or gathered != current:
                parts.psi_stats = None
                parts.psi_stats_note = (
                    f"{self.path / section['weights']} has them for "
                    f"another student than {self.path / STUDENT_FILE}"
                )
        return parts

    def check_parts_fit(self, parts, tap_channels: Mapping[str, int]) -> None:
        """Raise BundleError naming ``anomaly.safetensors`` when its tensors do not fit the
        teacher (``tap_channels``: the teacher's channels per tap): prototypes with another
        channel count, statistics for another number of classes — a part built for another
        teacher, or edited."""
        section = self.manifest.get("anomaly")
        if section is None:
            return
        where = self.path / section["weights"]
        rebuild = "it was built for another teacher: rebuild it with `cosme build-memory --force`"
        for layer, protos in (parts.memory or {}).items():
            if layer not in tap_channels:
                raise BundleError(f"{where}: memory.{layer}: the teacher has no {layer} tap")
            if int(protos.shape[1]) != int(tap_channels[layer]):
                raise BundleError(
                    f"{where}: memory.{layer} holds {protos.shape[1]}-channel "
                    f"prototypes but the teacher's {layer} has "
                    f"{tap_channels[layer]} channels; {rebuild}"
                )
        lh = tap_channels.get("lh")
        if (
            parts.pans_prototypes is not None
            and lh is not None
            and int(parts.pans_prototypes.shape[1]) != int(lh)
        ):
            raise BundleError(
                f"{where}: pans.prototypes has {parts.pans_prototypes.shape[1]} "
                f"channels but the teacher's lh has {lh}; {rebuild}"
            )
        stats = {
            "mulmem": parts.mulmem_stats,
            "sml": parts.sml_stats,
            **{f"psi.{k}": v for k, v in (parts.psi_stats or {}).items()},
        }
        classes = tap_channels.get("o", self.num_classes)
        for name, st in stats.items():
            if st is not None and st.num_classes != int(classes):
                raise BundleError(
                    f"{where}: {name}.mean has {st.num_classes} classes but the "
                    f"teacher outputs {classes}; {rebuild}"
                )
        if parts.pans_prototypes is not None and int(parts.pans_prototypes.shape[0]) != int(
            classes
        ):
            raise BundleError(
                f"{where}: pans.prototypes has {parts.pans_prototypes.shape[0]} "
                f"classes but the teacher outputs {classes}; {rebuild}"
            )

    def threshold(self, key: str) -> Optional[float]:
        """The calibrated anomaly threshold for a method key
        (:func:`cosme_ros.runtime.thresholds.threshold_key`), or None."""
        entry = self.manifest.get("thresholds", {}).get(key)
        return None if entry is None else float(entry["value"])

    # -- writing

    def write_part(
        self,
        part: str,
        section: Dict[str, Any],
        tensors: Mapping[str, Tensor],
        keep_thresholds: bool = False,
    ) -> None:
        """Add or replace ``student`` or ``anomaly``: tensors first, then the manifest, both atomic.

        A crash between the two leaves the old manifest pointing at the old, still-valid data.
        Calibrated thresholds are dropped — they were measured with the part this replaces —
        unless ``keep_thresholds`` (the caller only adds what no existing score uses).
        """
        if part not in ("student", "anomaly"):
            raise ValueError(f"unknown bundle part {part!r}")
        filename = STUDENT_FILE if part == "student" else ANOMALY_FILE
        sha = write_tensors(self.path / filename, tensors)
        manifest = copy.deepcopy(self.manifest)
        manifest[part] = {**section, "weights": filename, "sha256": sha}
        if not keep_thresholds:
            manifest.pop("thresholds", None)
        write_manifest(self.path, manifest)
        self.manifest = manifest

    def set_default_method(self, spec: Optional[str]) -> None:
        """Name the method spec that ``auto`` runs (None: back to the registry's rule). The
        bundle checks only that it is a spec; the caller checks that the parts can run it."""
        if "anomaly" not in self.manifest or "student" not in self.manifest:
            raise BundleError(
                f"{self.path}: a default method needs the anomaly part and the "
                f"student (without them `auto` runs the teacher-only default)"
            )
        manifest = copy.deepcopy(self.manifest)
        if spec is None:
            manifest["anomaly"].pop("default_method", None)
        else:
            _check_default_method(spec, str(self.path / MANIFEST))
            manifest["anomaly"]["default_method"] = spec
        write_manifest(self.path, manifest)
        self.manifest = manifest

    def write_thresholds(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Add or replace calibrated thresholds (``{key: {value, ...}}``) in the manifest."""
        manifest = copy.deepcopy(self.manifest)
        manifest["thresholds"] = {
            **manifest.get("thresholds", {}),
            **{k: dict(v) for k, v in entries.items()},
        }
        write_manifest(self.path, manifest)
        self.manifest = manifest


def _read(path: Path, where: str) -> Dict[str, Any]:
    """The manifest of bundle directory ``path``, its format and version checked."""
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory (it does not exist or is a file)")
    if not (path / MANIFEST).is_file():
        raise BundleError(
            f"{where}: missing (not a cosme bundle; make one with `cosme bundle create`)"
        )
    manifest = read_manifest_text(path / MANIFEST)
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: should be a mapping, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{where}: field 'format' should be '{FORMAT}', got {manifest.get('format')!r}"
        )
    version = manifest.get("version")
    if version != VERSION:
        raise BundleError(
            f"{where}: field 'version' is {version!r}; this cosme_ros reads version {VERSION}"
        )
    name = manifest.get("name")
    if name is not None and not (
        isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()
    ):
        raise BundleError(
            f"{where}: field 'name' should be a printable string of 1 to "
            f"{MAX_NAME_CHARS} characters"
        )
    return manifest


def _check_preprocess(pre: Mapping[str, Any], where: str):
    """(input size, mean, std) of the manifest's ``preprocess`` section."""
    size = _need(pre, "input_size", f"{where} preprocess", list)
    if len(size) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= MAX_INPUT_SIDE for v in size
    ):
        raise BundleError(
            f"{where}: field 'preprocess.input_size' should be [height, width], "
            f"integers from 32 to {MAX_INPUT_SIDE}, got {size!r}"
        )
    mean = _numbers(pre.get("mean"), 3, where, "preprocess.mean")
    std = _numbers(pre.get("std"), 3, where, "preprocess.std")
    if min(std) <= 0:
        raise BundleError(f"{where}: field 'preprocess.std' must be positive, got {std}")
    return size, mean, std


def _check_classes(manifest: Mapping[str, Any], teacher: Mapping[str, Any], where: str):
    """(names, palette, void classes) of the ``classes`` section, which must agree with the
    teacher's number of classes."""
    classes = _need(manifest, "classes", where, dict)
    names = _need(classes, "names", f"{where} classes", list)
    palette = _need(classes, "palette", f"{where} classes", list)
    if not all(isinstance(n, str) for n in names):
        raise BundleError(f"{where}: field 'classes.names' should be a list of strings")
    if len(palette) != len(names) or not all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette
    ):
        raise BundleError(
            f"{where}: field 'classes.palette' should hold one [r, g, b] "
            f"(0-255) per class name ({len(names)})"
        )
    void = classes.get("void", [])
    if not isinstance(void, list) or not all(
        isinstance(v, int) and 0 <= v < len(names) for v in void
    ):
        raise BundleError(
            f"{where}: field 'classes.void' should list class indices below {len(names)}"
        )
    num_classes = teacher["config"].get("num_classes")
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool)
    ):
        raise BundleError(
            f"{where}: field 'teacher.config.num_classes' should be an "
            f"integer, got {num_classes!r}"
        )
    if num_classes is not None and num_classes != len(names):
        raise BundleError(
            f"{where}: teacher.config.num_classes is {num_classes} but "
            f"classes.names has {len(names)} entries"
        )
    return names, palette, void


def _check_anomaly(path: Path, anomaly: Mapping[str, Any], where: str) -> None:
    from cosme_ros.nets.taps import ALL_TAPS

    _check_file(path, _need(anomaly, "weights", f"{where} anomaly", str), where, "anomaly.weights")
    _check_sha256(anomaly, where, "anomaly")
    for key in LAYER_FIELDS:
        if key in anomaly and not (
            isinstance(anomaly[key], list) and all(v in ALL_TAPS for v in anomaly[key])
        ):
            raise BundleError(
                f"{where}: field 'anomaly.{key}' should be a list of tap "
                f"names ({', '.join(ALL_TAPS)}), got {anomaly[key]!r}"
            )
    if "default_method" in anomaly:
        _check_default_method(anomaly["default_method"], where)


def _check_thresholds(thresholds: Any, where: str) -> None:
    if not isinstance(thresholds, dict):
        raise BundleError(f"{where}: field 'thresholds' should be a mapping of method to threshold")
    for key, entry in thresholds.items():
        value = entry.get("value") if isinstance(entry, dict) else None
        if (
            not isinstance(key, str)
            or not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise BundleError(
                f"{where}: field 'thresholds.{key}' should be a mapping with "
                f"a finite number 'value'"
            )


def _check_default_method(value: Any, where: str) -> None:
    """A method spec as text (its grammar: :func:`~cosme_ros.anomaly.method_spec.parse_method`);
    which names exist is the registry's business, checked where ``auto`` is resolved."""
    from cosme_ros.anomaly.method_spec import parse_method

    try:
        if not isinstance(value, str):
            raise ValueError(f"not a string: {value!r}")
        parse_method(value)
    except ValueError as exc:
        raise BundleError(f"{where}: field 'anomaly.default_method': {exc}") from None


def _check_file(root: Path, name: str, where: str, key: str) -> None:
    if not name:
        raise BundleError(f"{where}: field '{key}' is empty; it names the part's file")
    if Path(name).name != name:
        raise BundleError(
            f"{where}: field '{key}' must be a file name inside the bundle, " f"got {name!r}"
        )
    if not (root / name).is_file():
        raise BundleError(f"{root / name}: missing (named by field '{key}' of {where})")


def _build(builder, arch: str, config: Mapping, where: Path, part: str) -> nn.Module:
    try:
        return builder(arch, dict(config))
    except (TypeError, ValueError, KeyError) as exc:
        raise BundleError(
            f"{where}: field '{part}.config' does not describe a valid {arch} " f"network ({exc})"
        ) from None


def read_tensors(path: Path, sha256: Optional[str] = None) -> Dict[str, Tensor]:
    """The tensors of a part's file; with ``sha256`` (the manifest's) the file must match it
    byte for byte, and every floating-point tensor must be finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read safetensors file ({exc.strerror})") from None
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise BundleError(
                f"{path}: sha256 {actual[:16]}… does not match the manifest's "
                f"{sha256[:16]}… (the file is corrupt or was changed after the "
                f"bundle was written)"
            )
    try:
        tensors = load_bytes(data)
    except (SafetensorError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read safetensors file ({exc})") from None
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"{path}: tensor '{key}' has non-finite values (NaN or inf)")
    return tensors


def write_tensors(path: Path, tensors: Mapping[str, Tensor]) -> str:
    """Write a part's tensors atomically; returns the file's sha256 (for the manifest)."""
    from safetensors.torch import save_file

    with atomic.atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        sha = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
    return sha


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    atomic.write_text(root / MANIFEST, dump_manifest(manifest))


def _load_weights(module: nn.Module, path: Path, sha256: Optional[str] = None) -> None:
    from cosme_ros.errors import CheckpointError
    from cosme_ros.nets.imports.checkpoints import load_strict

    tensors = read_tensors(path, sha256)
    try:
        load_strict(module, tensors, path)
    except CheckpointError as exc:
        raise BundleError(str(exc)) from None


def create(
    out: str | Path,
    *,
    arch: str,
    module: nn.Module,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    void_classes: Sequence[int] = (),
    name: Optional[str] = None,
    source: Optional[Mapping[str, Any]] = None,
    force: bool = False,
) -> Bundle:
    """Write a teacher-only bundle directory atomically and return it, validated."""
    out = Path(out)
    manifest: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": name or out.name,
        "teacher": {
            "arch": arch,
            "config": dict(module.config),
            "weights": TEACHER_FILE,
            **({"source": dict(source)} if source else {}),
        },
        "preprocess": {
            "input_size": [int(v) for v in input_size],
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
        },
        "classes": {
            "names": list(class_names),
            "palette": [[int(v) for v in c] for c in palette],
            "void": [int(v) for v in void_classes],
        },
    }
    with atomic.atomic_dir(out, force=force) as tmp:
        manifest["teacher"]["sha256"] = write_tensors(tmp / TEACHER_FILE, module.state_dict())
        write_manifest(tmp, manifest)
    return Bundle.load(out)


# fp16 storage of network weights (the shipped demo bundle must stay small).
HALF_PARTS = ("teacher", "student")
_KEEP_FP32 = ("running_mean", "running_var")  # tiny; variances near 0 lose precision in fp16


def store_half(bundle: str | Path, parts: Sequence[str] = HALF_PARTS) -> Dict[str, Tuple[int, int]]:
    """Rewrite the bundle's network weights (``parts`` present in the manifest) with float32
    tensors stored as float16, BatchNorm statistics kept float32. Loading casts them back:
    ``load_state_dict`` copies into the fp32 parameters. The anomaly part (memory, statistics)
    stays fp32. Idempotent. Returns {file: (bytes before, bytes after)}.

    Raises BundleError when a weight does not fit fp16 (|w| > 65504)."""
    b = Bundle.load(bundle)
    old_student = b.student_sha256()
    sizes = {}
    manifest = copy.deepcopy(b.manifest)
    for part in parts:
        section = b.manifest.get(part)
        if section is None:
            continue
        path = b.path / section["weights"]
        before = path.stat().st_size
        tensors = read_tensors(path, section.get("sha256"))
        out = {}
        for key, t in tensors.items():
            if t.dtype == torch.float32 and not key.endswith(_KEEP_FP32):
                half = t.to(torch.float16)
                if not bool(torch.isfinite(half).all()):
                    raise BundleError(f"{path}: {key} has values beyond fp16's range; keep fp32")
                t = half
            out[key] = t
        manifest[part]["sha256"] = write_tensors(path, out)
        sizes[section["weights"]] = (before, path.stat().st_size)
        psi_stats = manifest.get("anomaly", {}).get("psi_stats")
        if part == "student" and psi_stats and psi_stats.get("student_sha256") == old_student:
            # the same student, rounded to fp16: its Ψ statistics still describe it
            psi_stats["student_sha256"] = manifest[part]["sha256"]
    write_manifest(b.path, manifest)
    return sizes
