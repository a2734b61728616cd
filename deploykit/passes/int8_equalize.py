"""Cross-layer equalisation before int8 (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

For two convolutions A -> [ReLU or LeakyReLU] -> B, scaling A's output channel i by 1/s_i (its weights
and bias) and B's input channel i by s_i (its weight column) leaves B's output exactly as it was for
any s_i > 0: those activations are positively homogeneous, f(x / s) = f(x) / s. The float model is
unchanged; what int8 sees is not. The paper picks s_i = sqrt(r1_i / r2_i) from the two layers' weight
ranges so that both become sqrt(r1_i * r2_i). deploykit quantizes weights per output channel, where
A's own ranges do not matter; what its int8 shares across channels is the per-tensor range of the
activation between A and B, and B's weights per output channel across its input columns. So r1_i here
is channel i's range of that activation, measured on the calibration data in the float model, and
r2_i the largest |weight| of B's column i: after the scaling both are sqrt(r1_i * r2_i), which pulls
the channels of the shared activation range towards each other.

Pairs across ReLU6 (a Clip at 6: the bound does not scale), HardSwish, SiLU or any other
non-homogeneous activation are left alone, as is any tensor with a second reader.
"""

from __future__ import annotations

import numpy as np

_HOMOGENEOUS = {"Relu", "LeakyRelu"}
_LIMIT = 1e3  # no channel is scaled by more than this either way: a nearly dead channel would blow B's column up


def _group(node) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)


def equalization_pairs(proto) -> list[tuple]:
    """(A, B, the tensor between them) for every Conv -> [ReLU/LeakyReLU] -> Conv whose weights and biases are
    initializers and whose intermediate tensors have no other reader."""
    inits = {i.name for i in proto.graph.initializer}
    readers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in proto.graph.output}

    def only_reader(name):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and name not in graph_outputs else None

    def constant_weights(conv):
        return conv.input[1] in inits and (len(conv.input) < 3 or not conv.input[2] or conv.input[2] in inits)

    pairs = []
    for a in proto.graph.node:
        if a.op_type != "Conv" or a.domain not in ("", "ai.onnx") or not constant_weights(a):
            continue
        between = a.output[0]
        b = only_reader(between)
        if b is not None and b.op_type in _HOMOGENEOUS and b.domain in ("", "ai.onnx"):
            between = b.output[0]
            b = only_reader(between)
        if b is not None and b.op_type == "Conv" and b.domain in ("", "ai.onnx") and b.input[0] == between \
                and constant_weights(b):
            pairs.append((a, b, between))
    return pairs


def equalize(proto, calibration, samples: int = 32) -> dict[str, float]:
    """Equalise every pair of `proto` (a float ModelProto with its weights as initializers, changed in place)
    with activation ranges measured on `calibration` (an array for its only input). Returns {B's name: the
    ratio of the largest to the smallest channel range of the tensor it reads, after / before}."""
    import onnx_ir as ir
    from onnx import numpy_helper

    from ..calibration import layer_channel_ranges

    pairs = equalization_pairs(proto)
    if not pairs:
        return {}
    ranges = layer_channel_ranges(ir.from_proto(proto), [between for _, _, between in pairs], calibration[:samples])
    inits = {i.name: i for i in proto.graph.initializer}
    used = {}
    for node in proto.graph.node:
        for name in node.input:
            used[name] = used.get(name, 0) + 1
    spread = {}
    for a, b, between in pairs:
        activation = ranges.get(between)
        names = [a.input[1], b.input[1]] + ([a.input[2]] if len(a.input) > 2 and a.input[2] else [])
        if activation is None or any(used[n] > 1 for n in names):  # a shared weight would scale another layer too
            continue
        w_a = numpy_helper.to_array(inits[a.input[1]]).astype(np.float64)
        w_b = numpy_helper.to_array(inits[b.input[1]]).astype(np.float64)
        channels = w_a.shape[0]
        per_group = w_b.shape[1]
        groups = _group(b)
        if activation.shape[0] != channels or per_group * groups != channels or w_b.shape[0] % groups:
            continue
        rows = w_b.shape[0] // groups
        # Column i of B: input channel i % per_group of the output channels in group i // per_group.
        columns = np.abs(w_b).reshape(groups, rows, per_group, -1).max(axis=(1, 3)).reshape(channels)
        live = (activation > 0) & (columns > 0)
        scale = np.ones(channels)
        scale[live] = np.clip(np.sqrt(activation[live] / columns[live]), 1 / _LIMIT, _LIMIT)
        if np.allclose(scale, 1.0):
            continue
        w_a /= scale.reshape(-1, *[1] * (w_a.ndim - 1))
        w_b = (w_b.reshape(groups, rows, per_group, -1) * scale.reshape(groups, 1, per_group, 1)).reshape(w_b.shape)
        updates = {a.input[1]: w_a, b.input[1]: w_b}
        if len(a.input) > 2 and a.input[2]:
            updates[a.input[2]] = numpy_helper.to_array(inits[a.input[2]]).astype(np.float64) / scale
        for name, value in updates.items():
            dtype = numpy_helper.to_array(inits[name]).dtype
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
        before = activation[live]
        after = before / scale[live]
        spread[b.name] = float((after.max() / after.min()) / (before.max() / before.min())) if before.min() > 0 else 1.0
    return spread
