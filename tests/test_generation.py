"""Constant-memory generation that matches prefill exactly, for every variant and family."""

import copy

import pytest
import torch

from linearize import AttentionSpec, linearize_model
from linearize.cache_linearized import HybridStateLayer, LinearizedCache
from tiny_models import FAMILIES, tiny_model

VARIANTS = {
    "liger-gla": AttentionSpec(window=8),
    "lizard": AttentionSpec(feature_map="hedgehog", gate="learned", normalize=True, window=8, num_sinks=4, mix="learned"),
    "lolcats": AttentionSpec(feature_map="hedgehog", gate="none", window=8, mix="shared"),
    "gla": AttentionSpec(branches="linear", window=0),
    "swa": AttentionSpec(branches="window", window=8, num_sinks=2),
}


def _student(family, variant, softmax_layers=(1,), seed=0):
    model = linearize_model(tiny_model(family, seed=seed), VARIANTS[variant], softmax_layers=list(softmax_layers))
    with torch.no_grad():  # learned parts away from their initial values
        for name, p in model.named_parameters():
            if ".core." in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _prefill_then_steps(model, ids, n_steps, attention_mask=None):
    prompt = ids[:, : ids.shape[1] - n_steps]
    mask = attention_mask[:, : prompt.shape[1]] if attention_mask is not None else None
    out = model(prompt, attention_mask=mask, use_cache=True)
    cache, logits = out.cache, [out.logits]
    for t in range(prompt.shape[1], ids.shape[1]):
        mask = attention_mask[:, : t + 1] if attention_mask is not None else None
        out = model(ids[:, t : t + 1], attention_mask=mask, cache=cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_plus_steps_equals_one_forward(family, variant):
    model = _student(family, variant)
    ids = torch.randint(3, 128, (2, 30))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        stepped, cache = _prefill_then_steps(model, ids, n_steps=12)
    assert isinstance(cache, LinearizedCache)
    assert (stepped - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chunked_prefill_leaves_the_same_state(variant):
    model = _student("llama", variant, softmax_layers=())
    ids = torch.randint(3, 128, (2, 37))
    with torch.no_grad():
        whole = model(ids, use_cache=True).cache
        pieces = None
        for start, end in [(0, 5), (5, 21), (21, 37)]:
            pieces = model(ids[:, start:end], cache=pieces, use_cache=True).cache
    for layer_whole, layer_pieces in zip(whole.layers, pieces.layers):
        assert layer_whole.get_seq_length() == layer_pieces.get_seq_length() == 37
        for name, tensor in layer_whole.state.items():
            assert torch.allclose(tensor.float(), layer_pieces.state[name].float(), atol=1e-5), name


@pytest.mark.parametrize("variant", ["liger-gla", "lizard", "lolcats"])
def test_greedy_generate_with_cache_equals_recomputing(variant):
    model = _student("qwen3", variant)
    prompt = torch.randint(3, 128, (1, 14))
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
        recomputed = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape == (1, 26)
    assert torch.equal(cached, recomputed)


def test_sampling_with_cache_equals_recomputing():
    model = _student("gemma2", "liger-gla")
    prompt = torch.randint(3, 128, (2, 10))
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        with torch.no_grad():
            outputs.append(
                model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=20, use_cache=use_cache, pad_token_id=0)
            )
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_left_padded_batch_row_equals_the_row_alone(variant):
    model = _student("mistral", variant)
    torch.manual_seed(1)
    long, short = torch.randint(3, 128, (1, 20)), torch.randint(3, 128, (1, 13))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 7, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :7] = 0
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
        alone = model.generate(short, max_new_tokens=8, do_sample=False, pad_token_id=0)
        together_logits, _ = _prefill_then_steps(model, torch.cat([batch, together[:, 20:24]], 1), 4,
                                                 torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], 1))
        alone_logits, _ = _prefill_then_steps(model, torch.cat([short, alone[:, 13:17]], 1), 4)
    assert torch.equal(together[1, 20:], alone[0, 13:])
    assert (together_logits[1, 7:] - alone_logits[0]).abs().max().item() <= 1e-4


def test_cache_memory_stops_growing_once_the_window_is_full():
    model = _student("llama", "liger-gla", softmax_layers=())  # window 8
    ids = torch.randint(3, 128, (1, 40))
    sizes = []
    with torch.no_grad():
        cache = model(ids[:, :1], use_cache=True).cache
        sizes.append(cache.nbytes())
        for t in range(1, 40):
            cache = model(ids[:, t : t + 1], cache=cache, use_cache=True).cache
            sizes.append(cache.nbytes())
    assert len(set(sizes)) == 1 and sizes[0] > 0  # fixed-size buffers from the first token on
    assert all(isinstance(layer, HybridStateLayer) for layer in cache.layers)


def test_softmax_layers_of_an_inter_layer_hybrid_keep_a_growing_kv_cache():
    model = _student("llama", "liger-gla", softmax_layers=(1,))
    with torch.no_grad():
        small = model(torch.randint(3, 128, (1, 10)), use_cache=True).cache.nbytes()
        large = model(torch.randint(3, 128, (1, 50)), use_cache=True).cache.nbytes()
    # only layer 1's keys and values grow: 40 more tokens x 2 kv heads x 16 dims x (k, v) x 4 bytes
    assert large - small == 40 * 2 * 16 * 2 * 4


def test_beam_search_runs_and_matches_greedy_with_one_beam():
    model = _student("qwen2", "lizard")
    prompt = torch.randint(3, 128, (1, 9))
    with torch.no_grad():
        beams = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
        one = model.generate(prompt, max_new_tokens=6, num_beams=1, do_sample=False, pad_token_id=0)
        recomputed = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=False,
                                    pad_token_id=0)
    assert beams.shape == one.shape == (1, 15)
    assert torch.equal(beams, recomputed)


def test_teacher_mode_reproduces_the_teacher():
    teacher = tiny_model("qwen3")
    student = linearize_model(copy.deepcopy(teacher), VARIANTS["lizard"])
    ids = torch.randint(3, 128, (2, 25))
    student.set_attention_mode("teacher")
    with torch.no_grad():
        assert (student(ids, use_cache=False).logits - teacher(ids, use_cache=False).logits).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="attention mode 'x'"):
        student.set_attention_mode("x")


def test_a_forward_with_gradients_builds_no_cache_unless_asked():
    """In eval mode a plain forward caches (as transformers models do), but not one that will be
    backpropagated: gradients cannot pass a decoding state on the kernels, which would fall back to the
    reference for every training-style call made in eval mode."""
    model = _student("llama", "liger-gla").eval()
    ids = torch.randint(3, 128, (1, 12))
    with torch.no_grad():
        assert isinstance(model(ids).cache, LinearizedCache)
    out = model(ids, labels=ids)
    assert out.cache is None
    out.loss.backward()
    assert isinstance(model(ids, use_cache=True).cache, LinearizedCache)
