"""int8 under an accuracy budget: rank the quantized layers by the error each adds, and return the most harmful
to float until the result holds what is left of the budget (a mixin of QuantizeInt8Pass)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

RANK_SAMPLES = 16  # validation samples the layer ranking runs on
SENSITIVITY_GROUPS = 8  # runs of nodes, in graph order, whose harm is measured one validation run each
SHOWN_LAYERS = 20  # layer names listed in the report line (all of them are in kept_in_float)


class Int8BudgetSearch:
    """QuantizeInt8Pass's budget search; reads the pass's budget, context, notes and kept_in_float."""

    def _hold_budget(self, float_proto, quantized, base: list[str], quantize):
        """Return the most harmful layers to float until int8 costs at most what is left of the budget.

        Cost stays small on models with hundreds of layers: the ranges are calibrated once (cached), the
        layers are ranked two ways, by the error each adds on a few validation samples (its output's error
        against the float model, less the largest error among its inputs) and by the measured harm of
        SENSITIVITY_GROUPS runs of them in graph order, and the number of top-ranked layers to keep in
        float is found by bisection in each order: SENSITIVITY_GROUPS + about 2 x log2(layers)
        quantize-and-validate runs.
        """
        from ..errors import VerificationError
        from ..validation import AccuracyJudge

        judge = AccuracyJudge.for_budget(float_proto, self.context.validation, self.budget)
        if judge is None:
            self.note("no accuracy budget: the first output has no class axis to measure top-1 agreement on "
                      "(give --validate data with labels, or judge the deviation with --max-error)")
            return quantized
        feeds = self.context.validation.feeds
        baseline, what, drop_of = judge.baseline, judge.what, judge.drop_of
        allowance = self.budget.left
        full_drop = drop_of(quantized)
        self.note(f"accuracy budget: {what} {baseline:.2f}% in float, {baseline - full_drop:.2f}% with every layer "
                  f"in int8 (drop {full_drop:.2f} points; {self._budget_words(allowance)}) on "
                  f"{self.context.validation.source}")
        thin = judge.thin_data_note(allowance)
        if thin:
            self.note(thin)
        if full_drop <= allowance:
            self.budget.spent += max(full_drop, 0.0)
            return quantized
        by_error = self._rank_layers(quantized, base, feeds, quantize)
        # A second order, measured: the quantized nodes cut into SENSITIVITY_GROUPS runs in graph order,
        # each quantized alone (the rest in float) and validated once; the most harmful runs go first,
        # each in local-error order. Local error alone misses nodes whose small error lands on the decision
        # (the PP-OCR detector's first convolutions: quantized alone, its first eighth costs as much as all).
        positions = {n.name: i for i, n in enumerate(quantized.graph.node)}
        in_graph_order = sorted(by_error, key=lambda n: positions.get(n, len(positions)))
        groups = [list(g) for g in np.array_split(np.array(in_graph_order, dtype=object),
                                                    min(SENSITIVITY_GROUPS, len(in_graph_order))) if len(g)]
        harm = []
        for group in groups:
            members = set(group)
            harm.append(drop_of(quantize(base + [n for n in in_graph_order if n not in members])))
        local_rank = {n: i for i, n in enumerate(by_error)}
        by_group = [n for gi in sorted(range(len(groups)), key=lambda i: -harm[i])
                    for n in sorted(groups[gi], key=local_rank.get)]
        self.note("sensitivity of the quantized nodes in graph order, " + f"{len(groups)} runs of about "
                  f"{len(in_graph_order) // max(len(groups), 1)}, each alone in int8 (drop in points): "
                  + ", ".join(f"{h:.2f}" for h in harm))
        tried = len(groups)
        best_k, best_model, ranking = None, None, by_error
        for candidate_order in (by_group, by_error):
            lo, hi, found = 0, len(candidate_order) if best_k is None else best_k, None
            while lo < hi:  # smallest k whose top-k layers in float hold the budget
                k = (lo + hi) // 2
                candidate = quantize(base + candidate_order[:k])
                tried += 1
                if drop_of(candidate) <= allowance:
                    hi, found = k, candidate
                else:
                    lo = k + 1
            if found is not None and (best_k is None or hi < best_k):
                best_k, best_model, ranking = hi, found, candidate_order
        best, hi = best_model, best_k
        if best is None:
            candidate = quantize(base + by_error)
            tried += 1
            if drop_of(candidate) > allowance:
                raise VerificationError(
                    f"int8 cannot hold --max-accuracy-drop ({self._budget_words(allowance)}): even with all {len(by_error)} "
                    f"quantized layers in float, {what} drops by {drop_of(candidate):.2f} points; nothing was written")
            best, hi, ranking = candidate, len(by_error), by_error
        self.kept_in_float = ranking[:hi]
        final_drop = drop_of(best)
        self.budget.spent += max(final_drop, 0.0)
        self.note(f"kept {hi} of {len(ranking)} layer(s) in float to hold the budget ({tried} trial quantization(s)): "
                  f"{what} {baseline - final_drop:.2f}% (drop {final_drop:.2f} points)")
        if self.kept_in_float:
            shown = self.kept_in_float[:SHOWN_LAYERS]
            more = len(self.kept_in_float) - len(shown)
            self.note("kept in float, most harmful first: " + ", ".join(shown) + (f" and {more} more" if more else ""))
        return best

    def _budget_words(self, allowance: float) -> str:
        """The budget int8 holds: the whole one, or what a bottleneck before it left."""
        if abs(allowance - self.budget.total) < 1e-9:
            return f"budget {allowance:g}"
        return f"{allowance:.2f} left of budget {self.budget.total:g} after the bottleneck"

    @staticmethod
    def _rank_layers(quantized, base: list[str], feeds, quantize) -> list[str]:
        """The quantized graph's compute nodes (those fed by DequantizeLinear), most harmful first.

        Names come from the quantized graph, not the input: ORT's quantizer first optimises the model
        (fusing HardSwish chains, renaming tensors), and excludes nodes by those names. The float
        reference is the same optimised graph with every candidate excluded (no Q/DQ at all), so each
        tensor has its float twin by name. A node's harm is the relative error of its output, less the
        largest error among its inputs: the error it adds.
        """
        import numpy as np

        from ..calibration import layer_inputs

        producer = {o: n for n in quantized.graph.node for o in n.output}

        def source(name):  # the float tensor behind a DequantizeLinear output
            node = producer.get(name)
            if node is not None and node.op_type == "DequantizeLinear":
                q = producer.get(node.input[0])
                return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else node.input[0]
            return name

        nodes = [n for n in quantized.graph.node if n.name and n.name not in base
                 and n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                 and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)]
        twin = quantize(base + [n.name for n in nodes])
        float_names = {o for n in twin.graph.node for o in n.output} | {i.name for i in twin.graph.input}
        watched = list(dict.fromkeys(t for n in nodes for t in [n.output[0]] + [source(i) for i in n.input]
                                     if t in float_names))
        sample = {k: v[:RANK_SAMPLES] for k, v in feeds.items()}
        float_values = layer_inputs(ir.from_proto(twin), watched, sample) if watched else {}
        int8_values = layer_inputs(ir.from_proto(quantized), watched, sample) if watched else {}

        def error(name):
            if name not in float_values or name not in int8_values or float_values[name].size == 0:
                return 0.0  # not watched, or an empty tensor (a shape computation's): nothing to err on
            ref = float_values[name].astype(np.float64)
            return float(np.abs(int8_values[name] - ref).max() / max(np.abs(ref).max(), 1e-12))

        added = {n.name: error(n.output[0]) - max((error(source(i)) for i in n.input), default=0.0) for n in nodes}
        return sorted(added, key=added.get, reverse=True)
