"""Held-out perplexity overall and by position bucket."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from linearize.perplexity import PerplexityReport, length_stability, perplexity, perplexity_report
from tiny_models import tiny_model


class NoisyAfter(torch.nn.Module):
    """A model whose predictions get worse from position ``start`` on (a model that breaks past its training
    length), identical to ``model`` before it."""

    def __init__(self, model, start: int):
        super().__init__()
        self.model, self.start = model, start

    def forward(self, input_ids, **kwargs):
        logits = self.model(input_ids=input_ids, **kwargs).logits.clone()
        noise = torch.randn(logits[:, self.start :].shape, generator=torch.Generator().manual_seed(0)) * 4
        logits[:, self.start :] += noise
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    tokens = torch.randint(0, model.config.vocab_size, (4 * 256,), generator=torch.Generator().manual_seed(1))
    return model, tokens


def test_buckets_partition_the_predictions_and_combine_to_the_overall_number(setup):
    model, tokens = setup
    report = perplexity_report(model, tokens, 256, progress=False)
    assert list(report.by_position) == ["0-64", "64-256"]  # buckets that start beyond the window are left out
    assert report.tokens == 4 * 255
    # log ppl overall = token-weighted mean of the buckets' log ppl (positions 0..63 and 64..254).
    combined = (64 * math.log(report.by_position["0-64"]) + 191 * math.log(report.by_position["64-256"])) / 255
    assert math.isclose(math.log(report.overall), combined, rel_tol=1e-9)
    assert perplexity(model, tokens, 256, progress=False) == report.overall
    assert perplexity_report(model, tokens, 256, batch_size=1, progress=False).overall == pytest.approx(report.overall)


def test_a_model_that_breaks_past_a_position_shows_it_only_in_the_buckets_after_it(setup):
    model, tokens = setup
    clean = perplexity_report(model, tokens, 256, progress=False)
    broken = perplexity_report(NoisyAfter(model, 64), tokens, 256, progress=False)
    assert broken.by_position["0-64"] == pytest.approx(clean.by_position["0-64"], rel=1e-6)
    assert broken.by_position["64-256"] > 2 * clean.by_position["64-256"]
    assert broken.overall > clean.overall


def test_too_little_text_for_one_window_is_an_error(setup):
    model, tokens = setup
    with pytest.raises(ValueError, match="need at least 2048 tokens"):
        perplexity_report(model, tokens[:1000], 2048, progress=False)


def test_the_main_jobs_table_shows_both_lengths_and_the_positions_at_the_longest():
    from linearize.perplexity import PerplexityReport
    from linearize.pipeline import PipelineResult

    result = PipelineResult(teacher="t", recipe="r", out_dir=None, train_len=256)
    for stage, scale in (("teacher", 1.0), ("recovered", 1.2)):
        result.reports[stage] = {
            512: PerplexityReport(512, 100, 20.0 * scale, {"0-64": 40.0 * scale, "64-256": 20.0, "256-1024": 15.0}),
            2048: PerplexityReport(2048, 100, 17.0 * scale, {"0-64": 41.0, "64-256": 21.0, "256-1024": 16.0,
                                                             "1024-2048": 15.5 * scale}),
        }
        result.perplexity[stage] = 20.0 * scale
    lines = result.table().splitlines()
    assert lines[0].split() == ["model", "held-out", "ppl", "@512", "held-out", "ppl", "@2048"]
    assert lines[2].split() == ["teacher", "20.00", "17.00"] and lines[3].split() == ["recovered", "24.00", "20.40"]
    assert lines[5].split() == ["by", "position", "@2048", "0-64", "64-256", "256-1024", "1024-2048"]
    assert lines[8].split() == ["recovered", "41.00", "21.00", "16.00", "18.60"]
    # Inside the training length (0-256) the two agree; beyond it the worst bucket is 1024-2048, 1.2x.
    assert lines[9] == "recovered / teacher: 1.00x inside the training length (256 tokens), 1.20x in the worst bucket beyond it"
    by_length = result.to_dict()["heldout_perplexity_by_length"]
    assert by_length["recovered"]["2048"]["by_position"]["1024-2048"] == pytest.approx(18.6)


def test_length_stability_compares_the_worst_bucket_beyond_the_training_length_with_the_ratio_inside_it():
    teacher = PerplexityReport(2048, 2047, 12.0, {"0-64": 48.0, "64-256": 12.0, "256-1024": 9.0, "1024-2048": 13.0})
    student = PerplexityReport(2048, 2047, 13.0, {"0-64": 48.0 * 1.5, "64-256": 12.0, "256-1024": 9.0 * 1.2,
                                                  "1024-2048": 13.0 * 1.1})
    inside, beyond = length_stability(student, teacher, 256)
    assert inside == pytest.approx(1.5 ** (64 / 256))  # token-weighted over positions 0-255
    assert beyond == pytest.approx(1.2)
    inside, beyond = length_stability(student, teacher, 1024)  # 256-1024 now inside
    assert inside == pytest.approx(math.exp((64 * math.log(1.5) + 768 * math.log(1.2)) / 1024)) and beyond == pytest.approx(1.1)
    assert length_stability(student, teacher, 2048) is None  # nothing beyond
    assert length_stability(student, teacher, 100) == pytest.approx((1.5, 1.2))  # 64-256 straddles: on neither side
