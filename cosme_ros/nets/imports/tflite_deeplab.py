"""Import of the EdgeTPU-DeepLab-slim Cityscapes model from its int8 TFLite file.

The file is a FlatBuffer; it is read with the ``tflite`` package (the schema's generated Python
accessors, maintained with TensorFlow's schema) rather than by hand, and never executed. Every
CONV_2D and DEPTHWISE_CONV_2D operator is matched by its TensorFlow scope (the first name of its
output tensor, e.g. ``MobilenetEdgeTPU/expanded_conv_9/depthwise``) to one conv of
:class:`~cosme_ros.nets.edgetpu_deeplab.EdgeTPUDeepLab`, and checked against it: kernel and
widths (by loading strictly), stride, dilation, "SAME" padding and the fused activation; the
residual ADD operators must be exactly where :data:`~cosme_ros.nets.edgetpu_deeplab.BLOCKS` has
them. Weights are dequantized to fp32: ``(q − zero_point) · scale``, per tensor or per output
channel as the file says; BatchNorm is already folded into them.

Layouts: TFLite convs are OHWI → torch OIHW; depthwise convs are 1HWC → torch C1HW.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from cosme_ros.errors import CheckpointError
from cosme_ros.nets.edgetpu_deeplab import BLOCKS, EdgeTPUDeepLab
from cosme_ros.nets.imports.checkpoints import load_strict

# TFLite tensor types (schema.fbs TensorType) this file may hold in its weights and biases.
_DTYPES = {0: np.float32, 2: np.int32, 3: np.uint8, 9: np.int8}
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
# Scopes of the layers outside the inverted bottlenecks → module names.
_SCOPES = {
    "MobilenetEdgeTPU/Conv": "stem",
    "MobilenetEdgeTPU/Conv_1": "conv_1",
    "aspp0": "aspp0",
    "image_pooling": "image_pooling",
    "concat_projection": "concat_projection",
    "logits/semantic": "logits",
}
_BLOCK_SCOPE = re.compile(r"MobilenetEdgeTPU/expanded_conv(?:_(\d+))?/(expand|depthwise|project)$")
_ADD_SCOPE = re.compile(r"MobilenetEdgeTPU/expanded_conv(?:_(\d+))?/add$")
# Convs without a fused ReLU: the linear projections and the classifier.
_LINEAR = re.compile(r"(\.project|^logits)$")


def _module_name(scope: str) -> Optional[str]:
    if scope in _SCOPES:
        return _SCOPES[scope]
    m = _BLOCK_SCOPE.match(scope)
    return f"blocks.{int(m.group(1) or 0)}.{m.group(2)}" if m else None


def _scope(tensor) -> str:
    """The TF scope of an operator's output: its first fused name without the op's own name."""
    name = tensor.Name().decode("utf-8", "replace").split(";")[0]
    return name.rsplit("/", 1)[0]


class _Reader:
    """The parts of a TFLite FlatBuffer the importer needs, with errors naming the file."""

    def __init__(self, path: Path):
        try:
            import tflite
        except ImportError as exc:  # a dependency of the package: say how to get it
            raise CheckpointError(
                f"{path}: reading TFLite files needs the 'tflite' package "
                f"(pip install -r requirements/base.txt): {exc}"
            ) from None
        self.tflite, self.path = tflite, path
        try:
            self.buf = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if len(self.buf) < 8 or self.buf[4:8] != b"TFL3":
            raise CheckpointError(f"{path}: not a TFLite model (no 'TFL3' FlatBuffer identifier)")
        try:
            self.model = tflite.Model.GetRootAsModel(self.buf, 0)
            self.graph = self.model.Subgraphs(0)
            self.names = {
                v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")
            }
            self.ops = [self._op(i) for i in range(self.graph.OperatorsLength())]
        except CheckpointError:
            raise
        except Exception as exc:  # a truncated or corrupt FlatBuffer fails anywhere inside
            raise CheckpointError(
                f"{path}: cannot parse the TFLite FlatBuffer: truncated or corrupt "
                f"({type(exc).__name__}: {exc})"
            ) from None

    def _op(self, index: int):
        op = self.graph.Operators(index)
        code = self.model.OperatorCodes(op.OpcodeIndex())
        kind = self.names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        inputs = [op.Inputs(j) for j in range(op.InputsLength())]
        outputs = [self.graph.Tensors(op.Outputs(j)) for j in range(op.OutputsLength())]
        return index, kind, op, inputs, outputs

    def tensor(self, index: int, what: str) -> np.ndarray:
        """A constant tensor, dequantized to fp32."""
        t = self.graph.Tensors(index)
        name = t.Name().decode("utf-8", "replace").split(";")[0]
        if t.Type() not in _DTYPES:
            raise CheckpointError(f"{self.path}: {what} {name!r} has unsupported type {t.Type()}")
        data = self.model.Buffers(t.Buffer()).DataAsNumpy()
        shape = tuple(int(s) for s in t.ShapeAsNumpy())
        if not isinstance(data, np.ndarray) or data.size != np.dtype(
            _DTYPES[t.Type()]
        ).itemsize * int(np.prod(shape)):
            raise CheckpointError(
                f"{self.path}: {what} {name!r} has no data of its shape {shape} "
                f"(truncated or corrupt file)"
            )
        values = data.view(_DTYPES[t.Type()]).reshape(shape).astype(np.float64)
        q = t.Quantization()
        if t.Type() != 0 and q is not None and q.ScaleLength():
            scale = q.ScaleAsNumpy().astype(np.float64)
            zero = (
                q.ZeroPointAsNumpy().astype(np.float64)
                if q.ZeroPointLength()
                else np.zeros_like(scale)
            )
            if scale.size > 1:  # per channel, along the quantized dimension
                axis = q.QuantizedDimension()
                bshape = [1] * values.ndim
                bshape[axis] = scale.size
                scale, zero = scale.reshape(bshape), zero.reshape(bshape)
            values = (values - zero) * scale
        return values.astype(np.float32)

    def conv_options(self, kind: str, op) -> Tuple[int, int, int, int]:
        """(stride, dilation, padding, fused activation) of a conv operator."""
        cls = self.tflite.Conv2DOptions if kind == "CONV_2D" else self.tflite.DepthwiseConv2DOptions
        opt = cls()
        table = op.BuiltinOptions()
        opt.Init(table.Bytes, table.Pos)
        if opt.StrideH() != opt.StrideW() or opt.DilationHFactor() != opt.DilationWFactor():
            raise CheckpointError(f"{self.path}: operator {kind} has unequal strides or dilations")
        return opt.StrideH(), opt.DilationHFactor(), opt.Padding(), opt.FusedActivationFunction()


def _to_torch(kind: str, weight: np.ndarray) -> Tensor:
    if kind == "DEPTHWISE_CONV_2D":  # (1, H, W, C) → (C, 1, H, W)
        return torch.from_numpy(np.ascontiguousarray(weight.transpose(3, 0, 1, 2)))
    return torch.from_numpy(np.ascontiguousarray(weight.transpose(0, 3, 1, 2)))  # OHWI → OIHW


def _check_geometry(reader: _Reader, conv: nn.Module, name: str, kind: str, op) -> None:
    stride, dilation, padding, activation = reader.conv_options(kind, op)
    tfl = reader.tflite
    wanted_act = (
        tfl.ActivationFunctionType.NONE if _LINEAR.search(name) else tfl.ActivationFunctionType.RELU
    )
    found = (stride, dilation, padding, activation)
    wanted = (conv.stride[0], conv.dilation[0], tfl.Padding.SAME, wanted_act)
    if found != wanted:
        raise CheckpointError(
            f"{reader.path}: operator for {name} has (stride, dilation, padding, activation) "
            f"{found}, the network expects {wanted}: not the EdgeTPU-DeepLab-slim graph"
        )


def _check_residuals(path: Path, reader: _Reader) -> None:
    adds: Set[int] = set()
    for _, kind, _, _, outputs in reader.ops:
        if kind == "ADD":
            m = _ADD_SCOPE.match(outputs[0].Name().decode("utf-8", "replace").split(";")[0])
            if m:
                adds.add(int(m.group(1) or 0))
    wanted = {i for i, b in enumerate(BLOCKS) if b.residual}
    if adds != wanted:
        raise CheckpointError(
            f"{path}: residual additions after blocks {sorted(adds)}, the network has them "
            f"after {sorted(wanted)}: not the EdgeTPU-DeepLab-slim graph"
        )


def load_edgetpu_deeplab_tflite(path: str | Path) -> EdgeTPUDeepLab:
    """The network with the file's weights (dequantized to fp32), in eval mode; the class count
    is the classifier's rows. Any foreign, corrupt or mismatching file raises a one-line
    :class:`CheckpointError` naming it (and the first layers that do not fit)."""
    path = Path(path)
    reader = _Reader(path)
    convs = [op for op in reader.ops if op[1] in _CONV_OPS]
    logits = [op for op in convs if _scope(op[4][0]) == "logits/semantic"]
    if not logits:
        raise CheckpointError(
            f"{path}: not an EdgeTPU-DeepLab model (no 'logits/semantic' conv among its "
            f"{len(convs)} conv operators)"
        )
    classes = int(reader.graph.Tensors(logits[0][3][1]).ShapeAsNumpy()[0])
    if classes < 2:
        raise CheckpointError(
            f"{path}: the classifier 'logits/semantic' has {classes} output row(s); a "
            f"segmentation teacher needs at least 2 classes"
        )
    model = EdgeTPUDeepLab(num_classes=classes)
    modules = dict(model.named_modules())
    state: Dict[str, Tensor] = {}
    unknown: List[str] = []
    for _, kind, op, inputs, outputs in convs:
        scope = _scope(outputs[0])
        name = _module_name(scope)
        if name is None:
            unknown.append(scope)
            continue
        if f"{name}.weight" in state:
            raise CheckpointError(f"{path}: two conv operators for {scope!r}")
        if len(inputs) < 3 or inputs[2] < 0:
            raise CheckpointError(f"{path}: conv {scope!r} has no bias (BatchNorm not folded?)")
        state[f"{name}.weight"] = _to_torch(kind, reader.tensor(inputs[1], "weight"))
        state[f"{name}.bias"] = torch.from_numpy(reader.tensor(inputs[2], "bias"))
        if name in modules:  # else load_strict names it among the unexpected keys
            _check_geometry(reader, modules[name], name, kind, op)
    if unknown:
        raise CheckpointError(
            f"{path}: {len(unknown)} conv operator(s) the network does not have, "
            f"e.g. {unknown[:3]}"
        )
    _check_residuals(path, reader)
    load_strict(model, state, path)
    return model.eval()
