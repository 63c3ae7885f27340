"""Compiled engines of a bundle's networks: export, record, verification, and loading with
fallback to the eager fast path.

``cosme export`` (:func:`export_engine`) takes a bundle's teacher and student with BatchNorm
folded, keeps exactly the taps one method needs (fp32 in and out), exports each once with
``torch.export`` (the ``.pt2`` is kept so that an engine can be rebuilt on its target), compiles it
with a backend, verifies it against the eager fp32 networks on real frames of the synthetic world
and writes it into ``<bundle>/engines/<name>/`` beside ``record.yaml``:

- ``onnxruntime``: ``torch.onnx.export`` (dynamo) of the program, run by an ONNX Runtime session
  (CPU, or CUDA where its provider is installed);
- ``aoti``: AOTInductor (``torch._inductor.aoti_compile_and_package``), a compiled shared library;
- ``tensorrt``: Torch-TensorRT on CUDA — an optional extra the user installs (``COSME_TRT=1``,
  README); without it the export stops with one line saying so.

The record holds what a later load must agree with: the bundle parts' hashes, the method and its
taps, the input shape and normalisation, the precision, the backend and every artifact's hash,
the versions (torch, ONNX Runtime, Torch-TensorRT, TensorRT, CUDA), the device (GPU name and
compute capability, or CPU model and ISA flags), the build time and the verification results. A
failed verification writes nothing and says why.

:func:`attach` gives the pipeline its networks: the engine's when ``engine`` is ``auto`` (the
bundle's first engine that fits), a backend name (the bundle's first engine of that backend that
fits) or a path, else — and on *any* mismatch: bundle hash, taps, input
size, versions, device, a missing or corrupt artifact, a start-up self-check that disagrees with
eager — the eager :class:`~.networks.Networks`, with a one-line reason that the node logs and
publishes on ``/diagnostics``. Nothing falls back silently.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from cosme_ros import __version__, atomic
from cosme_ros.errors import CosmeError
from cosme_ros.manifest_io import dump_manifest, read_manifest_text
from cosme_ros.nets.taps import O, ordered
from cosme_ros.runtime.networks import Networks, cpu_flags, resolve_device

__all__ = [
    "BACKENDS",
    "ENGINE_DIR",
    "RECORD",
    "EngineNetworks",
    "export_engine",
    "attach",
    "versions",
    "device_info",
]

BACKENDS = ("auto", "onnxruntime", "aoti", "tensorrt")
ENGINE_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
ENGINE_DIR = "engines"
RECORD = "record.yaml"
FORMAT = "cosme-engine"
VERSION = 1
FP32_TOLERANCE = 1e-3  # max tap error relative to the tap's largest magnitude
RANK_CORRELATION = 0.999  # reduced precision: anomaly-score rank correlation with eager fp32
CLASS_AGREEMENT = 0.99  # reduced precision: class-map agreement with eager fp32
#: ISA flags recorded for a CPU engine (AOTInductor's code is compiled for the build machine's)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma", "neon", "asimd")


# ----------------------------------------------------------------------------- what a record says


def versions() -> Dict[str, Optional[str]]:
    """The versions an engine depends on (None: not installed)."""
    out: Dict[str, Optional[str]] = {
        "torch": str(torch.__version__),
        "cuda": None if torch.version.cuda is None else str(torch.version.cuda),
    }
    for key, module in (
        ("onnxruntime", "onnxruntime"),
        ("torch_tensorrt", "torch_tensorrt"),
        ("tensorrt", "tensorrt"),
    ):
        try:
            out[key] = str(__import__(module).__version__)
        except Exception:  # noqa: BLE001 — absent, or a broken install: not usable either way
            out[key] = None
    return out


def device_info(device: torch.device) -> Dict[str, Any]:
    """The GPU (name, compute capability) or the CPU (model, ISA flags) an engine runs on."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "capability": f"{major}.{minor}",
        }
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = cpu_flags()
    return {"type": "cpu", "name": model, "isa": sorted(f for f in ISA_FLAGS if f in flags)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bundle_hashes(bundle) -> Dict[str, Optional[str]]:
    """SHA-256 of the network parts an engine was built from."""
    out: Dict[str, Optional[str]] = {}
    for part in ("teacher", "student"):
        section = bundle.manifest.get(part)
        if section is None:
            out[part] = None
        else:
            out[part] = section.get("sha256") or _sha256(bundle.path / section["weights"])
    return out


# ----------------------------------------------------------------------------- export


class _Taps(nn.Module):
    """A network with a fixed tuple of taps as its outputs (what ``torch.export`` traces)."""

    def __init__(self, net: nn.Module, taps: Sequence[str]):
        super().__init__()
        self.net, self.taps = net, tuple(taps)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        out = self.net(x, taps=self.taps)
        return tuple(out[t] for t in self.taps)


def _resolve(backend: str, precision: str, device: torch.device) -> Tuple[str, str]:
    if backend not in BACKENDS:
        raise CosmeError(f"unknown backend {backend!r} (use {', '.join(BACKENDS)})")
    if precision not in ENGINE_PRECISIONS:
        raise CosmeError(f"unknown precision {precision!r} (use {', '.join(ENGINE_PRECISIONS)})")
    if backend == "auto":
        backend = "tensorrt" if device.type == "cuda" else "onnxruntime"
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if backend == "tensorrt" and device.type != "cuda":
        raise CosmeError("backend tensorrt needs --device cuda (TensorRT runs on NVIDIA GPUs)")
    if device.type == "cpu" and precision == "fp16":
        raise CosmeError(
            "precision fp16 is for CUDA engines; on the CPU use fp32 (or bf16 with aoti)"
        )
    if backend == "onnxruntime" and precision != "fp32":
        raise CosmeError("the onnxruntime backend exports fp32 here; use --precision fp32")
    return backend, precision


def _compile(backend: str, program, module: nn.Module, x: Tensor, path: Path) -> List[str]:
    """Compile one exported network into ``path`` (a folder); the artifact file names."""
    if backend == "onnxruntime":
        # the exporter logs every torchvision operator it cannot register (none is used here)
        quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                module, (x,), str(path / "model.onnx"), dynamo=True, optimize=True, verbose=False
            )
        finally:
            quiet.setLevel(level)
        return ["model.onnx"]
    if backend == "aoti":
        from torch._inductor import aoti_compile_and_package

        aoti_compile_and_package(program, package_path=str(path / "model.pt2"))
        return ["model.pt2"]
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError as exc:
        raise CosmeError(
            f"backend tensorrt needs Torch-TensorRT, which is not installed ({exc}); it is an "
            f"optional extra (README, 'Compiled engines': COSME_TRT=1 bash scripts/setup_env.sh)"
        ) from None
    trt = torch_tensorrt.dynamo.compile(program, inputs=[x])  # pragma: no cover - CUDA only
    torch_tensorrt.save(trt, str(path / "model.ts.pt2"), inputs=[x])  # pragma: no cover
    return ["model.ts.pt2"]  # pragma: no cover


