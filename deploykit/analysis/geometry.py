"""Geometry lint: layers whose (W - F + 2P)/S + 1 is not an integer."""

from __future__ import annotations

from .ops import AXIS_NAMES, CONV_OPS, POOL_OPS


def geometry_warnings(node, name) -> list[str]:
    """The notes' constraint: (W - F + 2P)/S + 1 must be an integer, or rows/columns are dropped."""
    op = node.op_type
    if op not in CONV_OPS | POOL_OPS:
        return []
    attrs = node.attributes
    auto_pad = attrs.get("auto_pad")
    if auto_pad is not None and auto_pad.value not in ("NOTSET", b"NOTSET"):
        return []
    ceil_mode = attrs.get("ceil_mode")
    if ceil_mode is not None and ceil_mode.value:
        return []  # ceil mode pads the last window instead of dropping input
    x = node.inputs[0]
    if x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return []
    spatial = [int(d) for d in x.shape[2:]]
    rank = len(spatial)
    if "kernel_shape" in attrs:
        kernel = list(attrs["kernel_shape"].value)
    elif op in CONV_OPS and node.inputs[1] is not None and node.inputs[1].shape is not None:
        kernel = [int(d) for d in node.inputs[1].shape[2:]]
    else:
        return []
    strides = list(attrs["strides"].value) if "strides" in attrs else [1] * rank
    dilations = list(attrs["dilations"].value) if "dilations" in attrs else [1] * rank
    pads = list(attrs["pads"].value) if "pads" in attrs else [0] * (2 * rank)
    problems = []
    for axis in range(rank):
        w, f, s = spatial[axis], (kernel[axis] - 1) * dilations[axis] + 1, strides[axis]
        p_begin, p_end = pads[axis], pads[axis + rank]
        span = w - f + p_begin + p_end
        if span >= 0 and span % s:
            pad_text = f"2·{p_begin}" if p_begin == p_end else f"({p_begin}+{p_end})"
            # The positions past the last window come off the end of the padded input: the
            # trailing padding first, then real input.
            lost = max(0, span % s - p_end)
            problems.append((axis, f"({w} − {f} + {pad_text})/{s} + 1 = {span / s + 1:g}", lost))
    if not problems:
        return []
    names = AXIS_NAMES.get(rank, [f"axis {i}" for i in range(rank)])
    same = len(problems) == rank and len({(text, lost) for _, text, lost in problems}) == 1
    groups = [([names[a] for a, _, _ in problems], problems[0][1], problems[0][2])] if same else \
        [([names[a]], text, lost) for a, text, lost in problems]
    out = []
    for axes, text, lost in groups:
        unit = "rows/columns" if len(axes) > 1 else {"height": "rows", "width": "columns"}.get(axes[0], "elements")
        effect = (f"the last {lost} input {unit} are never seen" if lost else
                  "only trailing zero padding is skipped, no input is lost")
        out.append(f"{name} ({op}) does not tile its input {' and '.join(axes)}: "
                   f"(W − F + 2P)/S + 1 = {text}, not an integer; {effect}")
    return out
