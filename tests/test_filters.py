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


def test_the_preamble_bounds_hold_for_every_lead_in_the_answer_checks_remove():
    """answer_run_on_limit stops a sample early only if the vote must reject it: that needs the most a
    removed lead-in can hold, in visible characters and in lines, to be a true bound (and a tight one)."""
    import itertools

    from selfguide_lite.filters import _PREAMBLE, PREAMBLE_MAX_LINES, PREAMBLE_MAX_VISIBLE, AnswerChecks

    most_visible = most_lines = 0
    for the, adj, noun, is_, mark, sep in itertools.product(
            ("", "the", "THE"), ("", "final", "correct"), ("answer", "output", "response", "result"), ("", "is"),
            (":", "-"), (" ", "\n", " \n ")):
        parts = [p for p in (the, adj, noun, is_, mark) if p]
        lead = sep + sep.join(parts) + sep
        match = _PREAMBLE.match(lead + "x")
        assert match is not None and (lead + "x")[match.end():] == "x" and AnswerChecks.clean(lead + "x") == "x"
        removed = match.group(0)
        most_visible = max(most_visible, sum(not c.isspace() for c in removed))
        most_lines = max(most_lines, sum(1 for ln in removed.splitlines() if ln.strip()))
    assert (most_visible, most_lines) == (PREAMBLE_MAX_VISIBLE, PREAMBLE_MAX_LINES)


def test_run_on_limit_and_settled_text():
    from selfguide_lite.engine.sampler import RunOnLimit, settled_text

    limit = RunOnLimit(max_visible_chars=5, max_lines=2)
    assert not limit.exceeded("a b c d e") and limit.exceeded("abcdef")
    assert not limit.exceeded("a\n\nb\n") and limit.exceeded("a\nb\nc")
    # a tail that may still become a stop string does not count: the stop would cut it off again
    assert settled_text("answer\nInp", ("\nInput:",)) == "answer" and settled_text("answer\nI", ("\nOutput:",)) == "answer\nI"
    assert settled_text("answer", ("\nInput:",)) == "answer"