def export_engine(
    bundle,
    method: str,
    *,
    backend: str = "auto",
    precision: str = "auto",
    input_size: Optional[Tuple[int, int]] = None,
    device: str = "cpu",
    verify_frames: int = 4,
    force: bool = False,
    log=print,
) -> Path:
    """Export, compile, verify and write one engine for ``method`` on ``bundle`` (module
    docstring); returns its folder. Raises CosmeError — with nothing written — when the backend
    is missing or the verification fails."""
    from cosme_ros.runtime.pipeline import Pipeline

    dev = resolve_device(device)
    backend, precision = _resolve(backend, precision, dev)
    eager = Pipeline(bundle, method, device=str(dev), input_size=input_size, precision="fp32")
    scorer = eager.scorer
    taps = {"teacher": ordered(scorer.teacher_taps, (O,)), "student": tuple(scorer.student_taps)}
    h, w = eager.input_size
    name = f"{backend}-{precision}-{h}x{w}-" + hashlib.sha1(eager.method.encode()).hexdigest()[:8]
    target = bundle.path / ENGINE_DIR / name
    atomic.check_writable(target, force)
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
    nets = {"teacher": eager.networks.teacher, "student": eager.networks.student}
    record: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "bundle": {"path": str(bundle.path), "parts": _bundle_hashes(bundle)},
        "method": eager.method,
        "taps": {k: list(v) for k, v in taps.items() if v},
        "input": {"size": [h, w], "mean": list(bundle.mean), "std": list(bundle.std)},
        "precision": precision,
        "backend": backend,
        "versions": versions(),
        "device": device_info(dev),
        "cosme_ros": __version__,
    }
    start = time.perf_counter()
    with atomic.atomic_dir(target, force) as tmp:
        artifacts: Dict[str, Dict[str, str]] = {}
        for part, part_taps in taps.items():
            if not part_taps:
                continue
            module = _Taps(nets[part], part_taps).eval()
            if precision != "fp32":  # a copy: the eager fp32 networks verify the engine
                module = _Cast(copy.deepcopy(module), precision)
            (tmp / part).mkdir()
            with torch.no_grad(), warnings.catch_warnings():
                # torch.export and the ONNX optimiser warn about their own deprecations
                warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
                program = torch.export.export(module, (x,))
                torch.export.save(program, str(tmp / part / "program.pt2"))
                log(f"{part}: exported ({', '.join(part_taps)}), compiling with {backend} ...")
                files = _compile(backend, program, module, x, tmp / part)
            artifacts[part] = {f: _sha256(tmp / part / f) for f in [*files, "program.pt2"]}
        record["artifacts"] = artifacts
        record["build_seconds"] = round(time.perf_counter() - start, 1)
        engine = EngineNetworks(eager.networks, tmp, record)
        record["verification"] = verify(eager, engine, verify_frames, precision)
        (tmp / RECORD).write_text(dump_manifest(record))
    return target


