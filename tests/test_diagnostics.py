"""The effect study's diagnostics on hand-made predictions, votes and records."""

import pytest

from selfguide_lite.diagnostics import (
    copy_share,
    format_share,
    input_copy_score,
    input_copy_share,
    input_quality,
    is_label,
    is_single_answer,
    label_quality,
)


def test_a_label_is_a_label_after_normalisation_and_nothing_else_is():
    labels = ["support", "undermine"]
    assert is_label("Support.", labels) and is_label(" undermine ", labels)
    assert not is_label("The perspective supports the claim", labels) and not is_label("", labels)
    assert format_share(["support", "It supports", "undermine", "x"], [["support"]] * 4, labels) == 50.0


def test_a_single_answer_has_no_continuation_and_no_extra_lines():
    refs = ["Who did the Han Chinese want to help the Mongols fight?"]
    assert is_single_answer("Who did the Han Chinese help?", refs)
    assert not is_single_answer("Who did they help?\n\nInput: How did no Who masterminded attacks?", refs)
    assert not is_single_answer("Who did they help?\nOutput: Who?", refs)
    assert not is_single_answer("Who did they help?\nWhat else?", refs)  # two lines, references have one
    assert is_single_answer("line one\nline two", ["a\nb"])  # as many lines as a reference: fine
    assert not is_single_answer("   ", refs)
    assert not is_single_answer("answer<|im_end|>", refs)
    assert format_share(["a", "a\nb"], [refs, refs], None) == 50.0
    assert format_share([], [], None) == 0.0


def test_copy_share_counts_predictions_that_contain_a_demo_answer():
    demos = ["Who did the Han Chinese want to help the Mongols fight?", ""]
    preds = ["who did the han chinese want to help the mongols fight", "Where is Paris?",
             "Q: Who did the Han Chinese want to help the Mongols fight? yes"]
    assert copy_share(preds, demos) == pytest.approx(200 / 3)
    assert copy_share(preds, [""]) == 0.0


def test_label_quality_compares_the_vote_with_greedy_on_the_inputs_it_keeps():
    refs = [["yes"], ["no"], ["yes"], ["no"]]
    votes = ["yes", "no", None, "yes"]  # right, right, dropped, wrong
    greedy = ["yes", "yes", "yes", "The answer is no"]  # right, wrong, right, not a label
    q = label_quality(refs, votes, greedy, classification=True)
    assert q["n"] == 4 and q["coverage"] == 75.0
    assert q["vote_score"] == 50.0  # 2 of 4, the dropped input counts as wrong
    assert q["greedy_score"] == 50.0
    assert q["vote_score_kept"] == pytest.approx(200 / 3)
    assert q["greedy_score_kept"] == pytest.approx(100 / 3)


def test_label_quality_for_generation_uses_rouge_and_checks_lengths():
    q = label_quality([["the cat sat"]], ["the cat sat"], ["a dog ran"], classification=False)
    assert q["vote_score"] == 100.0 and q["greedy_score"] == 0.0
    empty = label_quality([], [], [], classification=True)
    assert empty["n"] == 0 and empty["vote_score_kept"] is None
    with pytest.raises(ValueError):
        label_quality([["a"]], [], ["a"], classification=True)


def test_input_quality_measures_target_agreement_duplicates_and_length():
    annotated = [
        {"input": "claim: a b c perspective: d", "output": "support", "target_label": "support"},
        {"input": "claim: a b perspective: c d e f", "output": "support", "target_label": "undermine"},
        {"input": "claim: x perspective: y z", "output": "undermine", "target_label": "undermine"},
        {"input": "claim: q perspective: r s t", "output": "support", "target_label": "support"},
    ]
    stats = {"candidates": 20, "input_dropped": {"duplicate": 5, "length": 3}}
    q = input_quality(annotated, stats, ["one two", "one two three four"])
    assert q["target_agreement"] == 75.0
    assert q["duplicate_share"] == 25.0
    assert q["length_ratio"] == 2.0  # medians: 6 words (own: 6, 8, 5, 6) over 3 (real: 2, 4)
    assert q["labels_written"] == {"support": 3, "undermine": 1}
    gen = input_quality([{"input": "a b", "output": "c", "target_label": None}], {"candidates": 0}, [])
    assert gen["target_agreement"] is None and gen["duplicate_share"] == 0.0 and gen["length_ratio"] is None


def test_input_copies_and_the_copy_the_input_baseline():
    inputs = ["Who did no what did the Han want?", "Where is Paris?"]
    preds = ["who did no what did the han want", "Paris is in France."]
    assert input_copy_share(preds, inputs) == 50.0 and input_copy_share([], []) == 0.0
    refs = [["What did the Han want?"], ["Where is Paris?"]]
    score = input_copy_score(inputs, refs)
    assert 50.0 < score < 100.0  # the second input is its reference; the first shares most words
    assert input_copy_score(["x y"], [["a b"]]) == 0.0
