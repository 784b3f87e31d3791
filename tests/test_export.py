"""Self-contained checkpoints (save_model) and their model cards.

The round trip loads the saved checkpoints in a fresh Python where ``linearize`` cannot be
imported: ``python -I`` (no PYTHONPATH, no user site, no script/cwd on sys.path), run from a
temporary directory, with a meta-path finder installed first that refuses ``linearize`` and
``linearize.*``. The finder works whatever way linearize is installed (editable finder, .pth path
entry or a regular wheel), which removing one particular mechanism would not; the script checks
that ``import linearize`` fails there and that the model classes come from the checkpoint's code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from linearize import AttentionSpec, linearize_model
from linearize.export import save_model
from linearize.model_card import load_eval_results, read_front_matter, render_model_card, write_model_card
from linearize.recipes import load_recipe

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["modeling_linearized.py", "attention_variants.py", "attention_reference.py", "cache_linearized.py",
           "configuration_linearized.py"]
TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"
# name: (family, recipe, softmax layers)
CASES = {
    "llama-liger": ("llama", "liger-gla", []),
    "qwen3-lizard": ("qwen3", "lizard", [1]),
    "gemma3-lolcats": ("gemma3_text", "lolcats", []),
}
WORDS = ("the of and to in is was for on that with as by at from his an were are which this be has or had it "
         "not first one their its new after who they have her she two been other when there all during into "
         "school time may years more most only over city some world would where later up such used many can "
         "state about national out known university united then made").split()


def tiny_tokenizer():
    """A word-level fast tokenizer whose 128-token vocabulary matches the tiny models."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS[: 128 - len(specials)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left",
    )


def converted(family: str, recipe_name: str, softmax_layers, seed: int = 0):
    recipe = load_recipe(recipe_name)
    model = tiny_model(family, seed=seed)
    linearize_model(model, recipe.attention.to_spec(), softmax_layers, recipe=recipe.name, teacher=TEACHER)
    # Move every new parameter off its initial value, so a load that re-initialised them would show.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".core." in name:
                param.add_(0.05 * torch.randn_like(param))
    return model.eval()


PROMPTS = ["the city of the world", "in the first years the school was"]