class _Cast(nn.Module):
    """fp32 in and out around a network run at ``precision`` (the casts inside the graph).

    bf16 (CPU): autocast inside the graph — convolutions and matmuls in bf16, reductions and
    normalisations in fp32, as the eager bf16 path runs (a network cast to bf16 as a whole fails
    the verification on the demo bundle: rank correlation 0.9987). fp16 (TensorRT): the network
    cast to half."""

    def __init__(self, net: nn.Module, precision: str):
        super().__init__()
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        self.autocast = precision == "bf16"
        self.net = net if self.autocast else net.to(self.dtype)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if self.autocast:
            with torch.autocast(x.device.type, dtype=self.dtype):
                out = self.net(x)
            return tuple(t.float() for t in out)
        return tuple(t.float() for t in self.net(x.to(self.dtype)))


# ----------------------------------------------------------------------------- verification


def _frames(n: int, size: Tuple[int, int]) -> List[np.ndarray]:
    """Real frames of the synthetic world (a drive) at the network's input size."""
    from cosme_ros.data.synth import drive_frames

    return [f.image for f in drive_frames(11, max(1, n), size, 10.0)]


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def verify(eager, engine: "EngineNetworks", frames: int, precision: str) -> Dict[str, Any]:
    """The engine against the eager fp32 networks on ``frames`` frames: fp32 — every tap within
    :data:`FP32_TOLERANCE` of its largest magnitude; fp16/bf16 — the method's anomaly score in
    the same order (rank correlation ≥ :data:`RANK_CORRELATION`) and the same classes (≥
    :data:`CLASS_AGREEMENT`). CosmeError naming what disagreed when it fails."""
    worst_tap, worst_err, corr, agree = "", 0.0, 1.0, 1.0
    for rgb in _frames(frames, eager.input_size):
        x = eager.networks.preprocess([rgb])
        with torch.inference_mode():
            ref_t, ref_s = eager.networks(x)
            got_t, got_s = engine(x)
        for part, ref, got in (("teacher", ref_t, got_t), ("student", ref_s, got_s)):
            for tap in ref or {}:
                if got is None or tap not in got:
                    continue
                scale = float(ref[tap].abs().max()) or 1.0
                err = float((ref[tap] - got[tap]).abs().max()) / scale
                if err > worst_err:
                    worst_tap, worst_err = f"{part}.{tap}", err
        size = tuple(eager.input_size)
        with torch.inference_mode():
            s_ref = eager.scorer(ref_t, ref_s, size)[0].float().cpu().numpy()
            s_got = eager.scorer(got_t, got_s, size)[0].float().cpu().numpy()
        c_ref = ref_t[O].argmax(1).cpu().numpy()
        c_got = got_t[O].argmax(1).cpu().numpy()
        corr = min(corr, _rank_correlation(s_ref, s_got))
        agree = min(agree, float((c_ref == c_got).mean()))
    result = {
        "frames": frames,
        "max_tap_error_relative": worst_err,
        "worst_tap": worst_tap,
        "score_rank_correlation": round(corr, 6),
        "class_agreement": round(agree, 6),
    }
    if precision == "fp32" and worst_err > FP32_TOLERANCE:
        raise CosmeError(
            f"verification failed: {worst_tap} differs from eager fp32 by {worst_err:.2e} of its "
            f"largest value (fp32 allows {FP32_TOLERANCE:g}); nothing was written"
        )
    if precision != "fp32" and (corr < RANK_CORRELATION or agree < CLASS_AGREEMENT):
        raise CosmeError(
            f"verification failed: anomaly-score rank correlation {corr:.4f} (needs "
            f"{RANK_CORRELATION}), class agreement {agree:.4f} (needs {CLASS_AGREEMENT}); "
            f"nothing was written"
        )
    return result


