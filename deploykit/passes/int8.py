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

import logging
import tempfile
from pathlib import Path

import onnx_ir as ir

from ..errors import UserInputError
from .base import RebuildPass

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


MIN_OPSET = 13
CALIBRATION_CHUNK = 16  # at most this many samples' statistics are collected per range
CALIBRATION_BUDGET = 1 << 30  # bytes of intermediate tensors a histogram range may hold


class QuantizeInt8Pass(RebuildPass):
    name = "int8"
    exact = False

    def __init__(self, calibration, target: str = "ort", method: str = "minmax", input_shape=None) -> None:
        super().__init__()
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
            onnx.save_model(proto, str(src), save_as_external_data=proto.ByteSize() > 2**31 - 1)
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # the quantizer logs advice we follow already (shapes are inferred)
            try:
                quantize_static(
                str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8 if ort_target else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, METHODS[self.method]),
                extra_options={"ActivationSymmetric": not ort_target, "WeightSymmetric": True,
                               "CalibStridedMinMax": stride},
                )
            finally:
                root.setLevel(level)
            quantized = onnx.load(str(dst))
            self.int8_convs = self._count_int8_convs(quantized, dst, Path(tmp))
        act = "uint8 (asymmetric) activations, for ONNX Runtime on the CPU" if ort_target else \
            "symmetric int8 activations, for TensorRT"
        self.note(f"QDQ, per-channel int8 weights, {act}; calibration: {len(data)} sample(s), {self.method}")
        self.note(f"{self.int8_convs} of {self.total_convs} convolution(s) run in int8"
                  + (" (QLinearConv after ORT's QDQ fusion)" if ort_target else " (Conv between DequantizeLinear nodes)"))
        return ir.from_proto(quantized)

    @staticmethod
    def _activation_bytes(model: ir.Model, sample_shape) -> int:
        """Every intermediate tensor of one sample (what a histogram collector holds), from inspect."""
        from ..inspect import inspect_model

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
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(tmp / "ort_view.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ran = onnx.load(str(tmp / "ort_view.onnx"))
        return sum(1 for n in ran.graph.node if n.op_type in ("QLinearConv", "NhwcQLinearConv"))


