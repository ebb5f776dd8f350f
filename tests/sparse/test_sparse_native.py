"""The native CPU kernels: building, caching, falling back, and agreeing with torch's kernels."""

import logging
import os
import stat

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from itop.sparse import CsrLayout, DenseGradSink, kernels, native, sparse_linear
from itop.sparse.native import native_kernels

needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """A loader that has not built anything yet, with its cache in ``tmp_path``."""
    loader = native._Loader()
    monkeypatch.setattr(native, "_LOADER", loader)
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    return loader


def _layer(out_f, in_f, density, seed):
    g = torch.Generator().manual_seed(seed)
    numel = out_f * in_f
    idx = torch.randperm(numel, generator=g)[: round(density * numel)].sort().values
    return CsrLayout(idx, (out_f, in_f)), torch.randn(idx.numel(), generator=g), g


def _run(backend, layout, values, bias, x, grad_out):
    """Forward and backward through one backend: output, both gradients, dense gradient."""
    y, xt = backend.forward(x, values, bias, layout)
    gx, gv, gt = backend.backward(grad_out, xt, values, layout, True, True)
    return y, gx, gv, torch.mm(gt, xt.t())


@needs_compiler
@settings(max_examples=30, deadline=None)
@given(out_f=st.integers(1, 150), in_f=st.integers(1, 150), batch=st.integers(0, 100),
       density=st.floats(0.0, 1.0), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_native_matches_torch_kernels(out_f, in_f, batch, density, bias, seed):
    # Batches that are not multiples of the 32-column tile, row counts that are not multiples
    # of the 64-row block, empty rows and columns, an empty batch.
    layout, values, g = _layer(out_f, in_f, density, seed)
    b = torch.randn(out_f, generator=g) if bias else None
    x = torch.randn(batch, in_f, generator=g)
    grad_out = torch.randn(batch, out_f, generator=g)
    got = _run(kernels.NativeCpuKernels(), layout, values, b, x, grad_out)
    want = _run(kernels.TorchKernels(), layout, values, b, x, grad_out)
    for name, a, e in zip(("output", "input grad", "values grad", "dense grad"), got, want, strict=True):
        assert a.shape == e.shape, name
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4, msg=name)


@needs_compiler
def test_results_do_not_depend_on_the_thread_count():
    layout, values, g = _layer(300, 200, 0.1, 0)
    x, grad_out = torch.randn(70, 200, generator=g), torch.randn(70, 300, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_run(kernels.NativeCpuKernels(), layout, values, None, x, grad_out))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


@needs_compiler
def test_sparse_linear_uses_native_kernels_for_float32_on_cpu():
    layout, values, _ = _layer(8, 8, 0.5, 1)
    assert kernels.kernel_backend(torch.zeros(2, 8), values, layout).name == "native"
    assert kernels.kernel_backend(torch.zeros(2, 8, dtype=torch.float64), values.double(),
                                  layout).name == "torch"


@needs_compiler
def test_build_is_cached_and_reused(fresh_loader, tmp_path, monkeypatch):
    assert native_kernels() is not None
    built = list((tmp_path / "cache").glob("*.so"))
    assert len(built) == 1
    assert "native C" in native.native_status()

    def no_build(*args):
        raise AssertionError("the cached library should have been loaded, not rebuilt")

    monkeypatch.setattr(native, "_LOADER", native._Loader())
    monkeypatch.setattr(native, "_build", no_build)
    assert native_kernels() is not None
    assert list((tmp_path / "cache").glob("*")) == built  # no temporary files left


@needs_compiler
def test_falls_back_to_the_next_flag_set_the_compiler_accepts(fresh_loader, tmp_path, monkeypatch):
    # A compiler that refuses -march=native (as some cross or old compilers do).
    real = native._compiler()
    wrapper = tmp_path / "cc-no-native"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = "-march=native" ] && '
                       '{ echo "error: unrecognized -march=native" >&2; exit 1; }; done\n'
                       f'exec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(wrapper))
    nk = native_kernels()
    assert nk is not None and "-march=native" not in nk.flags and "-fopenmp" in nk.flags


def test_without_a_compiler_torch_kernels_serve_and_one_warning_says_why(fresh_loader, monkeypatch,
                                                                       caplog):
    monkeypatch.setenv("CC", os.path.join(os.sep, "nonexistent", "cc"))
    layout, values, g = _layer(12, 9, 0.4, 2)
    x = torch.randn(5, 9, generator=g)
    with caplog.at_level(logging.WARNING, logger="itop.sparse.native"):
        assert kernels.kernel_backend(x, values, layout).name == "torch"
        y = sparse_linear(x, values, None, layout)
        sparse_linear(x, values, None, layout)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C compiler" in warnings[0].getMessage()
    assert native.native_status().startswith("torch.sparse (no C compiler")
    dense = torch.zeros(12 * 9)
    dense[layout_positions(layout)] = values
    torch.testing.assert_close(y, x @ dense.view(12, 9).t())


def test_switched_off_by_the_environment_without_a_warning(fresh_loader, monkeypatch, caplog):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    with caplog.at_level(logging.WARNING, logger="itop.sparse.native"):
        assert native_kernels() is None
    assert not caplog.records
    assert "disabled by $ITOP_NATIVE_KERNELS" in native.native_status()


def test_unwritable_cache_falls_back_with_the_fix_named(fresh_loader, monkeypatch, tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(native.ENV_CACHE, str(blocker / "sub"))  # a path under a regular file
    assert native_kernels() is None
    assert "ITOP_CACHE_DIR" in native.native_status()


@needs_compiler
def test_dense_gradient_of_padded_batches_is_exact():
    # The native backend pads the batch to 32 columns with zeros; RigL's dense gradient
    # g^T x must not see the padding.
    layout, values, g = _layer(20, 30, 0.2, 3)
    x, grad_out = torch.randn(33, 30, generator=g), torch.randn(33, 20, generator=g)
    sink = DenseGradSink()
    sink.wanted = True
    v = values.clone().requires_grad_()
    sparse_linear(x, v, None, layout, sink).backward(grad_out)
    torch.testing.assert_close(sink.take(), grad_out.t() @ x, atol=1e-5, rtol=1e-5)


def layout_positions(layout: CsrLayout) -> torch.Tensor:
    rows = torch.repeat_interleave(torch.arange(layout.shape[0]), layout.crow.diff().long())
    return rows * layout.shape[1] + layout.col.long()