# ----------------------------------------------------------------------------- loading


class EngineNetworks:
    """:class:`~.networks.Networks`' interface over a compiled engine: the eager networks'
    preprocessing (and modules, for what is not compiled), the engine's taps."""

    def __init__(self, eager: Networks, folder: Path, record: Mapping[str, Any]):
        self.eager, self.folder, self.record = eager, Path(folder), dict(record)
        self.backend = str(record["backend"])
        self.taps = {k: tuple(v) for k, v in record.get("taps", {}).items()}
        self._run = {part: self._load(part) for part in self.taps}

    def _load(self, part: str):
        path = self.folder / part
        if self.backend == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            # ORT's threads spin-wait after a run by default: on a small CPU they would take the
            # cores from the scorer and the postprocess that run right after (measured: both
            # 2-3x slower with spinning on 2 cores)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            providers = ["CPUExecutionProvider"]
            if self.eager.device.type == "cuda":
                providers.insert(0, "CUDAExecutionProvider")
            session = ort.InferenceSession(str(path / "model.onnx"), options, providers=providers)
            name = session.get_inputs()[0].name

            def run(x: Tensor) -> Tuple[Tensor, ...]:
                arrays = session.run(None, {name: x.detach().cpu().contiguous().numpy()})
                return tuple(torch.from_numpy(a).to(self.eager.device) for a in arrays)

            return run
        if self.backend == "aoti":
            from torch._inductor import aoti_load_package

            model = aoti_load_package(str(path / "model.pt2"))
            return lambda x: tuple(model(x.contiguous()))
        import torch_tensorrt  # pragma: no cover - CUDA only

        model = torch_tensorrt.load(str(path / "model.ts.pt2")).module()  # pragma: no cover
        return lambda x: tuple(model(x.contiguous()))  # pragma: no cover

    # Networks' interface -------------------------------------------------------------

    @property
    def bundle(self):
        return self.eager.bundle

    @property
    def device(self) -> torch.device:
        return self.eager.device

    @property
    def precision(self) -> str:
        return str(self.record["precision"])

    @property
    def input_size(self) -> Tuple[int, int]:
        return self.eager.input_size

    @property
    def channels_last(self) -> bool:
        return self.eager.channels_last

    @property
    def tap_channels(self):
        return self.eager.tap_channels

    @property
    def teacher(self) -> nn.Module:
        return self.eager.teacher

    @property
    def student(self) -> Optional[nn.Module]:
        return self.eager.student

    def preprocess(self, images_rgb) -> Tensor:
        return self.eager.preprocess(images_rgb)

    def _forward(self, part: str, x: Tensor, taps: Optional[Sequence[str]]):
        have = self.taps[part]
        outs = dict(zip(have, self._run[part](x)))
        wanted = have if taps is None else tuple(taps)
        if not self.eager.channels_last:
            return {t: outs[t].float() for t in wanted}
        # the eager networks' layout: the scorers and the postprocess are tuned for it (the
        # class map from NCHW logits took 2.6x as long at 720p)
        return {t: outs[t].float().contiguous(memory_format=torch.channels_last) for t in wanted}

    def teacher_forward(self, x: Tensor, taps: Optional[Sequence[str]] = None):
        return self._forward("teacher", x, taps)

    def student_forward(self, x: Tensor, taps: Optional[Sequence[str]] = None):
        if "student" not in self.taps:
            return None
        return self._forward("student", x, taps)

    def __call__(self, x: Tensor):
        return self.teacher_forward(x), self.student_forward(x)


