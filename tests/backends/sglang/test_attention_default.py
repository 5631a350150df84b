"""The engines' attention backend: SGLang's own pick unless it is FA3 on a Hopper GPU whose sgl-kernel lacks the
FA3 library; then triton for a BF16 KV cache and FlashInfer for an FP8 one; a user's choice always kept."""

import sys

import pytest

from async_rl.backends.sglang.attention_default import attention_override, fa3_installed

HOPPER, AMPERE = 9, 8


@pytest.mark.parametrize("kv_cache_dtype, backend", [("auto", "triton"), ("bf16", "triton"), ("fp8_e4m3", "flashinfer"),
                                                     ("fp8_e5m2", "flashinfer")])
def test_hopper_without_fa3_takes_the_faster_backend_for_its_kv_cache(kv_cache_dtype, backend):
    assert attention_override({"kv_cache_dtype": kv_cache_dtype}, HOPPER, has_fa3=False) == {"attention_backend": backend}


def test_no_kv_cache_dtype_is_a_bf16_cache():
    assert attention_override({}, HOPPER, has_fa3=False) == {"attention_backend": "triton"}


@pytest.mark.parametrize("gpu_major, has_fa3", [(HOPPER, True), (AMPERE, False), (None, False)])
def test_sglang_keeps_its_choice_where_fa3_is_there_or_not_its_pick(gpu_major, has_fa3):
    assert attention_override({"kv_cache_dtype": "fp8_e4m3"}, gpu_major, has_fa3) == {}


@pytest.mark.parametrize("flag", ["attention_backend", "prefill_attention_backend", "decode_attention_backend"])
def test_a_backend_the_user_names_is_kept(flag):
    assert attention_override({flag: "fa3"}, HOPPER, has_fa3=False) == {}


@pytest.fixture
def sgl_kernel(tmp_path, monkeypatch):
    """An sgl_kernel package directory first on the import path (this machine has no SGLang)."""
    package = tmp_path / "sgl_kernel"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sgl_kernel", raising=False)
    return package


def test_fa3_is_found_by_its_library_file(sgl_kernel):
    assert not fa3_installed()
    (sgl_kernel / "flash_ops.abi3.so").write_bytes(b"")
    assert fa3_installed()


def test_no_sgl_kernel_means_no_fa3(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert not fa3_installed()
