"""precision="auto": bf16 on CUDA and on CPUs with native bf16, fp32 on other CPUs."""

import pytest
import torch

import deft.core.device as dv

EPYC_ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"
ZEN2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize("text, native", [(EPYC_ZEN4, True), (SAPPHIRE, True), (ZEN2, False), ("", False)])
def test_cpu_flags_decide_native_bf16(text, native):
    assert bool(dv.cpu_flags(text) & dv.NATIVE_BF16_FLAGS) is native


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_follows_the_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(dv, "cpu_has_native_bf16", lambda: native)
    assert dv.autocast_dtype(torch.device("cpu"), "auto") is expected
    assert dv.autocast_dtype(torch.device("cpu"), "fp32") is None
    assert dv.autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    assert dv.autocast_dtype(torch.device("cuda"), "auto") is torch.bfloat16


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        dv.autocast_dtype(torch.device("cpu"), "fp16")

