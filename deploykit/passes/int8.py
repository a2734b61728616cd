"""Static post-training int8 quantization (QDQ format, per-channel int8 weights), per target.

The activation type follows the target, because the runtimes want different things:
- ONNX Runtime on the CPU: uint8 activations (asymmetric). Its x86 int8 kernels are u8 x s8, and
  with uint8 activations every Conv fuses into QLinearConv (measured 3.1-3.2x over fp32 on
  ResNet-18); with int8 activations (quantize_static's default) only some do, and the model runs
  slower than fp32 (see ../shared/docs/performance-facts.md).
- TensorRT: symmetric int8 activations and weights, which is what its explicit-quantization
  (QDQ) path accepts.

The report says how many convolutions end up running in int8: for ORT, the QLinearConv nodes in
the graph ORT actually runs after its own QDQ fusion; for TensorRT, the Convs fed by
DequantizeLinear on both data and weight.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..errors import UserInputError
from .graph_tools import QUANTIZED_OPS
from .base import RebuildPass
from .int8_budget import Int8BudgetSearch

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


MIN_OPSET = 13
CALIBRATION_CHUNK = 16  # at most this many samples' statistics are collected per range
CALIBRATION_BUDGET = 1 << 30  # bytes of intermediate tensors a histogram range may hold


# Layers that compute features: a node in the tail has none of them downstream. A single-output-channel conv
# (YOLOv8's DFL expectation, 16 bins -> 1) is arithmetic on probabilities, not a feature layer.
_FEATURE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def decode_tail(proto) -> list[str]:
    """Names of the nodes after the model's last feature layers: those from which no Conv/ConvTranspose/Gemm/MatMul
    with more than one output channel and constant weights is reachable, in graph order."""
    graph = proto.graph
    constants = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def is_feature_layer(node) -> bool:
        if node.op_type not in _FEATURE_OPS or len(node.input) < 2 or node.input[1] not in constants:
            return False
        dims = list(constants[node.input[1]].dims)
        if not dims:
            return False
        out_channels = dims[1] if node.op_type == "ConvTranspose" else dims[0] if node.op_type == "Conv" else (
            dims[0] if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute) else dims[-1])
        return out_channels > 1

    feeds_features: dict[int, bool] = {}
    for node in reversed(graph.node):  # topological order reversed: every consumer is decided first
        feeds_features[id(node)] = any(is_feature_layer(c) or feeds_features.get(id(c), False)
                                       for out in node.output for c in consumers.get(out, []))
    return [n.name for n in graph.node if not is_feature_layer(n) and not feeds_features[id(n)]
            and n.op_type not in ("Constant", "Shape")]


class QuantizeInt8Pass(Int8BudgetSearch, RebuildPass):
    name = "int8"
    exact = False

    @classmethod
    def from_options(cls, options, budget=None):
        if not options.int8:
            return None
        # OpenVINO runs ONNX Runtime's QDQ layout (uint8 activations) as int8 as well (bench/ENGINES.md).
        return cls(options.calibration, target="ort" if options.target == "openvino" else options.target,
                   method=options.calibration_method or "minmax", exclude=options.int8_exclude,
                   budget=budget, keep_tail_float=not options.int8_quantize_tail,
                   bias_correction=options.int8_bias_correction, equalize=options.int8_equalize)

    def requires(self, model: ir.Model) -> None:
        """An already quantized model is refused: ORT's quantizer fails inside on its scales, and what is
        quantized cannot be quantized again."""
        from ..errors import UserInputError

        found = sorted({n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)
                        if n.op_type in QUANTIZED_OPS})
        if found:
            raise UserInputError(f"the model is already quantized (it has {', '.join(found)}): --int8 takes a float "
                                 "model; give the float model it came from, or run it as it is")

    def __init__(self, calibration, target: str = "ort", method: str = "minmax", input_shape=None,
                 exclude=(), budget=None, keep_tail_float: bool = True,
                 bias_correction: bool = False, equalize: bool = False) -> None:
        super().__init__()
        # A detector's decoding (box/score concatenation, DFL softmax, grid arithmetic) and a classifier's final
        # softmax gain nothing in int8 and lose the precision their outputs need: float unless asked.
        self.keep_tail_float = keep_tail_float
        # Take the shift int8 weights put on each output channel out of its bias (deploykit.passes.int8_bias).
        self.bias_correction = bias_correction
        self.corrected: dict[str, float] = {}
        # Balance the channels of each Conv -> ReLU -> Conv activation first (deploykit.passes.int8_equalize).
        self.equalize = equalize
        self.equalized: dict[str, float] = {}
        # Node names or op types kept in float from the start (--int8-exclude); the budget search adds to them.
        self.exclude = tuple(exclude)
        # The pipeline's AccuracyBudget (None: no budget), in points of accuracy (labelled data) or of top-1
        # agreement, shared with a bottleneck before it; judged on the pipeline's validation set (its context).
        self.budget = budget
        self.kept_in_float: list[str] = []
        if calibration is None:
            raise UserInputError("--int8 needs --calibration DATA (a folder of images, an .npy/.npz file, or 'digits')")
        if method not in METHODS:
            raise UserInputError(f"unknown calibration method {method!r}: choose {', '.join(METHODS)}")
        self.calibration, self.target, self.method, self.input_shape = calibration, target, method, input_shape
        self.int8_convs = 0
        self.total_convs = 0

    def rebuild(self, model: ir.Model) -> ir.Model:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        from ..calibration import load_calibration

        data = load_calibration(self.calibration, model, self.input_shape)
        real_inputs = [v for v in model.graph.inputs if not v.is_initializer()]
        if len(real_inputs) != 1:
            raise UserInputError(f"--int8 calibrates single-input models; this one has {len(real_inputs)} inputs "
                                 f"({', '.join(v.name for v in real_inputs)})")
        input_value = real_inputs[0]
        expected = input_value.shape
        if expected is not None and any(isinstance(d, int) and d > 0 and d != a
                                        for d, a in zip(list(expected)[1:], data.shape[1:])):
            raise UserInputError(f"calibration data has shape {list(data.shape[1:])} per sample but input "
                                 f"{input_value.name!r} expects {[d if isinstance(d, int) and d > 0 else '?' for d in list(expected)[1:]]}")
        first = expected[0] if expected is not None and len(expected) else None
        fixed_batch = first if isinstance(first, int) and first > 0 else None
        # One sample per run unless the batch is fixed: ORT's calibration session holds every intermediate
        # tensor of the batch it runs (the PP-OCR detector at 736x1184: 1.2 GiB a sample; 8 at once took
        # 12 GB), and histogram methods need equal-sized batches, which single samples always are.
        step = fixed_batch or 1
        # A fixed batch dimension takes only whole batches; a dynamic one takes the remainder too.
        stop = len(data) - len(data) % step if fixed_batch else len(data)
        if stop == 0:
            raise UserInputError(f"the model's batch is fixed at {step}: give at least {step} calibration samples")

        batches = [(i, min(i + step, stop)) for i in range(0, stop, step)]

        class Reader(CalibrationDataReader):
            """Batches of the calibration set; ORT reads them a range at a time (see CalibStridedMinMax below)."""

            def __init__(self):
                self.set_range(0, len(batches))

            def __len__(self):
                return len(batches)

            def set_range(self, start_index, end_index):
                self._pending = iter(batches[start_index:end_index])

            def get_next(self):
                span = next(self._pending, None)
                return None if span is None else {input_value.name: data[span[0]:span[1]]}

        # ORT folds what it collected into ranges/histograms after each range of batches, so only one
        # range's intermediate tensors are held at once, whatever the set's size. Histogram methods keep
        # whole tensors: as many samples as fit CALIBRATION_BUDGET; min/max keeps two numbers a tensor.
        # The range must divide the batch count: the largest divisor that fits.
        per_sample = self._activation_bytes(model, data.shape[1:]) if self.method != "minmax" else 0
        per_range = max(1, min(CALIBRATION_CHUNK, CALIBRATION_BUDGET // max(per_sample, 1)) // step)
        stride = max(d for d in range(1, min(per_range, len(batches)) + 1) if len(batches) % d == 0)

        ort_target = self.target == "ort"
        # Without VNNI, ONNX Runtime's x86 u8 x s8 kernels multiply-add pairs into 16 bits (vpmaddubsw), which
        # saturates with full-range weights: measured on an AVX2-only EPYC, a two-conv chain deviated by 12% of
        # its output range where 7-bit weights keep it under 5%. ORT's own advice is reduce_range there.
        from ..machine import VNNI, cpu_flags

        flags = cpu_flags()
        reduce_range = ort_target and "avx2" in flags and not flags & VNNI
        if reduce_range:
            self.note("this CPU has AVX2 but no VNNI: weights quantized to 7 bits (reduce_range), because ONNX "
                      "Runtime's int8 kernels here sum pairs in 16 bits and saturate with full-range weights")
        self.total_convs = sum(1 for n in model.graph if n.op_type == "Conv")
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            proto = ir.to_proto(model)
            opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
            if opset < MIN_OPSET:
                # Per-channel DequantizeLinear (its axis attribute) exists from opset 13.
                from onnx import version_converter

                proto = version_converter.convert_version(proto, MIN_OPSET)
                self.note(f"upgraded the model from opset {opset} to {MIN_OPSET}: per-channel int8 weights need it")
            # Nodes are excluded from quantization by name: Paddle exports leave half of them unnamed.
            taken = {n.name for n in proto.graph.node}
            for i, node in enumerate(proto.graph.node):
                if not node.name:
                    node.name = next(f"{node.op_type}_{i}{s}" for s in ("", "_", "__", "___") if
                                     f"{node.op_type}_{i}{s}" not in taken)
                    taken.add(node.name)
            _lift_constants(proto)
            if self.equalize:
                from .int8_equalize import equalize

                # Exact in float: the budget search and bias correction below take this model as the reference.
                self.equalized = equalize(proto, data)
            onnx.save_model(proto, str(src), save_as_external_data=proto.ByteSize() > 2**31 - 1)
            cache = Path(tmp) / "ranges.json"

            # Bias correction's input means depend on the float model only: measured once for every trial below.
            input_means = None
            if self.bias_correction:
                from .int8_bias import conv_input_means

                input_means = conv_input_means(proto, data)

            def quantize(excluded: list[str]):
                """The QDQ model with `excluded` nodes in float; calibrates once, then reuses the ranges."""
                root = logging.getLogger()
                level = root.level
                root.setLevel(logging.ERROR)  # the quantizer logs advice we follow already (shapes are inferred)
                # The histogram calibrators print progress to stdout, which belongs to --json's document.
                try:
                    with contextlib.redirect_stdout(sys.stderr):
                        quantize_static(
                            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8 if ort_target else QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=list(excluded), reduce_range=reduce_range,
                            calibrate_method=getattr(CalibrationMethod, METHODS[self.method]),
                            calibration_cache_path=str(cache),
                            extra_options={"ActivationSymmetric": not ort_target, "WeightSymmetric": True,
                                           "CalibStridedMinMax": stride},
                        )
                except AssertionError as exc:
                    if "scale" not in str(exc):
                        raise
                    # ORT's quantizer asserts when a range is too wide for a float32 scale.
                    peak = float(np.max(np.abs(data))) if np.size(data) else 0.0
                    raise UserInputError(
                        f"a tensor's calibrated range is too wide for an int8 scale (the calibration data reaches "
                        f"{peak:.3g}): give calibration data scaled as the model's inputs are in use") from None
                finally:
                    root.setLevel(level)
                result = onnx.load(str(dst))
                if input_means is not None:
                    from .int8_bias import correct_biases

                    self.corrected = correct_biases(proto, result, input_means)
                return result

            base = self._resolve_exclude(proto)
            if base:
                self.note(f"kept {len(base)} node(s) in float as asked (--int8-exclude): {', '.join(base)}")
            if self.keep_tail_float:
                tail = [n for n in decode_tail(proto) if n not in base]
                if tail:
                    shown = ", ".join(tail[:8]) + (f" and {len(tail) - 8} more" if len(tail) > 8 else "")
                    self.note(f"kept the post-processing tail in float: {len(tail)} node(s) after the last "
                              f"multi-channel convolution or FC layer ({shown}); --int8-quantize-tail quantizes it too")
                    base = base + tail
            quantized = quantize(base)
            if self.budget is not None:
                quantized = self._hold_budget(proto, quantized, base, quantize)
            onnx.save_model(quantized, str(dst))
            self.int8_convs = self._count_int8_convs(quantized, dst, Path(tmp))
        act = "uint8 (asymmetric) activations, for ONNX Runtime on the CPU" if ort_target else \
            "symmetric int8 activations, for TensorRT"
        self.note(f"QDQ, per-channel int8 weights, {act}; calibration: {len(data)} sample(s), {self.method}")
        if self.equalize:
            spread = sorted(self.equalized.values())
            self.note(f"cross-layer equalisation: {len(spread)} Conv -> ReLU -> Conv pair(s) rescaled (exact in float)"
                      + (f"; the spread of channel ranges in the tensor between them fell to a median "
                         f"{spread[len(spread) // 2]:.2g}x of what it was" if spread else
                         "; none found (pairs across ReLU6, HardSwish or SiLU are not scale-equivariant)"))
        if self.bias_correction:
            worst = max(self.corrected.values(), default=0.0)
            self.note(f"bias correction: {len(self.corrected)} convolution(s) had the mean shift of their int8 "
                      f"weights taken out of their biases (largest {worst:.3g}), measured on the calibration data")
        self.note(f"{self.int8_convs} of {self.total_convs} convolution(s) run in int8"
                  + (" (QLinearConv after ORT's QDQ fusion)" if ort_target else " (Conv between DequantizeLinear nodes)"))
        return ir.from_proto(quantized)

    def _resolve_exclude(self, proto) -> list[str]:
        """--int8-exclude entries as node names: an op type names every node of that type."""
        names = {n.name for n in proto.graph.node}
        out = []
        for item in self.exclude:
            matches = [n.name for n in proto.graph.node if n.op_type == item] if item not in names else [item]
            if not matches:
                raise UserInputError(f"--int8-exclude {item!r} is neither a node name nor an op type of the model; "
                                     "run 'deploykit inspect' for the names")
            out += [m for m in matches if m not in out]
        return out


    @staticmethod
    def _activation_bytes(model: ir.Model, sample_shape) -> int:
        """Every intermediate tensor of one sample (what a histogram collector holds), from inspect."""
        from ..analysis import inspect_model

        try:
            return inspect_model(ir.to_proto(model), (1, *sample_shape)).totals.activation_bytes
        except Exception:  # accounting is advisory here: assume the worst, one sample per range
            return CALIBRATION_BUDGET

    def _count_int8_convs(self, proto, path: Path, tmp: Path) -> int:
        if self.target != "ort":
            producers = {o: n.op_type for n in proto.graph.node for o in n.output}
            return sum(1 for n in proto.graph.node if n.op_type == "Conv"
                       and producers.get(n.input[0]) == "DequantizeLinear"
                       and producers.get(n.input[1]) == "DequantizeLinear")
        import onnx
        from ..ort_session import new_session

        new_session(path, optimization="extended", save_optimized_to=tmp / "ort_view.onnx")
        ran = onnx.load(str(tmp / "ort_view.onnx"))
        return sum(1 for n in ran.graph.node if n.op_type in ("QLinearConv", "NhwcQLinearConv"))


def _lift_constants(proto) -> None:
    """Top-level Constant nodes become initializers, which the calibrators leave alone. ONNX Runtime's
    histogram calibrators (entropy, percentile) otherwise collect every Constant's output and fail on an
    empty one, such as the `roi` of a Paddle-exported Resize ('zero-size array to reduction operation')."""
    import onnx

    kept = []
    for node in proto.graph.node:
        if (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1
                and node.attribute[0].name == "value"):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            proto.graph.initializer.append(tensor)
        else:
            kept.append(node)
    if len(kept) != len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(kept)
