"""The accounting's result (per layer, totals, warnings) and its text form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..shapes import format_shape


@dataclass
class Layer:
    name: str
    op: str
    output_shape: list[int]
    params: int
    macs: int
    activation_elements: int
    activation_bytes: int
    # True when the output reuses its input's memory (a view or an in-place activation).
    aliases_input: bool = False


@dataclass
class Totals:
    params: int
    param_bytes: int
    macs: int
    activation_elements: int
    activation_bytes: int
    peak_activation_bytes: int


@dataclass
class Report:
    model: str
    input_shapes: dict[str, list[int]]
    layers: list[Layer]
    totals: Totals
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input_shapes": self.input_shapes,
            "layers": [asdict(layer) for layer in self.layers],
            "totals": asdict(self.totals),
            "warnings": self.warnings,
        }




def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _human_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def format_report(report: Report) -> str:
    """The table `deploykit inspect` prints."""
    headers = ["name", "op", "output shape", "params", "MACs", "act. elems", "act. bytes"]
    rows = []
    for layer in report.layers:
        rows.append([
            layer.name, layer.op, format_shape(layer.output_shape), f"{layer.params:,}", f"{layer.macs:,}",
            f"{layer.activation_elements:,}" + ("*" if layer.aliases_input else ""),
            _human_bytes(layer.activation_bytes),
        ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    right = {3, 4, 5, 6}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    t = report.totals
    inputs = ", ".join(f"{k} {format_shape(v)}" for k, v in report.input_shapes.items())
    out = [f"model: {report.model}  (input {inputs})", line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out += [
        "",
        f"parameters:            {t.params:,} ({_human_bytes(t.param_bytes)})",
        f"MACs:                  {t.macs:,} ({_human_count(t.macs)})",
        f"activations, all kept: {t.activation_elements:,} elements ({_human_bytes(t.activation_bytes)}), input included"
        " — what training keeps",
        f"peak live activations: {_human_bytes(t.peak_activation_bytes)} — what inference needs when each tensor is "
        "freed after its last use",
    ]
    if any(layer.aliases_input for layer in report.layers):
        out.append("* reuses its input's memory (a view or an in-place activation): not counted again in the totals")
    for w in report.warnings:
        out.append(f"warning: {w}")
    return "\n".join(out)
