"""Our batch-1 GEMV kernels (shared.engine.kernels) against the dequantized float64 reference, and the layers' dispatch.

Tolerance: the kernels multiply exactly and sum in fp32, so the error is fp32 summation error,
bounded here by ``1e-5 * sum_i |x_i * W_hat[o, i]|`` per output (measured errors are ~10x smaller).
"""
import pytest
import torch

from shared.engine import kernels
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
    calls = []
    real_op = kernels.linear_op

    def counting_op(*args, **kwargs):
        op = real_op(*args, **kwargs)
        return lambda x: calls.append(x.shape[0]) or op(x)

    monkeypatch.setattr(kernels, "linear_op", counting_op)
    layer = GemvLinear(w, b)
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
    monkeypatch.setattr(kernels, "int4_layout", lambda in_f, int8_activations=False: 32)
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
    int8_x = kernels.has_int8_activations()  # int4 in bfloat16 then rounds x to int8 at <= MAX_ROWS rows
    for layer, tol, exact_kernel in ((Int8WeightOnlyLinear.from_float(w, b, compute_dtype="float32"), 1e-4, True),
                                     (Int4WeightOnlyLinear.from_float(w, b, group_size=32, compute_dtype="float32"),
                                      1e-4, True),
                                     (Int8WeightOnlyLinear.from_float(w, b), 5e-2, True),
                                     (Int4WeightOnlyLinear.from_float(w, b, group_size=64), 5e-2, not int8_x)):
        ref = x @ layer.dequantize().t() + b
        if not exact_kernel and rows <= kernels.MAX_ROWS:  # x rounded to int8 per 32 inputs: ~1% of |y|
            tol = 0.05 * ref.abs().max().item()
        torch.testing.assert_close(layer(x), ref, rtol=tol, atol=tol)
        if rows <= kernels.MAX_ROWS and exact_kernel:  # the fp32 kernel paths: tight
            torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-4)


def test_kernels_can_be_disabled(monkeypatch):
    monkeypatch.setattr(kernels, "fits", lambda x: False)
    w, x = torch.randn(16, 64), torch.randn(1, 64)
    layer = Int8WeightOnlyLinear.from_float(w, None)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().t(), rtol=5e-2, atol=5e-2)


def test_repack_int4_layout_superblock(monkeypatch):
    monkeypatch.setattr(kernels, "int4_layout", lambda in_f, int8_activations=False: 128)
    q = (torch.arange(128) % 16).to(torch.uint8).reshape(1, 128)
    words = kernels.repack_int4(q).view(torch.int32)[0].long() & 0xFFFFFFFF  # little-endian words
    for j in range(16):
        assert [(int(words[j]) >> (4 * k)) & 15 for k in range(8)] == [int(q[0, j + 16 * k]) for k in range(8)]


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def broken(*args, **kwargs):
        raise OSError("no compiler")

    from shared.engine import native
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(cpp, "load", broken)
    with pytest.warns(RuntimeWarning, match="did not build"):
        assert not kernels.available()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not kernels.available()  # no second warning
        assert kernels.linear_op("f32", torch.zeros(2, 2)) is None  # layers built now keep torch's kernels
    w = torch.randn(16, 64)
    layer = Int8WeightOnlyLinear.from_float(w, None)  # the aten path still serves
    x = torch.randn(1, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().t(), rtol=5e-2, atol=5e-2)


def _x_rounded_to_int8(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the int8-activation kernel sees it: per 32 inputs, round(x * 127 / max|x|) * max|x| / 127."""
    blocks = x.double().reshape(x.shape[0], -1, 32)
    step = blocks.abs().amax(-1, keepdim=True) / 127
    return (torch.round(blocks / torch.where(step > 0, step, 1)) * step).reshape(x.shape)


@pytest.mark.skipif(not kernels.has_int8_activations(), reason="the int4 x int8 kernel needs AVX512-VNNI")
@pytest.mark.parametrize("rows,in_f,out_f", [(1, 64, 16), (2, 96, 37), (3, 256, 5), (4, 768, 2304),
                                             (1, 800, 51), (1, 3072, 768)])
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_int4_q8_gemv(rows, in_f, out_f, group_size):
    """The int8-activation kernel computes sum_i s (q_i - 8) x8_i + zero x_i exactly up to fp32 summation,
    x8 being x rounded per 32 inputs (so the zero term uses the exact x); 96 and 800 leave a partial
    128-input span, 256-groups cross spans."""
    if in_f % group_size:
        pytest.skip("group does not divide in_features")
    torch.manual_seed(rows + in_f + out_f + group_size)
    q, scales, zeros = quantize_int4(torch.randn(out_f, in_f), group_size)
    x, bias = torch.randn(rows, in_f), torch.randn(out_f)
    scale_zero = torch.stack((scales, zeros), dim=-1).to(torch.bfloat16).contiguous()
    y = kernels.int4_q8_gemv(x, kernels.repack_int4(q, int8_activations=True), scale_zero, group_size, bias)
    s = scales.double().repeat_interleave(group_size, 1)
    z = zeros.double().repeat_interleave(group_size, 1)
    terms = [_x_rounded_to_int8(x) @ (s * q.double()).t(), -8 * x.double() @ s.t(), x.double() @ z.t()]
    ref = sum(terms) + bias.double()
    bound = 1e-5 * sum(t.abs() for t in terms) + 1e-5
    assert ((y.double() - ref).abs() <= bound).all(), float(((y.double() - ref).abs() / bound).max())
    # and against the exact product: off by at most the activations' rounding (half a step per input)
    exact = x.double() @ dequantize_int4(q, scales, zeros).double().t() + bias.double()
    half_step = (x.double() - _x_rounded_to_int8(x)).abs().reshape(rows, -1, 32).amax(-1).repeat_interleave(32, 1)
    assert ((y.double() - exact).abs() <= half_step @ (s * q.double()).abs().t() + bound).all()


@pytest.mark.skipif(not kernels.has_int8_activations(), reason="the int4 x int8 kernel needs AVX512-VNNI")
def test_int4_layer_rounds_activations_only_in_bfloat16():
    torch.manual_seed(5)
    w, x = torch.randn(64, 256), torch.randn(1, 256)
    fast = Int4WeightOnlyLinear.from_float(w, None, group_size=32)
    exact = Int4WeightOnlyLinear.from_float(w, None, group_size=32, compute_dtype="float32")
    ref = x @ exact.dequantize().t()
    torch.testing.assert_close(exact(x), ref, rtol=1e-5, atol=1e-4)
    err = (fast(x) - ref).abs().max().item()
    assert 1e-4 < err < 0.05 * ref.abs().max().item()  # int8 rounding of x shows, and stays small
