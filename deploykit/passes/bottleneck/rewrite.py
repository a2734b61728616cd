"""Finding the factorisable layers and rewriting each as a low-rank pair (data-aware with calibration)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph_tools import add_initializer, attr, const, replace_value
from .layers import Layer, MEASURED_MODES, fully_connected, timing_spec


class Rewrite:
    """BottleneckPass's candidates and graph rewrite (a mixin)."""

    def _candidates(self, model: ir.Model) -> list[Layer]:
        from ...analysis import inspect_model

        report = inspect_model(ir.to_proto(model), self.input_shapes)
        self._total_macs = report.totals.macs
        out_shapes = {l.name: l.output_shape for l in report.layers}
        layers, grouped, skipped_pointwise = [], [], 0
        for node in model.graph:
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            if self.layers and node.name not in self.layers:
                continue
            if node.op_type != "Conv":
                fc = fully_connected(node, out_shapes, report.input_shapes)
                if fc is None:
                    continue
                if self.mode not in MEASURED_MODES and not (self.layers and node.name in self.layers):
                    skipped_pointwise += 1  # like a 1x1 conv: split in two it pays only where timed (or named)
                    continue
                layers.append(fc)
                continue
            w = const(node.inputs[1])
            if w is None or w.ndim != 4:
                continue
            if attr(node, "group", 1) != 1:
                grouped.append(node.name)
                continue
            producer = node.inputs[0].producer()
            in_shape = out_shapes.get(producer.name) if producer is not None else report.input_shapes.get(node.inputs[0].name)
            out_shape = out_shapes.get(node.name)
            if not in_shape or not out_shape:
                continue
            spec = timing_spec(node, w, in_shape)
            if w.shape[2] * w.shape[3] == 1 and not (self.layers and node.name in self.layers):
                # A 1x1 conv split into two thin 1x1 convs often runs slower than its MAC count says
                # (ResNet-50 at macs=0.5 with every 1x1 a candidate: 0.74 of the MAC cut). Unnamed, one is
                # a candidate only under a measured budget, which takes a rank only where its timing pays.
                if self.mode not in MEASURED_MODES or spec is None or spec["stride"] != 1 or any(spec["pads"]):
                    skipped_pointwise += 1
                    continue
            layers.append(Layer(node, w, in_shape[2] * in_shape[3], out_shape[2] * out_shape[3], spec=spec))
        if skipped_pointwise and self.mode in MEASURED_MODES:
            self.note(f"left {skipped_pointwise} strided or padded 1x1 convolution(s) as they are: the timings cover "
                      "1x1 layers at stride 1 without padding (name one in --bottleneck-layers to factorise it)")
        elif skipped_pointwise:
            self.note(f"left {skipped_pointwise} 1x1 convolution(s) and fully-connected layer(s) as they are: split in "
                      "two they often run slower than their MACs say, so only macs= and time=, which time them, or "
                      "--bottleneck-layers take them")
        if grouped:
            # A grouped conv already has 1/groups of a dense conv's weights per output; its per-group
            # matrices are small, and a depthwise one (Cin/groups = 1) has no rank to cut.
            self.note(f"left {len(grouped)} grouped/depthwise convolution(s) as they are: only dense convolutions "
                      "are factorised")
        return layers


    def _replace(self, layer: Layer, r: int) -> None:
        node, graph = layer.node, layer.node.graph
        a = layer.vt[:r]  # (r, Cin)
        if layer.whiten_inv is not None:
            a = a @ layer.whiten_inv
        b = layer.u[:, :r] * layer.s[:r]  # (Cout*K*K, r)
        if layer.kind != "conv":
            self._replace_fully_connected(layer, r, a, b)
            return
        kh, kw = layer.weight.shape[2:]
        dtype = layer.weight.dtype
        a_val = add_initializer(graph, f"{node.name}_reduce_weight", a.reshape(r, layer.cin, 1, 1).astype(dtype))
        b_val = add_initializer(graph, f"{node.name}_expand_weight",
                                b.reshape(layer.cout, kh, kw, r).transpose(0, 3, 1, 2).astype(dtype))
        reduce = ir.node("Conv", [node.inputs[0], a_val], {"kernel_shape": [1, 1], "strides": [1, 1],
                                                           "pads": [0, 0, 0, 0]}, name=f"{node.name}_reduce")
        attrs = {a_.name: a_.value for a_ in node.attributes.values()}
        attrs["kernel_shape"] = [kh, kw]
        inputs = [reduce.outputs[0], b_val] + ([node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] is not None else [])
        expand = ir.node("Conv", inputs, attrs, name=f"{node.name}_expand")
        graph.insert_before(node, [reduce, expand])
        replace_value(node.outputs[0], expand.outputs[0])
        graph.remove(node, safe=True)

    def _replace_fully_connected(self, layer: Layer, r: int, a: np.ndarray, b: np.ndarray) -> None:
        """W (Cout x Cin) ~= B A: X -> X A^T (r wide) -> (X A^T) B^T, keeping Gemm's bias, alpha and beta on the
        second product, where they apply to the whole of X W^T."""
        node, graph = layer.node, layer.node.graph
        dtype = layer.weight.dtype
        if layer.kind == "gemm":
            a_val = add_initializer(graph, f"{node.name}_reduce_weight", a.astype(dtype))  # (r, Cin), transB=1
            b_val = add_initializer(graph, f"{node.name}_expand_weight", b.astype(dtype))  # (Cout, r), transB=1
            reduce = ir.node("Gemm", [node.inputs[0], a_val], {"transB": 1}, name=f"{node.name}_reduce")
            attrs = {k: v.value for k, v in node.attributes.items() if k in ("alpha", "beta")}
            bias = [node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] is not None else []
            expand = ir.node("Gemm", [reduce.outputs[0], b_val, *bias], {**attrs, "transB": 1},
                             name=f"{node.name}_expand")
        else:
            a_val = add_initializer(graph, f"{node.name}_reduce_weight", np.ascontiguousarray(a.T).astype(dtype))
            b_val = add_initializer(graph, f"{node.name}_expand_weight", np.ascontiguousarray(b.T).astype(dtype))
            reduce = ir.node("MatMul", [node.inputs[0], a_val], name=f"{node.name}_reduce")
            expand = ir.node("MatMul", [reduce.outputs[0], b_val], name=f"{node.name}_expand")
        graph.insert_before(node, [reduce, expand])
        replace_value(node.outputs[0], expand.outputs[0])
        graph.remove(node, safe=True)

    def _whiten(self, model: ir.Model, layers: list[Layer]) -> None:
        """C^(1/2) and C^(-1/2) of each layer's input channels, from calibration activations."""
        from ...calibration import load_calibration, layer_inputs

        data = load_calibration(self.calibration, model)
        acts = layer_inputs(model, [l.node.inputs[0].name for l in layers], data)
        unfitted = 0
        for l in layers:
            x = acts[l.node.inputs[0].name]  # (N, Cin, H, W), or (..., Cin) into a fully-connected layer
            flat = (x.transpose(1, 0, 2, 3).reshape(l.cin, -1) if l.kind == "conv" else x.reshape(-1, l.cin).T)
            if flat.shape[1] < l.cin:
                # Fewer input vectors than channels (an FC layer after a Flatten sees one per sample: VGG-16's
                # first has 25,088 inputs): the covariance is singular, says nothing about most directions,
                # and at that width would take 5 GB a matrix. Such a layer is fitted on its weights alone.
                unfitted += 1
                continue
            flat = flat.astype(np.float64)
            cov = flat @ flat.T / flat.shape[1]
            evals, evecs = np.linalg.eigh(cov)
            evals = np.maximum(evals, 1e-6 * max(float(evals.max()), 1e-12))
            l.whiten = (evecs * np.sqrt(evals)) @ evecs.T
            l.whiten_inv = (evecs / np.sqrt(evals)) @ evecs.T
        if unfitted:
            self.note(f"fitted {unfitted} layer(s) on their weights alone: the calibration data gives them fewer "
                      "input vectors than they have input channels")
