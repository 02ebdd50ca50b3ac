"""Our batch-1 GEMV kernels (shared.quant.kernels) against the dequantized float64 reference, and the layers' dispatch.

Tolerance: the kernels multiply exactly and sum in fp32, so the error is fp32 summation error,
bounded here by ``1e-5 * sum_i |x_i * W_hat[o, i]|`` per output (measured errors are ~10x smaller).
"""
import pytest
import torch

from shared.quant import kernels
from shared.quant.weight_only import (
    Int4WeightOnlyLinear, Int8WeightOnlyLinear, dequantize_int4, quantize_int4, quantize_int8,
)

pytestmark = pytest.mark.skipif(not kernels.available(), reason="GEMV kernels did not build (no compiler)")

SHAPES = [(1, 64, 16), (1, 96, 37), (2, 160, 5), (3, 800, 51), (4, 768, 2304), (1, 3072, 768)]


def _check(y: torch.Tensor, x: torch.Tensor, w_hat: torch.Tensor, bias: torch.Tensor | None) -> None:
    ref = x.double() @ w_hat.double().t() + (0 if bias is None else bias.double())
    bound = 1e-5 * (x.double().abs() @ w_hat.double().abs().t()) + 1e-6
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert ((y.double() - ref).abs() <= bound).all(), float(((y.double() - ref).abs() / bound).max())


@pytest.mark.parametrize("rows,in_f,out_f", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_int8_gemv(rows, in_f, out_f, with_bias):
    # in_f not a multiple of 16 (96 is, 800 is not of 64; 37, 51, 5 outputs are odd) exercises every tail
    torch.manual_seed(rows * in_f + out_f)
    q, scale = quantize_int8(torch.randn(out_f, in_f))
    x, bias = torch.randn(rows, in_f), torch.randn(out_f) if with_bias else None
    _check(kernels.int8_gemv(x, q, scale, bias), x, q.float() * scale[:, None], bias)


@pytest.mark.parametrize("rows,in_f,out_f", SHAPES + [(2, 17, 9), (4, 33, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_f32_gemv(rows, in_f, out_f, with_bias):
    torch.manual_seed(rows * in_f + out_f + 1)
    w = torch.randn(out_f, in_f)
    x, bias = torch.randn(rows, in_f), torch.randn(out_f) if with_bias else None
    _check(kernels.f32_gemv(x, w, bias), x, w, bias)


def test_gemv_backend_uses_the_kernel_for_few_rows_and_torch_for_more(monkeypatch):
    from shared.engine.linear import GemvLinear
    torch.manual_seed(0)
    w, b = torch.randn(40, 96), torch.randn(40)
    layer = GemvLinear(w, b)
    calls = []
    real = kernels.f32_gemv
    monkeypatch.setattr(kernels, "f32_gemv", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for rows in (1, kernels.MAX_ROWS, kernels.MAX_ROWS + 3):
        x = torch.randn(rows, 96)
        torch.testing.assert_close(layer(x), x @ w.t() + b, atol=1e-4, rtol=1e-5)
    assert calls == [1, kernels.MAX_ROWS]  # the batch of MAX_ROWS + 3 went to torch


@pytest.mark.parametrize("in_f", [17, 33, 100])
def test_int8_gemv_ragged_inputs(in_f):
    torch.manual_seed(in_f)
    q, scale = quantize_int8(torch.randn(13, in_f))
    for rows in range(1, kernels.MAX_ROWS + 1):
        x = torch.randn(rows, in_f)
        _check(kernels.int8_gemv(x, q, scale, None), x, q.float() * scale[:, None], None)


@pytest.mark.parametrize("rows,in_f,out_f", [(1, 64, 16), (2, 128, 37), (3, 256, 5), (4, 768, 2304), (1, 3072, 51)])
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_int4_gemv(rows, in_f, out_f, group_size):
    if in_f % group_size:
        pytest.skip("group does not divide in_features")
    torch.manual_seed(rows + in_f + out_f + group_size)
    q, scales, zeros = quantize_int4(torch.randn(out_f, in_f), group_size)
    x, bias = torch.randn(rows, in_f), torch.randn(out_f)
    y = kernels.int4_gemv(x, kernels.repack_int4(q), scales, (zeros - 8 * scales).contiguous(), group_size, bias)
    _check(y, x, dequantize_int4(q, scales, zeros), bias)


def test_repack_int4_layout_block32(monkeypatch):
    monkeypatch.setattr(kernels, "int4_layout", lambda in_f: 32)
    q = torch.arange(32, dtype=torch.uint8).remainder(16).reshape(1, 32)
    packed = kernels.repack_int4(q)
    assert packed.shape == (1, 16)
    assert torch.equal(packed[0] & 15, q[0, :16]) and torch.equal(packed[0] >> 4, q[0, 16:])


def test_bad_inputs_are_refused():
    q, scale = quantize_int8(torch.randn(8, 32))
    with pytest.raises(RuntimeError, match="rows"):
        kernels.int8_gemv(torch.randn(kernels.MAX_ROWS + 1, 32), q, scale, None)
    with pytest.raises(RuntimeError, match="columns"):
        kernels.int8_gemv(torch.randn(1, 31), q, scale, None)


@pytest.mark.parametrize("rows", [1, 4, 5, 9])
def test_layers_route_few_rows_to_kernels_and_agree(rows):
    """1..MAX_ROWS rows take our kernel, more take torch's; both give the layer's dequantized product."""
    torch.manual_seed(rows)
    w, b, x = torch.randn(48, 128), torch.randn(48), torch.randn(rows, 128)
    for layer, tol in ((Int8WeightOnlyLinear.from_float(w, b, compute_dtype="float32"), 1e-4),
                       (Int4WeightOnlyLinear.from_float(w, b, group_size=32, compute_dtype="float32"), 1e-4),
                       (Int8WeightOnlyLinear.from_float(w, b), 5e-2),
                       (Int4WeightOnlyLinear.from_float(w, b, group_size=64), 5e-2)):
        ref = x @ layer.dequantize().t() + b
        torch.testing.assert_close(layer(x), ref, rtol=tol, atol=tol)
        if rows <= kernels.MAX_ROWS:  # the kernel path is fp32 whatever compute_dtype says: tight
            torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-4)


def test_kernels_can_be_disabled(monkeypatch):
    monkeypatch.setattr(kernels, "use_for", lambda x: False)
    w, x = torch.randn(16, 64), torch.randn(1, 64)
    layer = Int8WeightOnlyLinear.from_float(w, None)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().t(), rtol=5e-2, atol=5e-2)


def test_repack_int4_layout_superblock(monkeypatch):
    monkeypatch.setattr(kernels, "int4_layout", lambda in_f: 128)
    q = (torch.arange(128) % 16).to(torch.uint8).reshape(1, 128)
    words = kernels.repack_int4(q).view(torch.int32)[0].long() & 0xFFFFFFFF  # little-endian words
    for j in range(16):
        assert [(int(words[j]) >> (4 * k)) & 15 for k in range(8)] == [int(q[0, j + 16 * k]) for k in range(8)]


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def broken(*args, **kwargs):
        raise OSError("no compiler")

    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(cpp, "load", broken)
    with pytest.warns(RuntimeWarning, match="did not build"):
        assert not kernels.available()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not kernels.use_for(torch.randn(1, 8))  # no second warning
    w = torch.randn(16, 64)
    layer = Int8WeightOnlyLinear.from_float(w, None)  # the aten path still serves
    x = torch.randn(1, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().t(), rtol=5e-2, atol=5e-2)
