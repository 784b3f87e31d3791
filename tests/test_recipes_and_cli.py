"""Recipes (typed, validated, shipped) and the CLI's expected failures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import GPT2Config, GPT2LMHeadModel

from linearize.cli import main
from linearize.attention_spec import AttentionSpec
from linearize.recipes import RecipeError, load_recipe, shipped_recipes
from tiny_models import save_word_tokenizer, tiny_model


def _write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_recipes_load_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"liger-gla", "lizard", "lolcats", "gla", "swa"} <= set(shipped_recipes())
    lizard = load_recipe("lizard")
    assert lizard.transfer is not None and lizard.transfer.lr == 1e-3
    assert lizard.recovery.lora.alpha == 16 and lizard.recovery.lr == 5e-4 and lizard.recovery.seq_len == 2048
    assert {"liger-gla-paper", "lizard-paper"} <= set(shipped_recipes())
    liger = load_recipe("liger-gla")
    assert liger.transfer is None and liger.recovery.loss == "ce" and liger.recovery.lora.alpha == 8
    assert load_recipe("lolcats").transfer.lr == 1e-2


def test_recipe_by_path_with_defaults(tmp_path):
    path = _write(tmp_path, "attention:\n  window: 32\n")
    recipe = load_recipe(str(path))
    assert recipe.name == "r" and recipe.attention.window == 32
    assert recipe.attention.gate == "key"  # default from AttentionSpec


@pytest.mark.parametrize(
    "text,expected",
    [
        ("attention:\n  windw: 32\n", r"r\.yaml: attention\.windw: unknown key"),
        ("attention:\n  window: many\n", r"r\.yaml: attention\.window: .*integer"),
        ("attention:\n  window: 0\n", r"r\.yaml: attention: window: must be > 0"),
        ("softmax_layers: [-1]\n", r"r\.yaml: softmax_layers: negative"),
        ("recovery:\n  lora:\n    rank: 0\n", r"r\.yaml: recovery\.lora\.rank: .*greater than 0"),
        ("- a list\n", r"r\.yaml: a recipe is a mapping"),
        ("demo:\n  recovery: {lrr: 1.0}\n", r"r\.yaml: demo: recovery\.lrr: unknown key"),
        ("demo:\n  transfer: {batch_size: 0}\n", r"r\.yaml: demo: transfer\.batch_size: .*greater than 0"),
        ("attention:\n  linear_scale: sqrt\n", r"r\.yaml: attention\.linear_scale: "),
        ("attention:\n  mix: shared\n  gate: none\n  linear_scale: rsqrt-head-dim\n",
         r"linear_scale: not defined for mix 'shared'"),
    ],
)
def test_bad_recipe_names_file_and_key(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError, match=expected):
        load_recipe(str(path))


def test_shipped_recipes_keep_the_published_formulations_beside_the_changed_ones():
    """liger-gla and lizard differ from their papers in how the branches are scaled and mixed; the papers'
    formulations stay reproducible as liger-gla-paper and lizard-paper, identical but for the name."""
    for name in ("liger-gla", "lizard"):
        changed, paper = load_recipe(name), load_recipe(f"{name}-paper")
        assert changed.attention != paper.attention
        assert paper.demo == type(paper.demo)()  # the paper recipes run the paper's settings on every budget
        assert changed.recovery.model_dump() == paper.recovery.model_dump()  # same paper-budget training
    assert load_recipe("liger-gla-paper").attention.to_spec() == AttentionSpec(window=64, mix="average")
    assert load_recipe("lizard-paper").attention.mix == "learned"
    assert load_recipe("lizard").attention.mix == "weighted-linear"


def test_demo_budget_applies_the_recipes_own_settings_on_top_of_its_sizes():
    from linearize.pipeline import DEMO_BUDGET, apply_budget

    lizard = load_recipe("lizard")
    demo = apply_budget(lizard, "demo")
    # lizard's demo: block sets its tokens (the default recipe's job fits 10 minutes); the sequence length is the budget's.
    assert (demo.transfer.tokens, demo.recovery.tokens) == (4096, 32768) and demo.recovery.seq_len == 256
    assert (demo.recovery.lr, demo.recovery.batch_size, demo.recovery.schedule) == (1e-3, 1, "constant")
    assert (demo.transfer.lr, demo.transfer.batch_size) == (1e-2, 1)
    liger = apply_budget(load_recipe("liger-gla"), "demo")  # no tokens in its demo: block: the budget's
    assert liger.recovery.tokens == DEMO_BUDGET["recovery"]["tokens"] and liger.recovery.batch_size == 1
    assert apply_budget(lizard, "paper").recovery == lizard.recovery  # the paper budget is the recipe's
    assert apply_budget(lizard, "demo", tokens=512).recovery.tokens == 512
    paper = apply_budget(load_recipe("lizard-paper"), "demo")
    assert (paper.recovery.lr, paper.recovery.batch_size) == (5e-4, DEMO_BUDGET["recovery"]["batch_size"])


def test_unknown_recipe_name_lists_shipped_ones():
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*liger-gla.*lizard"):
        load_recipe("nope")


def test_softmax_layer_beyond_depth_names_key_and_file(tmp_path):
    recipe = load_recipe(str(_write(tmp_path, "softmax_layers: [7]\n")))
    with pytest.raises(RecipeError, match=r"r\.yaml: softmax_layers: layer \[7\] beyond the model's depth \(3 layers"):
        recipe.check_model(3, tmp_path / "r.yaml")


# ---- CLI ------------------------------------------------------------------------------------


def test_help_lists_subcommands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "convert", "recipes"):
        assert command in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["./no/such/model"], "error: model path not found"),
        (["convert", "/no/such.gguf", "--out", "OUT"], "error: model path not found: /no/such.gguf"),
        (["--recipe", "nope"], "error: unknown recipe 'nope'"),
    ],
)
def test_expected_failures_exit_2_with_one_line(tmp_path, args, message):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_unsupported_model_is_refused_and_nothing_written(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    _tokenizer_dir(tmp_path / "gpt2")
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "gpt2"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "cannot linearize GPT2LMHeadModel" in result.output and "LlamaForCausalLM" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_layer_index_leaves_previous_output_untouched(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    _tokenizer_dir(model_dir)
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["convert", str(model_dir), "--out", str(out)]).exit_code == 0  # a previous run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    recipe = _write(tmp_path, "softmax_layers: [9]\n")
    result = CliRunner().invoke(main, ["convert", str(model_dir), "--recipe", str(recipe), "--out", str(out)])
    assert result.exit_code == 2
    assert "softmax_layers: layer [9] beyond the model's depth" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_rerun_replaces_its_own_output_and_overwrite_replaces_the_users(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    _tokenizer_dir(model_dir)
    out = tmp_path / "out"
    for _ in range(2):  # an earlier output of the same kind is replaced without asking
        result = CliRunner().invoke(main, ["convert", str(model_dir), "--out", str(out)])
        assert result.exit_code == 0, result.output
    (out / "my-notes.txt").write_text("mine")  # now it holds a file of the user's
    result = CliRunner().invoke(main, ["convert", str(model_dir), "--out", str(out)])
    assert result.exit_code == 2 and "holds files linearize did not write (my-notes.txt)" in result.output
    assert (out / "my-notes.txt").read_text() == "mine"
    result = CliRunner().invoke(main, ["convert", str(model_dir), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "my-notes.txt").exists() and (out / "model.safetensors").is_file()


def test_convert_command_writes_a_loadable_model(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_model("mistral").save_pretrained(model_dir)
    _tokenizer_dir(model_dir)
    result = CliRunner().invoke(main, ["convert", str(model_dir), "--recipe", "lizard", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    import json

    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["model_type"] == "linearized_mistral"
    assert config["linearization"]["recipe"] == "lizard"
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_installed_entry_point_exit_code(tmp_path):
    """The real console script, in its own process."""
    exe = Path(sys.executable).with_name("linearize")
    proc = subprocess.run(
        [str(exe), "convert", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model path not found")


_tokenizer_dir = save_word_tokenizer  # used by other test modules


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["recipes"], ["convert", "--help"]])
def test_help_version_and_recipes_import_no_torch(args):
    """The console script answers these without torch or transformers (``linearize --help`` in well under 1 s)."""
    code = (
        "import atexit, sys\n"
        f"sys.argv = ['linearize', *{args!r}]\n"
        "atexit.register(lambda: print('HEAVY:', sorted(m for m in ('torch', 'transformers') if m in sys.modules)))\n"
        "from linearize.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY: []" in proc.stdout, proc.stdout[-500:]
    if args == ["recipes"]:
        lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip() and "HEAVY" not in line}
        assert {"liger-gla", "liger-gla-paper", "lizard", "lolcats"} <= set(lines)
        assert [name for name, line in lines.items() if "(default)" in line] == ["lizard"]


def test_converted_config_names_the_teacher_by_hub_id_or_directory_name(tmp_path):
    """The offline default (a GGUF file inside a package) is recorded by its Hub id; a local directory by its
    name in the saved config (its path only in memory, where the model card reads the teacher's licence)."""
    from linearize.export import save_model
    from linearize.pipeline import convert
    from linearize.teachers import LoadedModel

    gguf = tmp_path / "SmolLM2.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    loaded = LoadedModel(tiny_model("llama"), None, "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2", local_path=gguf)
    assert convert(loaded, load_recipe("liger-gla")).model.config.linearization["teacher"] == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    teacher_dir = tmp_path / "my-teacher"
    teacher_dir.mkdir()
    (teacher_dir / "README.md").write_text("---\nlicense: mit\n---\n")
    loaded = LoadedModel(tiny_model("llama"), None, "my-teacher", str(teacher_dir), local_path=teacher_dir)
    model = convert(loaded, load_recipe("liger-gla")).model
    save_model(model, None, tmp_path / "out")
    import json

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["linearization"]["teacher"] == "my-teacher"
    assert "license: mit" in (tmp_path / "out" / "README.md").read_text()