class EngineUnavailable(CosmeError):
    """An engine was required (``cosme bench --backend``) and cannot be used; the text says why."""


@dataclass
class Attached:
    """The networks a pipeline runs and how it came to them: ``backend`` (``eager`` or the
    engine's), ``note`` (why eager), ``fallback`` (an engine was named, or the bundle has some,
    and none could be used: worth a warning, unlike a bundle without engines)."""

    networks: Any
    backend: str
    note: Optional[str] = None
    path: Optional[Path] = None
    fallback: bool = False


def attach(eager: Networks, scorer, method: str, engine: str) -> Attached:
    """The engine ``engine`` (``off``, ``auto``, a backend of :data:`BACKENDS` or a folder) for
    ``method`` over the eager networks, or the eager networks with the reason (module
    docstring). An engine runs at the precision it was built and verified at, whatever the
    pipeline's ``precision``. ``auto`` finding no engine at all is not a fallback (nothing was
    built); a named backend finding none is."""
    if engine in ("off", "", None):
        return Attached(eager, "eager")
    if engine in BACKENDS:
        backend = None if engine == "auto" else engine
        root = eager.bundle.path / ENGINE_DIR
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if backend is not None:
            folders = [f for f in folders if _backend_of(f) == backend]
        if not folders:
            what = f"no {backend} engine" if backend else "no engine"
            return Attached(eager, "eager", f"{what} in {root}", fallback=backend is not None)
        reasons = []
        for folder in folders:
            got = _try(eager, scorer, method, folder)
            if isinstance(got, Attached):
                return got
            reasons.append(f"{folder.name}: {got}")
        return Attached(eager, "eager", "no engine fits: " + "; ".join(reasons), fallback=True)
    got = _try(eager, scorer, method, Path(engine))
    if isinstance(got, Attached):
        return got
    return Attached(eager, "eager", f"{engine}: {got}", fallback=True)


def _backend_of(folder: Path) -> Optional[str]:
    """The backend ``folder``'s record names (None: no readable record)."""
    try:
        return _read_record(folder).get("backend")
    except Exception:  # noqa: BLE001 — an unreadable record is simply not that backend's
        return None


def _try(eager: Networks, scorer, method: str, folder: Path):
    """An Attached engine, or the reason (text) it cannot be used."""
    try:
        record = _read_record(folder)
        reason = _mismatch(eager, scorer, method, record)
        if reason is None:
            reason = _corrupt(folder, record)
        if reason is not None:
            return reason
        engine = EngineNetworks(eager, folder, record)
        reason = _self_check(eager, engine, record)
    except Exception as exc:  # noqa: BLE001 — any failure to load is a reason to run eager
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    if reason is not None:
        return reason
    return Attached(engine, engine.backend, None, folder)


