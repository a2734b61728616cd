"""Bake ONNX Runtime's own CPU layout into the model (opt-in: `--ort-layout`).

At ORT_ENABLE_ALL, ONNX Runtime rewrites a CNN into its blocked NCHWc layout (com.microsoft.nchwc
ops: convolutions that read channel blocks sized to the machine's vector width). That, not the
fusions, is where its speed over the BASIC/EXTENDED levels comes from (1.45-1.75x here). This pass
runs ORT's optimiser once and keeps the graph it produced, so the artefact runs at full speed even
in a session whose graph optimisations are disabled, and loads without re-optimising.

The result is specific to the CPU it was built on (the block size follows AVX2 or AVX-512): the
pass records the CPU's vector extensions in the model's metadata, and Engine refuses to load the
model on a CPU that lacks one of them, saying how to rebuild.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx_ir as ir

from .base import RebuildPass

from ..machine import META_CPU, cpu_flags  # noqa: F401  (re-exported: the runtime checks them)

META_ORT = "deploykit.ort_layout.onnxruntime"


class OrtLayoutPass(RebuildPass):
    name = "ort-layout"
    exact = True
    preserves_accounting = True  # same layers and weights, in ORT's own op set

    @classmethod
    def from_options(cls, options, budget=None):
        return cls() if options.ort_layout else None

    def rebuild(self, model: ir.Model) -> ir.Model:
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "ort.onnx"
            onnx.save_model(ir.to_proto(model), str(src))
            from ..ort_session import new_session

            new_session(src, optimization="all", save_optimized_to=dst)
            baked = onnx.load(str(dst))
        kinds = sorted({n.op_type for n in baked.graph.node if n.domain == "com.microsoft.nchwc"})
        flags = sorted(cpu_flags())
        new = ir.from_proto(baked)
        new.metadata_props[META_CPU] = ",".join(flags)
        new.metadata_props[META_ORT] = ort.__version__
        self.note(f"baked ONNX Runtime {ort.__version__}'s CPU layout: {len(baked.graph.node)} nodes, NCHWc ops "
                  f"{', '.join(kinds) or 'none'}; built for a CPU with {', '.join(flags) or 'no listed extensions'} "
                  "(Engine refuses it on a CPU without them)")
        return new
