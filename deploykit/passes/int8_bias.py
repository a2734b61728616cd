"""Bias correction for int8 convolutions (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Rounding a convolution's weights to int8 shifts each output channel by a systematic amount: with
W_q the weights as the quantized model computes with them, output channel o moves on average by
sum over input channels i and kernel taps of (W_q - W)[o, i] * E[x_i], where E[x_i] is the mean of
input channel i (positive after a ReLU, so the errors do not cancel). Depthwise convolutions, with
nine weights per output channel, carry the largest shifts. The correction takes that expected shift
out of each channel's bias, in the quantized model's own int32 bias, with E[x] measured on the
calibration data in the float model (the empirical variant of the paper; zero padding at the borders
is not modelled).
"""

from __future__ import annotations

import numpy as np


def _initializers(proto) -> dict:
    return {i.name: i for i in proto.graph.initializer}


def _dequantized_weight(node, producer, inits):
    """(W_q as float, the DequantizeLinear's axis) for a weight fed by DequantizeLinear of an initializer."""
    from onnx import helper, numpy_helper

    dq = producer.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
        return None
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2] in inits else np.zeros_like(scale))
    axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def conv_input_means(float_proto, calibration, samples: int = 32) -> dict[str, np.ndarray]:
    """The per-channel mean of every convolution's input in the float model over `calibration` (an array for its
    only input): what correct_biases needs, measured once however many quantized forms are corrected."""
    import onnx_ir as ir

    from ..calibration import layer_channel_means

    names = list(dict.fromkeys(n.input[0] for n in float_proto.graph.node if n.op_type == "Conv"))
    return layer_channel_means(ir.from_proto(float_proto), names, calibration[:samples]) if names else {}


def correct_biases(float_proto, quantized, means: dict[str, np.ndarray]) -> dict[str, float]:
    """Correct the int32 biases of `quantized` (an ONNX Runtime QDQ ModelProto, changed in place) against
    `float_proto`, the model it was quantized from, with its convolutions' input means (conv_input_means).
    Returns {conv name: the largest |shift| taken out, in output units}."""
    from onnx import helper, numpy_helper

    producer = {o: n for n in quantized.graph.node for o in n.output}
    inits = _initializers(quantized)
    float_inits = _initializers(float_proto)
    float_nodes = {n.name: n for n in float_proto.graph.node if n.op_type == "Conv"}
    plans = []
    for node in quantized.graph.node:
        source = float_nodes.get(node.name)
        if node.op_type != "Conv" or source is None or len(node.input) < 3 or source.input[1] not in float_inits:
            continue
        bias_dq = producer.get(node.input[2])
        if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or bias_dq.input[0] not in inits \
                or bias_dq.input[1] not in inits:
            continue
        w_q = _dequantized_weight(node, producer, inits)
        w = numpy_helper.to_array(float_inits[source.input[1]]).astype(np.float64)
        if w_q is None or w_q.shape != w.shape or w.ndim != 4:
            continue
        plans.append((node, source.input[0], w_q - w, bias_dq))
    corrected = {}
    for node, input_name, error, bias_dq in plans:
        mu = means.get(input_name)
        cout, cin_per_group = error.shape[:2]
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        if mu is None or mu.shape[0] != cin_per_group * group:
            continue
        per_tap = error.sum(axis=(2, 3))  # (Cout, Cin/group): the mean input is the same at every tap
        inputs_of = mu.reshape(group, cin_per_group)[np.arange(cout) // (cout // group)]  # each output's inputs
        shift = (per_tap * inputs_of).sum(axis=1)
        bias_init = inits[bias_dq.input[0]]
        bias = numpy_helper.to_array(bias_init).astype(np.int64)
        scale = numpy_helper.to_array(inits[bias_dq.input[1]]).astype(np.float64)
        steps = np.round(shift / scale).astype(np.int64)
        if not steps.any():
            continue
        fixed = np.clip(bias - steps, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        bias_init.CopyFrom(numpy_helper.from_array(fixed.reshape(bias.shape), bias_init.name))
        corrected[node.name] = float(np.abs(shift).max())
    return corrected
