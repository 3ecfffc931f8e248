from selfguide_lite.filters import DuplicateFilter, EmptyFilter, FilterChain, LengthWindow, NoiseFilter


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
    d.accept("the team loses")
    assert d.check("The team loses ") == "duplicate"


def test_input_filters_apply_in_order():
    f = FilterChain([("empty", EmptyFilter()), ("length", LengthWindow(5, 30)), ("noise", NoiseFilter()),
                     ("duplicate", DuplicateFilter(["Input: abcdefghij"]))])
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


def test_a_sixth_word_settles_which_lead_in_the_answer_checks_remove():
    """AnswerRunOn judges an answer before the sample ends only once its lead-in is settled: every lead-in
    the pattern removes spans at most PREAMBLE_MAX_WORDS words, so after a sixth word has begun no
    continuation changes what is removed; and partial matching says when none can form at all."""
    import itertools

    from selfguide_lite.filters import _PREAMBLE, _PREAMBLE_PARTIAL, PREAMBLE_MAX_WORDS, AnswerChecks

    most_words = 0
    for the, adj, noun, is_, mark, sep in itertools.product(
            ("", "the", "THE"), ("", "final", "correct"), ("answer", "output", "response", "result"), ("", "is"),
            (":", "-", " :"), (" ", "\n", " \n ")):
        parts = [p for p in (the, adj, noun, is_, mark) if p]
        lead = sep + sep.join(parts) + sep
        match = _PREAMBLE.match(lead + "x")
        assert match is not None and (lead + "x")[match.end():] == "x" and AnswerChecks.clean(lead + "x") == "x"
        most_words = max(most_words, len(match.group(0).split()))
        # while the lead-in is forming, partial matching must not call it impossible
        for cut in range(1, len(lead.strip()) + 1):
            assert _PREAMBLE_PARTIAL.match(lead.strip()[:cut], partial=True) is not None
    assert most_words == PREAMBLE_MAX_WORDS
    assert _PREAMBLE_PARTIAL.match("Who did", partial=True) is None  # no lead-in can begin this way
    assert _PREAMBLE_PARTIAL.match("The original", partial=True) is None


def _random_samples(seed: int, n: int) -> list[str]:
    """Texts mixing lead-ins, the demonstrations' answers, words, blank lines and punctuation."""
    import random

    rng = random.Random(seed)
    pieces = ["The", "the", "answer", "is", ":", "Answer:", "correct", "Output -", "cat", "dog", "a", "red",
              "Σ", "ΑΣ", "'", "big cat", "the big cat", "Big, Cat!", "x" * 12, ".", "?"]
    seps = [" ", " ", " ", "\n", "\n\n", "", "\t"]
    return ["".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(1, 14))) for _ in range(n)]


def test_answer_run_on_stops_only_samples_the_vote_rejects():
    """The exactness AnswerRunOn promises: for every prefix at which it stops a sample, the vote would
    have rejected the whole sample (by its length window or answer checks), over thousands of texts."""
    from selfguide_lite.filters import AnswerChecks, AnswerRunOn, LengthWindow, NoiseFilter
    from selfguide_lite.methods.labellers import self_consistency_vote

    demos = ["cat", "the big cat", "dog", "ΑΣ"]  # "ΑΣ" lowercases to "ας" only at a word end
    length, checks = LengthWindow.from_examples(demos), AnswerChecks.from_examples(demos)
    stopped = 0
    for input_text in ("a dog and a cat", "the big cat"):
        for filters in ((length, checks), (length, None), (None, checks)):
            rule = AnswerRunOn.for_vote(*filters, input_text)
            for text in _random_samples(len(input_text), 1500):
                vote = self_consistency_vote([text], labels=None, noise=NoiseFilter(()), length=filters[0],
                                             threshold=0.5, checks=filters[1], input_text=input_text)
                first = next((i for i in range(1, len(text) + 1) if rule.exceeded(text[:i])), None)
                if first is not None:
                    stopped += 1
                    assert vote.answer is None and sum(vote.rejected.values()) == 1, (text, text[:first])
    assert stopped > 1000  # the rule does stop samples (a bound that never fires would pass trivially)
    assert AnswerRunOn.for_vote(None, None, "x") is None


def test_answer_run_on_judges_settled_text():
    from selfguide_lite.engine.sampler import settled_text
    from selfguide_lite.filters import AnswerChecks, AnswerRunOn, LengthWindow

    rule = AnswerRunOn.for_vote(LengthWindow(0, 9.5), AnswerChecks(("big cat",), 1), "a small dog")
    assert not rule.exceeded("The answer is") and not rule.exceeded("The answer is: a big dog")
    assert rule.exceeded("The answer is: a big dogs") and rule.exceeded("Who did go there")
    assert not rule.exceeded("The answer is: abcdefghijk")  # five words: "answer is:" may still become a longer lead-in
    assert not rule.exceeded("dog\n") and rule.exceeded("dog\ncat")  # a second line
    assert not rule.exceeded("big cat") and rule.exceeded("big cat ")  # the copy is judged on whole words
    assert AnswerRunOn.for_vote(None, AnswerChecks(("big cat",), 1), "the big cat").banned == ()
    # a tail that may still become a stop string does not count: the stop would cut it off again
    assert settled_text("answer\nInp", ("\nInput:",)) == "answer" and settled_text("answer\nI", ("\nOutput:",)) == "answer\nI"
    assert settled_text("answer", ("\nInput:",)) == "answer"


