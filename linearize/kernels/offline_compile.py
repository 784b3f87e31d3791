"""Compile the kernels for a CUDA GPU on a machine without one: Triton's compiler behind a stub driver.

``scripts/kernel_registers.py`` compiles chosen launch configurations for their registers, spills and shared
memory. ``record_launches`` captures the launches the kernel paths really make on CPU tensors (the GPU's launch
configuration, the real argument dtypes) without running them, and ``compile_launch`` compiles one: the tests
compile every launch of every path this way, because the Triton interpreter runs kernels without
type-checking them. It ran a scan whose two branches took pointers of different dtypes (a bf16 state, an
fp32 placeholder), which the compiler refuses; the first GPU run of that code failed on it.
On a GPU other than sm_90, ``shared_memory.py`` records and compiles the same way (tensors on the GPU, Triton's
own driver) to learn whether a kind of call fits the GPU's shared memory per block.

Import this module where ``TRITON_INTERPRET`` is unset: the kernels are then compilable ``JITFunction``s.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from dataclasses import dataclass, field

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction


# The most shared memory one block may opt into, by compute capability (CUDA programming guide): Hopper and
# Blackwell datacenter parts 227 KiB, A100 163 KiB, the sm_86 / sm_89 / sm_120 parts (RTX 30xx / 40xx / 50xx,
# A10, A40, L4, L40) 99 KiB. A launch that needs more fails with Triton's ``OutOfResources``.
SHARED_PER_BLOCK = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


class StubDriver:
    """Just enough of a Triton driver to compile (``warmup``) for a fixed target without a device."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def use_target(arch: int = 90) -> None:
    """Compile for compute capability ``arch`` (90: H100 / H200) from now on in this process; the kernel paths
    then choose their launches for that GPU's shared memory per block, as on the device."""
    import linearize.kernels as kernels

    if arch not in SHARED_PER_BLOCK:
        raise ValueError(f"unknown shared memory per block for sm_{arch}; known: {sorted(SHARED_PER_BLOCK)}")
    driver.set_active(StubDriver(arch))
    kernels.OFFLINE_TARGET = (arch, SHARED_PER_BLOCK[arch])


@dataclass
class Launch:
    """One kernel launch as the launcher made it: tensors stand as their dtypes (all the compiler needs)."""

    kernel: JITFunction
    args: tuple
    kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def key(self) -> tuple:
        """What Triton specialises on: pointer dtypes, integers equal to 1 or divisible by 16, constexprs."""

        def spec(a):
            if isinstance(a, torch.dtype):
                return str(a)
            if isinstance(a, int) and not isinstance(a, bool):
                return "1" if a == 1 else "d16" if a % 16 == 0 else "i"
            return type(a).__name__

        return (self.name, tuple(spec(a) for a in self.args), tuple(sorted(self.kwargs.items())))


def compile_launch(launch: Launch):
    """Compile one recorded launch for the target of ``use_target``; returns Triton's compiled kernel."""
    return launch.kernel.warmup(*launch.args, grid=(1,), **launch.kwargs)


class _Recorder:
    """Stands in for a kernel in its launcher's module: ``kernel[grid](...)`` records instead of running (into
    the innermost ``record_launches`` block's list)."""

    def __init__(self, kernel: JITFunction, sink: list):
        self.kernel, self.sink = kernel, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            args = tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args)
            self.sink.append(Launch(self.kernel, args, kwargs))

        return launch


@contextlib.contextmanager
def gpu_paths_on_cpu():
    """Within the block, the kernel paths accept CPU tensors and take the GPU's launch configuration (what
    they launch must then be recorded or stubbed: CPU tensors cannot run on a GPU)."""
    import linearize.kernels as kernels

    saved = kernels.INTERPRET, kernels._on_gpu
    kernels.INTERPRET = True  # kernel_fallback_reason: CPU tensors are served
    kernels._on_gpu = lambda x: True  # noqa: ARG005
    try:
        yield
    finally:
        kernels.INTERPRET, kernels._on_gpu = saved


@contextlib.contextmanager
def record_launches(on_cpu: bool = True):
    """Within the block, the kernel paths record each launch (yielded list of ``Launch``) instead of running
    it: their outputs stay uninitialised. ``on_cpu``: they take CPU tensors and the GPU's launch configuration
    (``gpu_paths_on_cpu``); otherwise the tensors are on the GPU. Blocks nest: a launch goes to the innermost."""
    import linearize.kernels as kernels
    from linearize.kernels import lolcats_chunked

    launches: list[Launch] = []
    saved = []
    for module in (kernels, lolcats_chunked):
        source = inspect.getsource(module)
        for attr, obj in list(vars(module).items()):
            if isinstance(obj, (JITFunction, _Recorder)) and re.search(rf"\b{attr}\[", source):
                saved.append((module, attr, obj))
                setattr(module, attr, _Recorder(obj.kernel if isinstance(obj, _Recorder) else obj, launches))
    try:
        with gpu_paths_on_cpu() if on_cpu else contextlib.nullcontext():
            yield launches
    finally:
        for module, attr, obj in saved:
            setattr(module, attr, obj)


@contextlib.contextmanager
def stub_binary_launch():
    """Within the block, a kernel launch compiles (for ``use_target``'s target) and goes through Triton's whole
    Python launch path (argument binding, specialisation, cache lookup), but the final launch of the binary is
    a no-op: what a launch costs the host before the C launcher and the CUDA driver."""
    from triton.compiler.compiler import CompiledKernel

    saved = CompiledKernel._init_handles
    CompiledKernel._init_handles = lambda self: setattr(self, "_run", lambda *args: None)
    try:
        yield
    finally:
        CompiledKernel._init_handles = saved