def reference_outputs(model, tokenizer) -> dict:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        generated = model.generate(**tokenizer(PROMPTS[:1], return_tensors="pt"), max_new_tokens=6, do_sample=False)
    return {"logits": logits.tolist(), "generated": generated[0].tolist(), "ids": batch["input_ids"].tolist()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (checkpoint dir, in-process reference outputs) for every case."""
    root = tmp_path_factory.mktemp("export")
    tokenizer = tiny_tokenizer()
    out = {}
    for name, (family, recipe, softmax_layers) in CASES.items():
        model = converted(family, recipe, softmax_layers)
        by_length = {stage: {str(n): {"seq_len": n, "overall": ppl - (2.5 if n == 2048 else 0), "by_position": {}}
                             for n in (512, 2048)} for stage, ppl in (("teacher", 20.5), ("converted", 95.25))}
        report = {"teacher": TEACHER, "recipe": recipe, "heldout_perplexity": {"teacher": 20.5, "converted": 95.25},
                  "heldout_perplexity_by_length": by_length,
                  "seconds": {"load": 1.0}, "training": {"tokens": 200_000, "seconds": 1800.0}}
        path = save_model(model, tokenizer, root / name, report=report)
        out[name] = (path, reference_outputs(model, tokenizer))
    return out


@pytest.fixture(scope="module")
def saved_bf16(tmp_path_factory):
    """The llama-liger case saved with ``dtype=torch.bfloat16``: (dir, fp32 reference outputs, in-memory model)."""
    model = converted(*CASES["llama-liger"])
    tokenizer = tiny_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_model(model, tokenizer, tmp_path_factory.mktemp("export-bf16") / "llama-liger-bf16",
                      dtype=torch.bfloat16)
    return path, reference_outputs(model, tokenizer), model, before


CLEAN_SCRIPT = r'''
import importlib.abc, json, sys

class BlockLinearize(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "linearize" or name.startswith("linearize."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockLinearize())
try:
    import linearize  # noqa: F401
    linearize_importable = True
except ModuleNotFoundError:
    linearize_importable = False

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

results = {"linearize_importable": linearize_importable, "models": {}}
prompts = json.loads(sys.argv[2])
for path in sys.argv[3:]:
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)  # as the model card says
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        generated = model.generate(**tokenizer(prompts[:1], return_tensors="pt"), max_new_tokens=6, do_sample=False)
    results["models"][path] = {
        "dtype": str(model.dtype),
        "class_module": type(model).__module__,
        "class_file": sys.modules[type(model).__module__].__file__,
        "config_module": type(model.config).__module__,
        "logits": logits.tolist(), "generated": generated[0].tolist(), "ids": batch["input_ids"].tolist(),
    }
results["linearize_modules"] = sorted(m for m in sys.modules if m == "linearize" or m.startswith("linearize."))
with open(sys.argv[1], "w") as f:
    json.dump(results, f)
'''


def test_checkpoint_is_self_contained(saved):
    umask = os.umask(0)
    os.umask(umask)
    for name, (path, _) in saved.items():
        assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # not the temporary directory's 0700
        assert (path / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
        files = {p.name for p in path.iterdir()}
        assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
                "linearize_report.json", *SHIPPED} <= files, name
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pth")) or f.startswith("adapter_")], files
        for shipped in SHIPPED:  # the shipped code is exactly the package's
            assert (path / shipped).read_bytes() == (REPO / "linearize" / shipped).read_bytes(), shipped
        config = json.loads((path / "config.json").read_text())
        family = CASES[name][0]
        assert config["model_type"] == f"linearized_{family}"
        assert config["auto_map"] == {
            "AutoConfig": f"configuration_linearized.{config['architectures'][0].replace('ForCausalLM', 'Config')}"
            if family != "gemma3_text" else "configuration_linearized.LinearizedGemma3TextConfig",
            "AutoModelForCausalLM": f"modeling_linearized.{config['architectures'][0]}",
        }
        assert config["linearization"]["recipe"] == CASES[name][1]
        with safe_open(path / "model.safetensors", "pt") as f:
            keys = list(f.keys())
        assert any(".core." in k for k in keys) or CASES[name][1] == "liger-gla"
        assert json.loads((path / "linearize_report.json").read_text())["training"]["tokens"] == 200_000


def test_round_trip_in_clean_environment_without_linearize(saved, saved_bf16, tmp_path):
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    paths = [str(path) for path, _ in saved.values()] + [str(saved_bf16[0])]
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN_SCRIPT, str(out), json.dumps(PROMPTS), *paths],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "custom code" not in proc.stdout + proc.stderr, proc.stderr[-4000:]  # no trust_remote_code prompt
    results = json.loads(out.read_text())
    assert results["linearize_importable"] is False
    assert results["linearize_modules"] == []
    for name, (path, reference) in saved.items():
        got = results["models"][str(path)]
        assert got["class_module"].startswith("transformers_modules.") and got["class_module"].endswith(
            ".modeling_linearized"
        ), got["class_module"]
        assert got["config_module"].endswith(".configuration_linearized")
        assert str(REPO) not in got["class_file"]
        assert got["ids"] == reference["ids"]  # the tokenizer round-trips (left padding included)
        # Padded positions are excluded: their logits are arbitrary (eager vs sdpa in softmax layers).
        valid = torch.tensor(reference["ids"]) != 0
        diff = (torch.tensor(got["logits"]) - torch.tensor(reference["logits"]))[valid].abs().max().item()
        assert diff <= 1e-5, (name, diff)
        assert got["generated"] == reference["generated"], name
        assert len(got["generated"]) > len(reference["ids"][0]) - 1
        assert got["dtype"] == "torch.float32"
    # The bfloat16 checkpoint loads through the shipped code in bfloat16, close to the fp32 model.
    path, reference, _, _ = saved_bf16
    got = results["models"][str(path)]
    assert got["dtype"] == "torch.bfloat16" and got["class_module"].startswith("transformers_modules.")
    valid = torch.tensor(reference["ids"]) != 0
    diff = (torch.tensor(got["logits"]) - torch.tensor(reference["logits"]))[valid].abs().max().item()
    assert 0 < diff <= 0.05, diff


def test_loads_without_remote_code_when_linearize_is_installed(saved):
    from transformers import AutoModelForCausalLM

    import linearize.modeling_linearized as modeling

    tokenizer = tiny_tokenizer()
    for name, (path, reference) in saved.items():
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        assert type(model) is modeling.MODEL_CLASSES[CASES[name][0]]
        batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**batch).logits
        valid = batch["attention_mask"].bool()
        assert torch.allclose(logits[valid], torch.tensor(reference["logits"])[valid], atol=1e-5), name


def test_save_in_bfloat16_halves_the_file_and_leaves_the_model_alone(saved, saved_bf16):
    from transformers import AutoModelForCausalLM

    path, reference, model, before = saved_bf16
    fp32_size = (saved["llama-liger"][0] / "model.safetensors").stat().st_size
    size = (path / "model.safetensors").stat().st_size
    assert 0.45 < size / fp32_size < 0.55, (size, fp32_size)
    with safe_open(path / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config.get("torch_dtype", "bfloat16") == "bfloat16"
    # The model passed in is unchanged: still fp32, same values.
    assert model.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    assert reloaded.dtype == torch.bfloat16
    tokenizer = tiny_tokenizer()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = reloaded(**batch).logits.float()
    valid = batch["attention_mask"].bool()
    diff = (logits[valid] - torch.tensor(reference["logits"])[valid]).abs().max().item()
    assert 0 < diff <= 0.05, diff
    with pytest.raises(ValueError, match="not a torch floating-point dtype"):
        save_model(model, tokenizer, path.parent / "never", dtype="int8")
    assert not (path.parent / "never").exists()


def test_saved_checkpoint_names_no_local_path(tmp_path):
    """A teacher given by absolute path and a report naming local data: no saved file contains the path."""
    from tiny_models import save_tiny_teacher

    from linearize.teachers import load_model

    root = tmp_path / "private-home"
    teacher = save_tiny_teacher(root / "models" / "tiny-teacher").resolve()
    (teacher / "README.md").write_text("---\nlicense: mit\n---\n# my teacher\n")
    loaded = load_model(str(teacher))
    # The library API records whatever teacher it is given; here the absolute path.
    spec = load_recipe("liger-gla").attention.to_spec()
    linearize_model(loaded.model, spec, recipe="liger-gla", teacher=str(teacher))
    data = root / "data" / "train.txt"
    report = {"teacher": str(teacher), "recipe": "liger-gla", "data": str(data),
              "heldout_perplexity": {"teacher": 87550673606432224.0},
              "training": {"data": f"{data} (plain): 12 examples, 3 x 256 training tokens", "budget": "demo",
                           "recovery": {"tokens": 768, "seconds": 2.0}}}
    out = save_model(loaded.model, loaded.tokenizer, tmp_path / "out" / "tiny-liger", report=report)
    leaks = [p.name for p in out.iterdir() if str(tmp_path).encode() in p.read_bytes()]
    assert not leaks, leaks
    config = json.loads((out / "config.json").read_text())
    assert config["linearization"]["teacher"] == "tiny-teacher"
    saved_report = json.loads((out / "linearize_report.json").read_text())
    assert saved_report["teacher"] == "tiny-teacher" and saved_report["data"] == "train.txt"
    assert saved_report["training"]["data"].startswith("train.txt (plain): 12 examples")
    card = (out / "README.md").read_text()
    assert "`tiny-teacher`" in card and "data: train.txt (plain)" in card
    assert read_front_matter(card)["license"] == "mit"  # still read from the local teacher's own card
    assert "| teacher | 8.76e+16 |" in card
    write_model_card(out)  # rewritten later (e.g. after an evaluation): the license stays
    assert read_front_matter((out / "README.md").read_text())["license"] == "mit"
    # Hub ids are recorded as they are.
    card = render_model_card(_config(teacher=TEACHER), {"teacher": TEACHER, "training": {
        "data": "HuggingFaceFW/fineweb-edu", "recovery": {"tokens": 768}}})
    assert f"[{TEACHER}](https://huggingface.co/{TEACHER})" in card and "data: HuggingFaceFW/fineweb-edu" in card


def test_checkpoint_with_a_bad_linearization_is_refused_on_load(saved, tmp_path):
    """An unknown layer type or a missing ``linearization`` block is an error naming it, with and without the
    shipped code (which cannot import linearize: its error is a ValueError subclass of its own)."""
    import shutil

    from transformers import AutoModelForCausalLM
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from linearize.configuration_linearized import LinearizationConfigError

    source, _ = saved["qwen3-lizard"]
    cases = {
        "unknown-type": (lambda lin: lin["layer_types"].__setitem__(2, "linear_fast"),
                         "linearization.layer_types[2] is 'linear_fast', not a known layer type (linear_hybrid, softmax)"),
        "too-few-layers": (lambda lin: lin["layer_types"].pop(), "names 2 layers, the model has 3"),
        "no-linearization": (None, "(model_type 'linearized_qwen3') has no 'linearization' block"),
    }
    for name, (change, message) in cases.items():
        path = tmp_path / name
        shutil.copytree(source, path)
        config = json.loads((path / "config.json").read_text())
        if change is None:
            del config["linearization"]
        else:
            change(config["linearization"])
        (path / "config.json").write_text(json.dumps(config))
        with pytest.raises(LinearizationConfigError) as err:
            AutoModelForCausalLM.from_pretrained(path)
        assert str(err.value).startswith(f"{path}/config.json: ") and message in str(err.value), str(err.value)
        shipped = get_class_from_dynamic_module("modeling_linearized.LinearizedQwen3ForCausalLM", str(path))
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            shipped.from_pretrained(path)
        assert type(err.value).__name__ == "LinearizationConfigError"


def test_lora_is_merged_and_save_is_atomic(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = converted("llama", "liger-gla", [])
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    ids = torch.tensor([[5, 9, 17, 3, 40, 41, 42]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    path = save_model(peft_model, tiny_tokenizer(), tmp_path / "merged")
    assert not any(p.name.startswith("adapter_") for p in path.iterdir())
    with safe_open(path / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)

    # A failure while writing leaves the previous checkpoint exactly as it was.
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    class BrokenTokenizer:
        def save_pretrained(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(reloaded, BrokenTokenizer(), path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary directory left behind


# ----------------------------------------------------------------------------- model card


def _config(teacher=TEACHER, recipe="liger-gla", spec=None, softmax_layers=(), n_layers=30):
    spec = (spec or AttentionSpec()).to_dict()
    kinds = ["softmax" if i in softmax_layers else "linear_hybrid" for i in range(n_layers)]
    return {"model_type": "linearized_llama", "num_hidden_layers": n_layers,
            "linearization": {"attention": spec, "softmax_layers": list(softmax_layers), "layer_types": kinds,
                              "recipe": recipe, "teacher": teacher}}


def _lm_eval(values: dict) -> dict:
    return {"results": {task: {"alias": task, f"{metric},none": v, f"{metric}_stderr,none": 0.01}
                        for task, (metric, v) in values.items()},
            "config": {"model": "hf"}, "versions": {}}


def test_model_card_content_and_metadata(saved):
    path, _ = saved["llama-liger"]
    card = (path / "README.md").read_text()
    meta = read_front_matter(card)
    assert meta["base_model"] == TEACHER and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"liger-gla", "llama", "custom_code", "sliding-window-attention"} <= set(meta["tags"])
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.base_model == TEACHER  # the Hub's own parser reads the metadata
    assert "Liger gated linear attention" in card  # the recipe's description
    assert "200k (200,000) tokens" in card and "30.0 min" in card
    assert "| model | held-out ppl @512 tokens | held-out ppl @2048 tokens |" in card
    assert "| teacher | 20.50 | 18.00 |" in card and "| converted | 95.25 | 92.75 |" in card
    assert "trust_remote_code=True" in card and "generate(" in card
    assert "last 64 tokens" in card  # recall beyond the window
    assert "**Not evaluated**" in card and "mmlu" in card

    # Evaluation results written later (teacher vs student lm-eval JSON, the eval markdown table).
    results = {"teacher": _lm_eval({"piqa": ("acc", 0.70), "arc_challenge": ("acc_norm", 0.40),
                                    "passkey_2k": ("exact_match", 1.0)}),
               "student": _lm_eval({"piqa": ("acc", 0.63), "arc_challenge": ("acc_norm", 0.30),
                                    "passkey_2k": ("exact_match", 0.25)})}
    (path / "eval_results.json").write_text(json.dumps(results))
    write_model_card(path)
    card = (path / "README.md").read_text()
    assert "| task | metric | teacher | student | student / teacher |" in card
    assert "| piqa | acc | 70.0 | 63.0 | 90% |" in card
    assert "| arc_challenge | acc_norm | 40.0 | 30.0 | 75% |" in card
    assert "| teacher | 20.50 |" in card  # the report's perplexities stay
    # The evaluation's markdown report, when there is one, is embedded as is instead of the table.
    (path / "eval_results.md").write_text("| task | teacher | student |\n|---|---|---|\n| piqa | 70.0 | 63.0 |\n")
    write_model_card(path)
    card = (path / "README.md").read_text()
    assert "| piqa | 70.0 | 63.0 |" in card and "| piqa | acc | 70.0 |" not in card
    not_evaluated = next(line for line in card.splitlines() if "**Not evaluated**" in line)
    assert "piqa" not in not_evaluated and "arc_challenge" not in not_evaluated and "mmlu" in not_evaluated
    assert "long-context recall" not in not_evaluated  # a passkey task was run
    assert not list(path.glob(".README.md.*"))


def test_model_card_without_report_or_known_teacher(tmp_path):
    local_teacher = tmp_path / "my-teacher"
    local_teacher.mkdir()
    spec = AttentionSpec(feature_map="hedgehog", gate="learned", normalize=True, window=128, num_sinks=4, mix="learned")
    card = render_model_card(_config(teacher=str(local_teacher), recipe="lizard", spec=spec, softmax_layers=(3, 7),
                                     n_layers=8), name="tiny-lizard")
    meta = read_front_matter(card)
    assert "license" not in meta and "base_model" not in meta  # unknown license, not a Hub id
    assert "# tiny-lizard" in card and "6 of its 8 layers" in card and "layers 3, 7" in card
    assert "4 learned sinks" in card and "last 128 tokens" in card
    assert "none recorded" in card and "No evaluation was recorded" in card
    # The pipeline's report: training per stage, perplexity on two sources.
    report = {"heldout_perplexity": {"teacher": 10.0, "recovered": 14.0},
              "other_source_perplexity": {"teacher": 30.0, "recovered": 41.5},
              "training": {"budget": "demo", "transfer": {"stage": "transfer", "tokens": 8192, "seconds": 60.0},
                           "recovery": {"stage": "recovery", "tokens": 24576, "seconds": 240.0}}}
    card = render_model_card(_config(), report)
    assert "**Recovery training**: 32.8k (32,768) tokens, 5.0 min wall time" in card
    assert "  - transfer: 8.19k (8,192) tokens, 60 s" in card and "  - budget: demo" in card
    assert "| recovered | 14.00 | 41.50 |" in card
    # A local teacher whose own card names a license passes it on.
    (local_teacher / "README.md").write_text("---\nlicense: mit\n---\n# teacher\n")
    assert read_front_matter(render_model_card(_config(teacher=str(local_teacher))))["license"] == "mit"
    assert read_front_matter(render_model_card(_config(teacher="meta-llama/Llama-3.2-1B")))["license"] == "llama3.2"

    # A single lm-eval results file (the student only), given by path.
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_lm_eval({"hellaswag": ("acc_norm", 0.5), "mmlu": ("acc", 0.3)})))
    parsed, markdown = load_eval_results(results, tmp_path)
    assert parsed == {"student": {"hellaswag": ("acc_norm", 0.5), "mmlu": ("acc", 0.3)}} and markdown is None
    card = render_model_card(_config(), eval_parsed=parsed)
    assert "| hellaswag | acc_norm | 50.0 |" in card
    with pytest.raises(FileNotFoundError):
        load_eval_results(tmp_path / "missing.json", tmp_path)

    # The output directory of `linearize eval`: results/LABEL.json per model and report.md.
    eval_dir = tmp_path / "eval"
    (eval_dir / "results").mkdir(parents=True)
    (eval_dir / "results" / "teacher.json").write_text(json.dumps(_lm_eval({"lin_passkey_256": ("exact_match", 1.0)})))
    student = _lm_eval({"lin_passkey_256": ("exact_match", 0.2)})
    (eval_dir / "results" / "tiny-liger.json").write_text(json.dumps(student))
    (eval_dir / "report.md").write_text("| task | metric | teacher | tiny-liger | recovery |\n")
    (eval_dir / "summary.json").write_text(json.dumps({"tasks": ["lin_passkey_256"], "models": []}))
    parsed, markdown = load_eval_results(eval_dir, tmp_path)
    assert parsed == {"teacher": {"lin_passkey_256": ("exact_match", 1.0)},
                      "tiny-liger": {"lin_passkey_256": ("exact_match", 0.2)}}
    assert markdown == "| task | metric | teacher | tiny-liger | recovery |"
    card = render_model_card(_config(), eval_parsed=parsed, eval_markdown=markdown)
    assert "| task | metric | teacher | tiny-liger | recovery |" in card
    assert "long-context recall" not in card.split("**Not evaluated**")[1].splitlines()[0]
