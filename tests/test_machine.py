"""deploykit.machine: the ceilings each number format is judged against."""

import torch

from deploykit.machine import cpu_flags, precision_ceilings


def test_torch_products_join_the_ceilings_at_the_asked_thread_count_and_leave_torch_as_it_was():
    torch.set_num_threads(2)
    ceilings = precision_ceilings(threads=1, size=256, seconds=0.1)
    assert torch.get_num_threads() == 2
    assert ceilings["fp32"]["torch"] > 0 and ceilings["fp32"]["onnxruntime"] > 0
    # Emulated bf16 would read as a (low) ceiling and make every bf16 artefact look near its limit.
    native_bf16 = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert ("torch" in ceilings.get("bf16", {})) == native_bf16

