"""Native CPU kernels of sparse execution, compiled from C on first use.

Why: torch's CPU CSR product runs at 20-45 GFLOP/s on the reference machine (2 cores,
AVX-512), a fifth of what the dense GEMM reaches, and the layer needs a transpose of its input
and of its output around it, so sparse inference fell short of its targets (issue #12). The C
kernels in ``csrc/sparse_cpu.c`` keep 32 batch columns per active weight in vector registers
and write the row-major output directly: 65-105 GFLOP/s on the same machine with the
transposes included, 2.2-2.9x the torch layer's forward, 1.4-2.7x its input gradient, 1.2-1.6x
its weight gradient (``benchmarks/bench_sparse.py --part kernels``, ``docs/performance.md``).

How: the source ships with the package and is compiled once per machine with the system C
compiler (``$CC``, else ``cc``/``gcc``/``clang``) as ``-O3 -march=native -fopenmp``, falling back
to fewer flags when the compiler refuses one. The shared library is cached under
``$ITOP_CACHE_DIR`` (default ``$XDG_CACHE_HOME/itop`` or ``~/.cache/itop``), keyed by the
source, the flags, the compiler's version and the CPU's identity, so a home directory shared
by different machines never loads code built for another CPU. It is loaded with :mod:`ctypes`
after torch, so its OpenMP calls resolve to the OpenMP runtime torch already loaded (one
thread pool, sized by ``torch.get_num_threads()``). A self-check against a dense product runs
before first use.

When no compiler is found, the build fails, the self-check fails, or ``ITOP_NATIVE_KERNELS=0``
is set, sparse execution uses torch's kernels (same results within float rounding, slower),
and one warning says why. Nothing else depends on this module: on other devices (CUDA) and
for float64 the torch kernels run.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["NativeKernels", "native_kernels", "native_status"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "sparse_cpu.c"
#: Must match ``itop_abi_version()`` in the C source.
ABI_VERSION = 1
#: Set to ``0`` (or ``false``/``off``) to use torch's kernels only.
ENV_SWITCH = "ITOP_NATIVE_KERNELS"
ENV_CACHE = "ITOP_CACHE_DIR"
#: Tried in order; the first set the compiler accepts is used.
FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3",),
)
COMPILE_TIMEOUT_S = 120

_P = ctypes.c_void_p
_I = ctypes.c_int


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeKernels:
    """The loaded C kernels, called on contiguous CPU tensors (float32 values, int32 indices).

    Activations are handed over *transposed and padded*: ``(features, ld)`` with ``ld`` the
    batch rounded up to :attr:`tile` and zeros in the padding columns (:meth:`transpose_pad`).
    """

    def __init__(self, lib: ctypes.CDLL, path: Path, flags: tuple[str, ...]) -> None:
        self.path = path
        self.flags = flags
        self._lib = lib
        lib.itop_transpose_pad.argtypes = [_I, _I, _I, _P, _P, _I]
        lib.itop_spmm.argtypes = [_I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _I]
        lib.itop_sddmm.argtypes = [_I, _I, _P, _P, _P, _P, _P, _I]
        for name in ("itop_transpose_pad", "itop_spmm", "itop_sddmm"):
            getattr(lib, name).restype = None
        self.tile = int(lib.itop_tile())
        self.openmp = bool(lib.itop_openmp())

    def describe(self) -> str:
        threads = f"OpenMP, {torch.get_num_threads()} threads" if self.openmp else "1 thread"
        return f"native C ({' '.join(self.flags)}; {threads})"

    def padded(self, n: int) -> int:
        """The batch ``n`` rounded up to a multiple of :attr:`tile` (at least one tile)."""
        return max(1, -(-n // self.tile)) * self.tile

    def transpose_pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, f)`` row-major -> ``(f, padded(n))`` with zero padding columns."""
        n, f = x.shape
        ld = self.padded(n)
        t = torch.empty((f, ld), dtype=x.dtype)
        self._lib.itop_transpose_pad(n, f, ld, _ptr(x), _ptr(t), torch.get_num_threads())
        return t

    def spmm(self, n: int, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
             perm: torch.Tensor | None, t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``Y (n, r) = (A tᵀ)ᵀ + bias`` for the CSR matrix ``A`` (``r`` rows; its values are
        ``values[perm]`` when ``perm`` is given, ``values`` otherwise) and ``t = transpose_pad(X)``."""
        r = crow.numel() - 1
        y = torch.empty((n, r), dtype=t.dtype)
        if n:
            self._lib.itop_spmm(n, r, t.shape[1], _ptr(crow), _ptr(col), _ptr(values), _ptr(perm),
                                _ptr(t), _ptr(bias), _ptr(y), torch.get_num_threads())
        return y

    def sddmm(self, crow: torch.Tensor, col: torch.Tensor, g: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
        """``dv[p] = Σ_b g[row(p), b] t[col(p), b]`` for every stored position ``p``."""
        dv = torch.empty(col.numel(), dtype=t.dtype)
        if col.numel():
            self._lib.itop_sddmm(crow.numel() - 1, t.shape[1], _ptr(crow), _ptr(col), _ptr(g),
                                 _ptr(t), _ptr(dv), torch.get_num_threads())
        return dv


def _cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "itop"


def _compiler() -> str | None:
    env = os.environ.get("CC")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_identity() -> str:
    """What decides which instructions ``-march=native`` may use."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cc: str, source: bytes, flags: tuple[str, ...], target: Path) -> str | None:
    """Compile to a temporary file beside ``target`` and rename it in place (atomic, so
    concurrent processes of one job never load a half-written library). Returns the compiler's
    complaint, or ``None`` on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, "-fPIC", "-shared", "-x", "c", "-", "-o", tmp],
                              input=source, capture_output=True, timeout=COMPILE_TIMEOUT_S)
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else f"exit status {proc.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _self_check(kernels: NativeKernels) -> str | None:
    """A small layer through all three kernels against dense products; ``None`` when right."""
    g = torch.Generator().manual_seed(0)
    n, f, r = 37, 45, 70  # a partial batch tile and partial row blocks
    mask = torch.rand(r, f, generator=g) < 0.3
    w = torch.randn(r, f, generator=g) * mask
    x = torch.randn(n, f, generator=g)
    gy = torch.randn(n, r, generator=g)
    bias = torch.randn(r, generator=g)
    rows, cols = mask.nonzero(as_tuple=True)
    crow = torch.zeros(r + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=r), 0)
    col = cols.to(torch.int32)
    values = w[rows, cols].contiguous()
    order = torch.sort(cols, stable=True).indices
    t_crow = torch.zeros(f + 1, dtype=torch.int32)
    t_crow[1:] = torch.cumsum(torch.bincount(cols, minlength=f), 0)
    t_col = rows[order].to(torch.int32)
    t_perm = order.to(torch.int32)
    xt, gt = kernels.transpose_pad(x), kernels.transpose_pad(gy)
    checks = {
        "forward": (kernels.spmm(n, crow, col, values, None, xt, bias), x @ w.t() + bias),
        "input gradient": (kernels.spmm(n, t_crow, t_col, values, t_perm, gt, None), gy @ w),
        "weight gradient": (kernels.sddmm(crow, col, gt, xt), (gy.t() @ x)[rows, cols]),
    }
    for name, (got, want) in checks.items():
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            return f"self-check of the {name} kernel failed"
    return None


class _Loader:
    """Builds and loads the kernels once per process (thread-safe); remembers why not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self.kernels: NativeKernels | None = None
        self.reason = ""

    def get(self) -> NativeKernels | None:
        if not self._done:
            with self._lock:
                if not self._done:
                    self.kernels, self.reason = self._load()
                    self._done = True
                    if self.kernels is None and self.reason != _DISABLED:
                        log.warning("native sparse kernels unavailable (%s); sparse layers use "
                                    "torch's kernels, which are slower", self.reason)
        return self.kernels

    def reset(self) -> None:
        """Forget the outcome, so the next :meth:`get` tries again (tests, changed ``$CC``)."""
        with self._lock:
            self._done, self.kernels, self.reason = False, None, ""

    @staticmethod
    def _load() -> tuple[NativeKernels | None, str]:
        if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
            return None, _DISABLED
        cc = _compiler()
        if cc is None:
            return None, "no C compiler found: install one (e.g. gcc) or set $CC"
        try:
            source = SOURCE.read_bytes()
        except OSError as exc:
            return None, f"cannot read {SOURCE}: {exc}"
        version, cpu = _compiler_version(cc), _cpu_identity()
        complaint = "no flags tried"
        for flags in FLAG_SETS:
            key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cc.encode(),
                                             version.encode(), cpu.encode()])).hexdigest()[:20]
            target = _cache_dir() / f"sparse_cpu-{ABI_VERSION}-{key}.so"
            if not target.exists():
                try:
                    complaint = _build(cc, source, flags, target) or ""
                except OSError as exc:  # cache directory not writable
                    return None, f"cannot write the kernel cache {target.parent}: {exc} (set ${ENV_CACHE})"
                if complaint:
                    continue
                log.info("compiled native sparse kernels: %s %s -> %s", cc, " ".join(flags), target)
            try:
                lib = ctypes.CDLL(str(target))
                if lib.itop_abi_version() != ABI_VERSION:
                    return None, f"{target} has another ABI version; delete it"
                kernels = NativeKernels(lib, target, flags)
            except (OSError, AttributeError) as exc:
                return None, f"cannot load {target}: {exc}"
            problem = _self_check(kernels)
            return (None, problem) if problem else (kernels, "")
        return None, f"the C compiler {cc} refused every flag set ({complaint})"


_DISABLED = f"disabled by ${ENV_SWITCH}"
_LOADER = _Loader()


def native_kernels() -> NativeKernels | None:
    """The native CPU kernels, built on first call; ``None`` when they are unavailable
    (:func:`native_status` says why)."""
    return _LOADER.get()


def native_status() -> str:
    """Which kernels sparse layers use on CPU, and why, in a few words (for run logs)."""
    kernels = _LOADER.get()
    return kernels.describe() if kernels is not None else f"torch.sparse ({_LOADER.reason})"
