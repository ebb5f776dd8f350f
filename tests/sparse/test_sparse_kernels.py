"""The sparse kernels against dense masked execution: forward, gradients, dense gradient.

Every test runs once per kernel backend (the native C kernels and torch's), so both stay
equivalent to ``F.linear`` on a dense masked weight."""

import pytest
import torch
from _sparse_threads import one_thread  # noqa: F401  (the fixture)
from hypothesis import given, settings
from hypothesis import strategies as st

from itop.sparse import CsrLayout, DenseGradSink, kernels, native_kernels, sparse_linear

pytestmark = pytest.mark.usefixtures("one_thread", "backend")


@pytest.fixture(params=["native", "torch"])
def backend(request, monkeypatch):
    """Only this backend (and torch's for what it does not support, e.g. float64)."""
    if request.param == "native" and native_kernels() is None:
        pytest.skip("native kernels unavailable on this machine (no C compiler)")
    chosen = [b for b in kernels.BACKENDS if b.name == request.param]
    monkeypatch.setattr(kernels, "BACKENDS", [*chosen, kernels.TorchKernels()])
    return request.param

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _case(out_f, in_f, batch, density, dtype, bias, seed):
    g = torch.Generator().manual_seed(seed)
    numel = out_f * in_f
    nnz = round(density * numel)
    idx = torch.randperm(numel, generator=g)[:nnz].sort().values
    values = torch.randn(nnz, generator=g, dtype=dtype)
    dense = torch.zeros(numel, dtype=dtype)
    dense[idx] = values
    b = torch.randn(out_f, generator=g, dtype=dtype) if bias else None
    x = torch.randn(batch, in_f, generator=g, dtype=dtype)
    grad_out = torch.randn(batch, out_f, generator=g, dtype=dtype)
    return idx, values, dense.view(out_f, in_f), b, x, grad_out


def _check(out_f, in_f, batch, density, dtype, bias, seed):
    idx, values, w, b, x, grad_out = _case(out_f, in_f, batch, density, dtype, bias, seed)
    layout = CsrLayout(idx, (out_f, in_f))
    sink = DenseGradSink()
    sink.wanted = True
    vs = values.clone().requires_grad_()
    bs = b.clone().requires_grad_() if bias else None
    xs = x.clone().requires_grad_()
    ys = sparse_linear(xs, vs, bs, layout, sink)
    ys.backward(grad_out)
    wd = w.clone().requires_grad_()
    bd = b.clone().requires_grad_() if bias else None
    xd = x.clone().requires_grad_()
    yd = torch.nn.functional.linear(xd, wd, bd)
    yd.backward(grad_out)
    tol = TOL[dtype]
    assert ys.shape == yd.shape and ys.dtype == dtype
    torch.testing.assert_close(ys, yd, atol=tol, rtol=tol)
    torch.testing.assert_close(xs.grad, xd.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(vs.grad, wd.grad.reshape(-1)[idx], atol=tol, rtol=tol)
    if bias:
        torch.testing.assert_close(bs.grad, bd.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(sink.take(), wd.grad, atol=tol, rtol=tol)
    assert sink.grad is None


@settings(max_examples=40, deadline=None)
@given(out_f=st.integers(1, 37), in_f=st.integers(1, 41), batch=st.integers(1, 9),
       density=st.floats(0.0, 1.0), dtype=st.sampled_from([torch.float32, torch.float64]),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_matches_dense_masked_linear(out_f, in_f, batch, density, dtype, bias, seed):
    _check(out_f, in_f, batch, density, dtype, bias, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(784, 300), (10, 4096), (1, 1), (3, 1000)])
def test_odd_and_wide_shapes_batch_1_and_128(shape, dtype):
    for batch in (1, 128):
        _check(shape[0], shape[1], batch, 0.05, dtype, True, seed=batch)


def test_empty_layer_gives_the_bias():
    layout = CsrLayout(torch.empty(0, dtype=torch.long), (4, 6))
    v = torch.empty(0, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    x = torch.randn(3, 6, requires_grad=True)
    y = sparse_linear(x, v, b, layout)
    assert torch.equal(y, b.expand(3, 4))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(3, 6)) and v.grad.shape == (0,)


def test_leading_dimensions_are_flattened_and_restored():
    idx, values, w, b, _, _ = _case(8, 5, 1, 0.5, torch.float64, True, 3)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    y = sparse_linear(x, values, b, CsrLayout(idx, (8, 5)))
    assert y.shape == (2, 3, 8)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b))


def test_gradcheck_fp64():
    idx, values, _, b, x, _ = _case(5, 4, 3, 0.6, torch.float64, True, 7)
    layout = CsrLayout(idx, (5, 4))
    args = (x.requires_grad_(), values.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, v, b: sparse_linear(x, v, b, layout), args)


def test_dense_gradient_only_when_wanted_and_accumulated():
    idx, values, w, _, x, grad_out = _case(6, 7, 4, 0.3, torch.float64, False, 11)
    layout = CsrLayout(idx, (6, 7))
    sink = DenseGradSink()
    v = values.clone().requires_grad_()
    sparse_linear(x, v, None, layout, sink).backward(grad_out)
    assert sink.grad is None  # not wanted: no dense product
    sink.wanted = True
    for _ in range(2):  # two micro-batches accumulate, as .grad does
        sparse_linear(x, v, None, layout, sink).backward(grad_out)
    torch.testing.assert_close(sink.take(), 2 * grad_out.t() @ x)


def test_layout_structure_of_matrix_and_transpose():
    idx, values, w, _, _, _ = _case(9, 13, 1, 0.4, torch.float64, False, 5)
    layout = CsrLayout(idx, (9, 13))
    assert torch.equal(layout.matrix(values).to_dense(), w)
    assert torch.equal(layout.transposed(values).to_dense(), w.t())
    assert layout.nnz == idx.numel()


def test_no_nan_leak_from_weights_into_weight_gradient_mask():
    # sampled_addmm with beta=0 does not clear NaN inputs; the kernel samples with zeros.
    idx, values, _, _, x, grad_out = _case(4, 4, 2, 0.5, torch.float32, False, 2)
    v = values.clone().requires_grad_()
    y = sparse_linear(x, v, None, CsrLayout(idx, (4, 4)))
    y.backward(grad_out)
    assert torch.isfinite(v.grad).all()
