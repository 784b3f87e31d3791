"""Loading a checkpoint executes only its own shipped code and the installed ``linearize``.

The modeling code shipped in every checkpoint looks the fused kernels up only on the first CUDA
forward, and uses them only from the installed ``linearize`` distribution with a compatible kernel
interface version (``find_installed_kernels``). A stray ``linearize/`` package in the working
directory -- first on ``sys.path`` for ``python -c`` and scripts -- is never imported, neither
when the checkpoint is loaded with ``trust_remote_code`` nor when the lookup runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import save_word_tokenizer, tiny_model  # noqa: E402

import linearize.kernels  # noqa: E402
from linearize import linearize_model  # noqa: E402
from linearize.export import save_model  # noqa: E402
from linearize.modeling_linearized import KERNEL_INTERFACE_VERSION, find_installed_kernels  # noqa: E402
from linearize.recipes import load_recipe  # noqa: E402

STRAY_INIT = '''
from pathlib import Path
Path(__file__).resolve().parent.parent.joinpath("STRAY_EXECUTED").write_text("a stray linearize was imported")
KERNEL_INTERFACE_VERSION = 1
'''

LOAD_SCRIPT = r'''
import json, sys, warnings
import torch
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    model(input_ids=torch.tensor([[5, 9, 17, 3]]))
modeling = sys.modules[type(model).__module__]
kernel, reason = modeling.find_installed_kernels()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first, second = modeling.installed_kernel(), modeling.installed_kernel()
json.dump({
    "module": type(model).__module__, "kernel": kernel is not None, "reason": reason,
    "installed_kernel": [first is not None, second is not None],
    "warnings": [str(w.message) for w in caught],
    "imported": sorted(m for m in sys.modules if m == "linearize" or m.startswith("linearize.")),
}, open(sys.argv[2], "w"))
'''


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("security")
    model = linearize_model(tiny_model("llama"), load_recipe("liger-gla").attention.to_spec(), recipe="liger-gla")
    save_word_tokenizer(root / "tokenizer")
    from transformers import AutoTokenizer

    return save_model(model, AutoTokenizer.from_pretrained(root / "tokenizer"), root / "tiny-liger")


def test_stray_linearize_in_the_working_directory_is_never_imported(checkpoint, tmp_path):
    cwd = tmp_path / "work"
    (cwd / "linearize" / "kernels").mkdir(parents=True)
    (cwd / "linearize" / "__init__.py").write_text(STRAY_INIT)
    stray_kernels = STRAY_INIT.replace("parent.parent", "parent.parent.parent")
    (cwd / "linearize" / "kernels" / "__init__.py").write_text(stray_kernels)
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(  # python -c: the working directory is first on sys.path
        [sys.executable, "-c", LOAD_SCRIPT, str(checkpoint), str(out)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not (cwd / "STRAY_EXECUTED").exists(), "the stray ./linearize package was executed"
    result = json.loads(out.read_text())
    assert result["module"].startswith("transformers_modules.")  # the checkpoint's shipped code ran
    assert result["kernel"] is False
    assert "is not the installed distribution" in result["reason"] and str(cwd / "linearize") in result["reason"]
    assert result["installed_kernel"] == [False, False]
    assert len(result["warnings"]) == 1 and result["reason"] in result["warnings"][0]  # one warning, naming why
    assert result["imported"] == []


def test_installed_kernels_are_used_only_with_a_matching_interface_version():
    kernel, reason = find_installed_kernels()  # the editable install of this repository
    assert reason is None and kernel is linearize.kernels.hybrid_attention_kernel
    assert linearize.kernels.KERNEL_INTERFACE_VERSION == KERNEL_INTERFACE_VERSION
    kernel, reason = find_installed_kernels(required_version=KERNEL_INTERFACE_VERSION + 1)
    assert kernel is None
    assert f"kernel interface version {KERNEL_INTERFACE_VERSION}" in reason
    assert f"needs {KERNEL_INTERFACE_VERSION + 1}" in reason


def test_shipped_modeling_code_finds_the_installed_kernels(checkpoint):
    """The copy of the modeling code inside a checkpoint (remote code) applies the same lookup."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cls = get_class_from_dynamic_module("modeling_linearized.LinearizedLlamaForCausalLM", str(checkpoint))
    shipped = sys.modules[cls.__module__]
    assert cls.__module__.startswith("transformers_modules.")
    kernel, reason = shipped.find_installed_kernels()
    assert reason is None and kernel is linearize.kernels.hybrid_attention_kernel
