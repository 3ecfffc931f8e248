import pytest

from selfguide_lite.metrics import exact_match, normalize, rouge_l, score_predictions


def test_normalize_strips_punctuation_case_and_whitespace():
    assert normalize("  Hello,   WORLD!! ") == "hello world"
    assert normalize("E.") == "e"
    assert normalize("don't") == "dont"
    assert normalize("") == ""


def test_exact_match_max_over_references():
    assert exact_match("Positive.", ["negative", "positive"]) == 1.0
    assert exact_match("positive sentiment", ["positive"]) == 0.0
    assert exact_match("", ["x"]) == 0.0
    assert exact_match("", [""]) == 1.0


def test_rouge_l_uses_stemming_and_max_over_references():
    # "running" and "run" share a stem only with the stemmer on.
    assert rouge_l("the dogs running", ["the dog runs"]) == pytest.approx(1.0)
    assert rouge_l("a b c d", ["x y", "a b x d"]) == pytest.approx(0.75)
    assert rouge_l("", ["anything"]) == 0.0


def test_score_predictions_counts_missing_as_empty():
    refs = {"1": ["yes"], "2": ["no"], "3": ["maybe so"]}
    preds = {"1": "Yes!", "3": "maybe"}
    s = score_predictions(refs, preds)
    assert s["n"] == 3
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["rougeL"] == pytest.approx((1.0 + 0.0 + 2 / 3) / 3 * 100)
