"""Graph helpers every pass shares: constants, single-consumer checks, value replacement, initializers."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

_counter = itertools.count()


def const(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant array (an initializer or a Constant node's output), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """The one node reading `value`, when exactly one does and the value is not a graph output."""
    if value.is_graph_output():
        return None
    users = {id(u.node): u.node for u in value.uses()}
    return next(iter(users.values())) if len(users) == 1 else None


def add_initializer(graph: ir.Graph, hint: str, array: np.ndarray) -> ir.Value:
    """Register `array` as a new initializer with a fresh name derived from `hint`."""
    existing = set(graph.initializers)
    name = hint
    while name in existing:
        name = f"{hint}_{next(_counter)}"
    value = ir.val(name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    graph.register_initializer(value)
    return value


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Make every reader of `old` (graph outputs included) read `new`; a graph output keeps its name."""
    was_output = old.is_graph_output()
    name = old.name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if was_output:
        old.name = f"{name}__replaced_{next(_counter)}"
        new.name = name


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def ints(node: ir.Node, name: str, default):
    value = attr(node, name)
    return list(default) if value is None else list(value)


def nodes_of(model: ir.Model, op_type: str, domain: str = "") -> list[ir.Node]:
    """Every node of that type, subgraphs included, snapshotted so passes can rewrite while iterating."""
    return [n for n in ir.traversal.RecursiveGraphIterator(model.graph)
            if n.op_type == op_type and n.domain in (domain, "ai.onnx" if domain == "" else domain)]


# Ops that only a quantized model has: integer kernels and the conversions to and from them.
QUANTIZED_OPS = frozenset({
    "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv",
    "QLinearMatMul", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "QGemm", "QLinearAdd",
    "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QAttention", "MatMulNBits"})
