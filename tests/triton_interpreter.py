"""Patch triton.language once per interpreted launch instead of once per device-function call.

Triton's interpreter (``TRITON_INTERPRET=1``) swaps ``triton.language``'s builtins for interpreted ones when a
kernel launches (``_patch_lang``, restored when the launch ends), and again on every call of a ``@triton.jit``
helper inside it, ``tl.sum`` and ``tl.zeros`` included: a scan of the language modules with
``inspect.getmembers`` that re-sets the same attributes to equivalent wrappers, ~1 ms a call. Our kernels call
helpers tens of thousands of times per test, so that scan was ~30 % of the kernel tests' time (cProfile of
``test_forward_backward_fp32[window-...-300-128-...]``: 57 -> 40 s without it). Here a helper call inside a
launch that has already patched the modules its helper reads skips the scan; a helper that reads another module
(``triton.language.core`` for Triton's own helpers) patches it once per launch, as before. The kernels run
exactly as interpreted before: every kernel test compares them with the reference. Without the expected
interpreter internals (another Triton) nothing is changed.
"""

from __future__ import annotations

import inspect


def install() -> bool:
    """Install the per-launch patching; True when installed (Triton's interpreter has the expected internals)."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:  # no Triton here: the kernel tests fail on their own
        return False

    original = getattr(interpreter, "_patch_lang", None)
    scope_type = getattr(interpreter, "_LangPatchScope", None)
    if original is None or scope_type is None or getattr(original, "per_launch", False):
        return getattr(original, "per_launch", False)
    patched: list[set[int]] = []  # per active launch: the language modules already patched
    modules_of: dict = {}  # function -> the language modules its globals name (fixed once imported)

    def language_modules(fn) -> set[int]:
        if fn not in modules_of:
            modules_of[fn] = {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}
        return modules_of[fn]

    def patch_lang(fn):
        modules = language_modules(fn)
        if patched:  # a helper called inside a launch
            if modules <= patched[-1]:
                return scope_type()
            patched[-1] |= modules
            return original(fn)
        scope = original(fn)  # a launch: its scope is restored when the launch ends
        restore = scope.restore

        def restore_launch():
            patched.pop()
            restore()

        scope.restore = restore_launch
        patched.append(set(modules))  # grows during the launch; the cached set stays
        return scope

    patch_lang.per_launch = True
    interpreter._patch_lang = patch_lang
    return True
