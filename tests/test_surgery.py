"""Surgery on every supported family: exact layers, shared weights, teacher equivalence, round trip."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import linearize
from linearize import AttentionSpec, UnsupportedModelError, linearize_model
from linearize.modeling_linearized import LinearizedAttention
from linearize.pipeline import convert
from linearize.recipes import load_recipe
from tiny_models import FAMILIES, tiny_model


def _layer_inputs(model, T=40, seed=0):
    """Hidden states and RoPE for layer 0 of a family model, built the way the model builds them."""
    torch.manual_seed(seed)
    hidden = torch.randn(2, T, model.config.hidden_size)
    position_ids = torch.arange(T)[None].expand(2, -1)
    rotary = model.model.rotary_emb
    layer_type = getattr(model.model.layers[0].self_attn, "layer_type", None)
    if layer_type is not None and hasattr(rotary, "layer_types"):  # Gemma3: one RoPE per layer type
        cos_sin = rotary(hidden, position_ids, layer_type)
    else:
        cos_sin = rotary(hidden, position_ids)
    return hidden, cos_sin


@pytest.mark.parametrize("family", list(FAMILIES))
def test_swa_with_full_window_reproduces_the_teacher_layer(family):
    """SWA-only with window >= T is the teacher's own attention (transformers' implementation)."""
    teacher = tiny_model(family)
    hidden, cos_sin = _layer_inputs(teacher)
    T = hidden.shape[1]
    causal = torch.full((T, T), float("-inf")).triu(1)[None, None].expand(2, 1, T, T)
    with torch.no_grad():
        expected, _ = teacher.model.layers[0].self_attn(hidden, position_embeddings=cos_sin, attention_mask=causal)
    student = linearize_model(copy.deepcopy(teacher), AttentionSpec(branches="window", window=T))
    with torch.no_grad():
        got, _ = student.model.layers[0].self_attn(hidden, position_embeddings=cos_sin, attention_mask=None)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", list(FAMILIES))
def test_swa_model_matches_teacher_logits(family):
    teacher = tiny_model(family)
    ids = torch.randint(3, 128, (2, 33))
    with torch.no_grad():
        expected = teacher(ids, use_cache=False).logits
        student = linearize_model(copy.deepcopy(teacher), AttentionSpec(branches="window", window=64))
        got = student(ids, use_cache=False).logits
    assert (got - expected).abs().max().item() <= 1e-4


def test_surgery_converts_exactly_the_intended_layers_and_shares_weights():
    teacher = tiny_model("qwen3", num_hidden_layers=4)
    projections = [
        {name: getattr(layer.self_attn, name).weight for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
        for layer in teacher.model.layers
    ]
    norms = [layer.self_attn.q_norm.weight for layer in teacher.model.layers]
    teacher_parameters = sum(p.numel() for p in teacher.parameters())
    student = linearize_model(teacher, AttentionSpec(), softmax_layers=[1, 3], recipe="liger-gla")
    kinds = [type(layer.self_attn) is LinearizedAttention for layer in student.model.layers]
    assert kinds == [True, False, True, False]
    assert student.config.linearization["layer_types"] == ["linear_hybrid", "softmax", "linear_hybrid", "softmax"]
    assert student.config.linearization["softmax_layers"] == [1, 3]
    assert type(student).__name__ == "LinearizedQwen3ForCausalLM"
    assert student.config.model_type == "linearized_qwen3"
    for layer, weights, q_norm in zip(student.model.layers, projections, norms):
        for name, weight in weights.items():
            assert getattr(layer.self_attn, name).weight is weight  # shared, not copied
        assert layer.self_attn.q_norm.weight is q_norm
    # Liger-GLA adds no parameters at all.
    assert sum(p.numel() for p in student.parameters()) == teacher_parameters


@pytest.mark.parametrize(
    "family,recipe", [("llama", "lizard"), ("gemma2", "lolcats"), ("qwen2", "liger-gla"), ("gemma3_text", "lizard")]
)
def test_saved_converted_model_reloads_with_identical_logits(tmp_path, family, recipe):
    loaded = type("Loaded", (), {})()
    loaded.model, loaded.name = tiny_model(family), "tiny"
    convert(loaded, load_recipe(recipe))
    with torch.no_grad():
        for p in loaded.model.parameters():  # make sure new parameters are saved, not re-initialised
            p.add_(0.01 * torch.randn_like(p))
    ids = torch.randint(3, 128, (2, 20))
    with torch.no_grad():
        expected = loaded.model(ids, use_cache=False).logits
    loaded.model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(loaded.model)
    assert reloaded.config.linearization == loaded.model.config.linearization
    with torch.no_grad():
        got = reloaded(ids, use_cache=False).logits
    assert torch.equal(got, expected)


def test_unsupported_architecture_is_refused_untouched():
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        linearize_model(model, AttentionSpec())
    assert type(model) is GPT2LMHeadModel and getattr(model.config, "linearization", None) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_softmax_layer_beyond_depth_is_refused_before_any_change():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="softmax_layers.*3 layers"):
        linearize_model(model, AttentionSpec(), softmax_layers=[5])
    assert type(model).__name__ == "LlamaForCausalLM"


def test_auto_classes_are_registered():
    from transformers import AutoConfig

    config = AutoConfig.for_model("linearized_llama")
    assert type(config).__name__ == "LinearizedLlamaConfig"
    assert linearize.SUPPORTED_FAMILIES == ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")


# Freshly converted offline teacher, before any training: held-out perplexity over the teacher's on 512 tokens
# (upper bound), and how much that ratio may grow from positions 64-256 to 256-512 (length stability; None: not
# claimed). Measured 2026-12-07: liger-gla 6.0 (growth 1.0), lizard 1.4 (1.1), swa 3.0, gla 158, lolcats 66.
# A window alone (swa) cannot use what is older than the window, so its ratio grows with the context as the
# teacher's perplexity falls; gla (no window) and lolcats (unnormalised linear terms outweigh its window as the
# context grows) start far off and need training. The published formulations start orders of magnitude off,
# which is why the shipped liger-gla and lizard differ from them.
CONVERTED_BOUNDS = {
    "liger-gla": (8.0, 1.3), "lizard": (2.0, 1.3), "swa": (4.0, None), "gla": (250.0, None), "lolcats": (100.0, None),
}
PUBLISHED_AT_LEAST = {"liger-gla-paper": 1000.0, "lizard-paper": 1000.0}


@pytest.fixture(scope="module")
def heldout_512(smollm2):
    from linearize.perplexity import perplexity_report
    from linearize.pipeline import heldout_tokens

    tokens = heldout_tokens(smollm2.tokenizer, 512)
    return tokens, perplexity_report(smollm2.model, tokens, 512, progress=False)


@pytest.mark.parametrize("recipe", sorted(CONVERTED_BOUNDS) + sorted(PUBLISHED_AT_LEAST))
def test_real_offline_teacher_converted_starts_near_the_teacher(smollm2, heldout_512, recipe):
    from linearize.perplexity import perplexity_report

    loaded = copy.copy(smollm2)
    loaded.model = copy.deepcopy(smollm2.model)
    convert(loaded, load_recipe(recipe))
    assert type(loaded.model).__name__ == "LinearizedLlamaForCausalLM"
    assert sum(isinstance(m, LinearizedAttention) for m in loaded.model.modules()) == 30
    tokens, teacher = heldout_512
    converted = perplexity_report(loaded.model, tokens, 512, progress=False)
    ratio = converted.overall / teacher.overall
    by_position = {k: converted.by_position[k] / teacher.by_position[k] for k in teacher.by_position}
    if recipe in PUBLISHED_AT_LEAST:
        assert ratio >= PUBLISHED_AT_LEAST[recipe], (ratio, by_position)
        return
    bound, growth = CONVERTED_BOUNDS[recipe]
    assert ratio <= bound, (ratio, by_position)
    if growth is not None:
        assert by_position["256-1024"] <= growth * by_position["64-256"], by_position


def test_new_parameters_are_seeded_and_leave_the_global_rng_alone():
    """Lizard's gate projections start from the conversion seed: two conversions agree (so every
    process of a distributed run builds the same model), another seed differs, and the caller's
    random stream is not consumed."""
    spec = load_recipe("lizard").attention.to_spec()
    first = tiny_model("llama")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = linearize_model(first, spec, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    b = linearize_model(tiny_model("llama"), spec, seed=7)
    c = linearize_model(tiny_model("llama"), spec, seed=8)
    gates = [m.model.layers[0].self_attn.core.gate_proj.weight for m in (a, b, c)]
    assert torch.equal(gates[0], gates[1])
    assert not torch.allclose(gates[0], gates[2])


# After 8 LoRA steps at 64 tokens of context, the ratio to the teacher beyond the training length (positions
# 64-256 and 256-512 of a 512-token window) over the ratio inside it (0-64): at most this for the shipped default
# recipe; the published Liger-GLA, whose unnormalised state grows with the context, breaks beyond it instead.
# Measured 2026-12-08: lizard 1.76x inside, 1.23x / 1.33x beyond; liger-gla-paper 3.1x inside, 459x / 955,622x.
TRAINED_GROWTH_BOUND = 1.0
TRAINED_PAPER_BREAKS_BY = 100.0


@pytest.mark.parametrize("recipe", ["lizard", "liger-gla-paper"])
def test_real_offline_teacher_trained_briefly_holds_beyond_its_training_length(smollm2, heldout_512, tmp_path, recipe):
    from linearize.data import PackedData
    from linearize.offline_text import training_documents
    from linearize.perplexity import perplexity_report, tokenize_documents
    from linearize.training import StageConfig, apply_lora, merge_lora, train_stage

    steps, seq_len = 8, 64
    loaded = copy.copy(smollm2)
    loaded.model = copy.deepcopy(smollm2.model)
    r = load_recipe(recipe)
    convert(loaded, r)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    ids = tokenize_documents(smollm2.tokenizer, training_documents(), steps * seq_len).view(steps, seq_len)
    peft_model = apply_lora(loaded.model, r.recovery.lora)
    cfg = StageConfig.from_settings("recovery", r.recovery, tokens=steps * seq_len, seq_len=seq_len, batch_size=1,
                                    lr=1e-3, schedule="constant", warmup_ratio=0.0, checkpoint_every=0)
    result = train_stage(peft_model, cfg, PackedData(ids, ids.clone()), None, tmp_path, progress=False,
                         log=lambda *a: None)
    assert result.steps == steps
    tokens, teacher = heldout_512
    report = perplexity_report(merge_lora(peft_model), tokens, 512, progress=False)
    ratio = {k: report.by_position[k] / teacher.by_position[k] for k in teacher.by_position}
    beyond = max(ratio["64-256"], ratio["256-1024"])  # 256-1024 holds positions 256-511 here
    if recipe == "lizard":
        assert beyond <= TRAINED_GROWTH_BOUND * ratio["0-64"], ratio
    else:
        assert ratio["256-1024"] >= TRAINED_PAPER_BREAKS_BY * ratio["0-64"], ratio
