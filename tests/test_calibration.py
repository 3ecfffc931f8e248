"""Calibration arithmetic on hand-made probabilities (selfguide_lite.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from selfguide_lite.calibration import (
    batch_prior,
    calibrated_labels,
    label_probabilities,
)


def test_a_one_sided_prior_becomes_balanced_labels():
    # the student says label 0 for every input, but more strongly for some: that difference is its reading
    probs = np.array([[0.97, 0.03], [0.95, 0.05], [0.85, 0.15], [0.83, 0.17]])
    plain = calibrated_labels(probs, None, margin=0.0)
    assert [c.label for c in plain] == [0, 0, 0, 0]  # the uncalibrated argmax: one constant label
    prior = batch_prior(probs)
    assert prior == pytest.approx([0.9, 0.1])
    got = calibrated_labels(probs, prior, margin=0.0)
    assert [c.label for c in got] == [0, 0, 1, 1]
    assert got[0].margin == pytest.approx(np.log(0.97 / 0.9) - np.log(0.03 / 0.1))


def test_an_uninformative_batch_yields_no_confident_labels():
    probs = np.array([[0.8, 0.2]] * 5)
    got = calibrated_labels(probs, batch_prior(probs), margin=0.0)
    assert [c.label for c in got] == [None] * 5 and all(c.margin == pytest.approx(0.0) for c in got)


def test_the_margin_keeps_only_confident_labels():
    probs = np.array([[0.6, 0.3, 0.1], [0.34, 0.33, 0.33]])
    got = calibrated_labels(probs, np.full(3, 1 / 3), margin=0.5)
    assert got[0].label == 0 and got[0].margin == pytest.approx(np.log(2.0))
    assert got[1].label is None  # 0.34 vs 0.33: below the margin


def test_label_probabilities_and_priors():
    logprobs = np.log(np.array([[0.2, 0.6], [0.1, 0.1]]))  # summed log-probs need not sum to 1 over labels
    probs = label_probabilities(logprobs)
    assert probs == pytest.approx(np.array([[0.25, 0.75], [0.5, 0.5]]))
    assert batch_prior(probs) == pytest.approx([0.375, 0.625])


def test_each_score_labeller_divides_out_its_own_prior():
    from selfguide_lite.methods.labellers import LABELLERS

    class Scores:
        probs = np.array([[0.25, 0.75], [0.5, 0.5]])
        content_free = np.array([[0.9, 0.1]])

    assert LABELLERS["argmax"].prior(Scores) is None
    assert LABELLERS["batch-calibrated"].prior(Scores) == pytest.approx([0.375, 0.625])
    assert LABELLERS["content-free-calibrated"].prior(Scores) == pytest.approx([0.9, 0.1])


def test_the_fitted_prior_recovers_a_planted_label_bias_and_sorts_the_gold_rows():
    """Scores that favour label 0 by a constant log-odds of 2: the fitted prior divides exactly that out, so
    the gold rows (half of each label, separable once the bias is gone) are all labelled right."""
    import numpy as np

    from selfguide_lite.calibration import calibrated_labels, fitted_prior

    rng = np.random.default_rng(0)
    truth = np.array([0, 1] * 20)
    signal = np.where(truth == 0, 0.5, -0.5) + rng.normal(0, 0.1, truth.size)
    logits = np.stack([signal + 2.0, np.zeros_like(signal)], axis=1)  # the planted bias: +2 for label 0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert (probs.argmax(1) == 0).all()  # uncalibrated: one constant label
    prior = fitted_prior(probs, truth.tolist())
    assert np.log(prior[0] / prior[1]) == pytest.approx(2.0, abs=0.15)
    assert [c.label for c in calibrated_labels(probs, prior, 0.0)] == truth.tolist()
