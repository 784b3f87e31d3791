"""softmax_layers: {auto: N}: the layers the linearized attention matches worst go back to softmax attention."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from linearize import AttentionSpec, linearize_model
from linearize.layer_selection import choose_softmax_layers, relative_transfer_errors, restore_softmax_layers
from linearize.modeling_linearized import LinearizedAttention
from linearize.recipes import RecipeError, load_recipe
from tiny_models import tiny_model

WEIGHTED = AttentionSpec(normalize=True, mix="weighted-linear", window=8)


def _constructed(bad=(1, 3)):
    """A 5-layer tiny Llama converted with o = a * o_lin + o_win (window 8), where the layers ``bad`` give the
    linear branch a large weight (far from the teacher) and the others a small one."""
    teacher = tiny_model("llama", num_hidden_layers=5)
    model = linearize_model(tiny_model("llama", num_hidden_layers=5), WEIGHTED)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.core.linear_weight.fill_(3.0 if i in bad else 0.01)
    ids = torch.randint(0, teacher.config.vocab_size, (4, 48), generator=torch.Generator().manual_seed(0))
    return teacher, model, ids


def test_the_layers_with_the_largest_relative_transfer_error_are_chosen_and_restored():
    teacher, model, ids = _constructed()
    errors = relative_transfer_errors(model, ids, batch_size=2)
    assert set(errors) == {0, 1, 2, 3, 4}
    assert min(errors[1], errors[3]) > 10 * max(errors[0], errors[2], errors[4])
    assert choose_softmax_layers(errors, 2) == [1, 3]
    assert all(layer.self_attn.attention_mode == "hybrid" for layer in model.model.layers)  # modes restored

    restore_softmax_layers(model, [1, 3])
    lin = model.config.linearization
    assert lin["softmax_layers"] == [1, 3] and lin["layer_types"][1] == lin["layer_types"][3] != lin["layer_types"][0]
    assert type(model.model.layers[1].self_attn).__name__ == "LlamaAttention"
    assert sum(isinstance(layer.self_attn, LinearizedAttention) for layer in model.model.layers) == 3
    # The restored layers are the teacher's attention with its own weights: with the other layers in teacher
    # mode too, the model is the teacher.
    model.set_attention_mode("teacher")
    with torch.no_grad():
        torch.testing.assert_close(model(ids, use_cache=False).logits, teacher(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_saved_model_with_restored_layers_loads_to_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    from linearize.auto_classes import register_auto_classes

    register_auto_classes()
    _, model, ids = _constructed()
    restore_softmax_layers(model, [1, 3])
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.linearization["softmax_layers"] == [1, 3]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits)
        # Generation with the inter-layer hybrid cache (KV cache in layers 1 and 3, states elsewhere).
        out = loaded.generate(ids[:1, :10], max_new_tokens=5, do_sample=False)
        assert out.shape == (1, 15)


@pytest.mark.parametrize("value,count", [({"auto": 2}, 2), ({"auto": 0.1}, 3), ({"auto": 0.01}, 1), ({"auto": 40}, 29)])
def test_auto_takes_a_count_or_a_fraction_of_the_layers(tmp_path, value, count):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"softmax_layers": value}))
    recipe = load_recipe(str(path))
    assert recipe.fixed_softmax_layers == [] and recipe.auto_softmax_layers.count(30) == count


@pytest.mark.parametrize("text,message", [("softmax_layers: auto\n", r"give auto a count or a fraction"),
                                          ("softmax_layers: {auto: 2.5}\n", r"whole number"),
                                          ("softmax_layers: {auto: 0}\n", r"greater than 0")])
def test_auto_without_a_valid_size_names_the_key(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=rf"r\.yaml: softmax_layers.*{message}"):
        load_recipe(str(path))


def test_the_main_job_chooses_after_stage_1_saves_the_choice_and_a_resume_reuses_it(tmp_path):
    from linearize.pipeline import run_pipeline
    from test_recipes_and_cli import _tokenizer_dir

    tiny_model("llama", num_hidden_layers=4).save_pretrained(tmp_path / "tiny")
    _tokenizer_dir(tmp_path / "tiny")
    rng = random.Random(0)
    text = "\n\n".join(" ".join(f"w{rng.randint(0, 59)}" for _ in range(60)) for _ in range(200))
    (tmp_path / "data.txt").write_text(text)
    recipe = load_recipe("lizard").model_dump()
    recipe.update(name="lizard-auto", softmax_layers={"auto": 1}, demo={})
    recipe["transfer"].update(tokens=128, seq_len=32, batch_size=2)
    recipe["recovery"].update(tokens=128, seq_len=32, batch_size=2)
    recipe["data"].update(template="text")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    recipe = load_recipe(str(tmp_path / "recipe.yaml"))

    def run(out, **kw):
        return run_pipeline(str(tmp_path / "tiny"), recipe, tmp_path / out, eval_tokens=512, budget="paper",
                            data=str(tmp_path / "data.txt"), progress=False, log=lambda *a: None, **kw)

    run("first")
    chosen = json.loads((tmp_path / "first.train" / "softmax_layers.json").read_text())
    assert len(chosen["layers"]) == 1 and len(chosen["relative_transfer_error"]) == 4
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    assert config["linearization"]["softmax_layers"] == chosen["layers"]
    # A resumed run does not choose again: an edited choice is what it uses (its checkpoints fit that model).
    other = [i for i in range(4) if i not in chosen["layers"]][:1]
    (tmp_path / "first.train" / "softmax_layers.json").write_text(json.dumps({"layers": other}))
    run("first", resume=True, overwrite=True)
    config = json.loads((tmp_path / "first" / "config.json").read_text())
    assert config["linearization"]["softmax_layers"] == other