def _read_record(folder: Path) -> Dict[str, Any]:
    path = folder / RECORD
    if not path.is_file():
        raise CosmeError(f"no {RECORD}")
    record = read_manifest_text(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CosmeError(f"{RECORD} is not a {FORMAT} record")
    if record.get("version") != VERSION:
        raise CosmeError(
            f"record version {record.get('version')!r}, this cosme_ros reads {VERSION}"
        )
    return record


def _mismatch(eager: Networks, scorer, method: str, record: Mapping[str, Any]) -> Optional[str]:
    """Why ``record`` does not fit these networks and this method (None: it fits)."""
    if record.get("bundle", {}).get("parts") != _bundle_hashes(eager.bundle):
        return "built from other network weights (bundle hashes differ)"
    taps = record.get("taps", {})
    need = {"teacher": set(scorer.teacher_taps) | {O}, "student": set(scorer.student_taps)}
    for part, wanted in need.items():
        missing = wanted - set(taps.get(part, []))
        if missing:
            return f"has no {part} tap {', '.join(sorted(missing))} (method {method})"
    size = list(record.get("input", {}).get("size", []))
    if size != list(eager.input_size):
        return f"built for input {size}, the pipeline runs {list(eager.input_size)}"
    if list(record.get("input", {}).get("mean", [])) != list(eager.bundle.mean) or list(
        record.get("input", {}).get("std", [])
    ) != list(eager.bundle.std):
        return "built for another input normalisation"
    now, then = versions(), record.get("versions", {})
    keys = {"onnxruntime": ("torch", "onnxruntime"), "aoti": ("torch",)}.get(
        record.get("backend"), ("torch", "torch_tensorrt", "tensorrt", "cuda")
    )
    for key in keys:
        if then.get(key) != now.get(key):
            return f"built with {key} {then.get(key)}, this machine has {now.get(key)}"
    dev = record.get("device", {})
    if dev.get("type") != eager.device.type:
        return f"built for {dev.get('type')}, the pipeline runs on {eager.device.type}"
    here = device_info(eager.device)
    if dev.get("type") == "cuda" and dev.get("capability") != here.get("capability"):
        return f"built for compute capability {dev.get('capability')}, this GPU is {here.get('capability')}"
    if record.get("backend") == "aoti" and not set(dev.get("isa", [])) <= set(here.get("isa", [])):
        return f"compiled for ISA {', '.join(dev.get('isa', []))}, this CPU lacks some"
    return None


def _corrupt(folder: Path, record: Mapping[str, Any]) -> Optional[str]:
    for part, files in record.get("artifacts", {}).items():
        for name, sha in files.items():
            path = folder / part / name
            if not path.is_file():
                return f"artifact {part}/{name} is missing"
            if _sha256(path) != sha:
                return f"artifact {part}/{name} is corrupt (SHA-256 differs from the record)"
    return None


def _self_check(eager: Networks, engine: EngineNetworks, record) -> Optional[str]:
    """One random input through the engine and the eager networks: a disagreement (beyond
    the precision's tolerance) is a reason to run eager."""
    h, w = eager.input_size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(eager.device)
    if eager.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # the reference is fp32, whatever the pipeline's precision
        ref = eager.teacher(x, taps=(O,))[O].float()
        got = engine.teacher_forward(x, (O,))[O]
    if tuple(got.shape) != tuple(ref.shape) or not bool(torch.isfinite(got).all()):
        return "start-up self-check: the engine's logits have another shape or are not finite"
    if record.get("precision") == "fp32":
        err = float((ref - got).abs().max()) / (float(ref.abs().max()) or 1.0)
        if err > FP32_TOLERANCE:
            return f"start-up self-check: logits differ from eager by {err:.2e} of their scale"
    elif float((ref.argmax(1) == got.argmax(1)).float().mean()) < CLASS_AGREEMENT:
        return "start-up self-check: the engine's classes disagree with eager"
    return None
