from selfguide_lite.filters import DuplicateFilter, InputFilters, LengthWindow, NoiseFilter


def test_length_window_floors_std_at_quarter_of_mean():
    w = LengthWindow.from_examples(["x" * 40, "x" * 40])  # std 0 -> floored to 10
    assert (w.low, w.high) == (20.0, 60.0)
    assert w.check("x" * 20) is None and w.check("x" * 60) is None
    assert "short" in w.check("x" * 19) and "long" in w.check("x" * 61)


def test_noise_filter_catches_filler_and_markers_but_not_plain_text():
    f = NoiseFilter()
    for bad in ["Sure, here is a new input", "As an AI, I think", "Input: the team", "[input] x", "x Output: y",
                "Here is an example input about rain"]:
        assert f.check(bad), bad
    for good in ["The Tigers win the final", "I cannot believe the storm", "Here is the news from Leeds"]:
        assert f.check(good) is None, good


def test_duplicates_ignore_case_and_whitespace():
    d = DuplicateFilter(["The  Team wins"])
    assert d.check("the team   WINS") == "duplicate"
    assert d.check("the team loses") is None
    d.add("the team loses")
    assert d.check("The team loses ") == "duplicate"


def test_input_filters_apply_in_order():
    f = InputFilters(NoiseFilter(), DuplicateFilter(["Input: abcdefghij"]), LengthWindow(5, 30))
    assert f.check("   ")[0] == "empty"
    assert f.check("Input: " + "x" * 40)[0] == "length"  # too long wins over noise
    assert f.check("Input: abcdefghij")[0] == "noise"  # noise is checked before duplicates
    assert f.check("a fine input") is None
    f.accept("a fine input")
    assert f.check("A fine input")[0] == "duplicate"


def test_a_drop_stage_missing_from_the_stage_list_is_an_error_not_a_silent_gap():
    import pytest

    from selfguide_lite.methods.base import funnel_counts

    assert funnel_counts({"noise": 2}, ("empty", "noise")) == {"empty": 0, "noise": 2}
    with pytest.raises(ValueError, match="new_filter"):
        funnel_counts({"new_filter": 1}, ("empty", "noise"))
