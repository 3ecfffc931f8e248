"""Interrupted synthesis resumes from the journal: same result, finished requests not decoded again."""

import pytest

from selfguide_lite.config import SelfGuideConfig
from selfguide_lite.engine.journal import JournaledSampler
from selfguide_lite.methods.selfguide import synthesize
from selfguide_lite.prompts import PromptFormat
from tests.helpers import ScriptedSampler
from tests.test_selfguide import TASK, scripted

CFG = SelfGuideConfig(labeler="vote", num_inputs=30, wave_size=6, num_samples=4)


class Crash(Exception):
    pass


def crashing_after(n_calls: int) -> ScriptedSampler:
    sampler = ScriptedSampler(scripted)
    calls = {"n": 0}
    inner_generate = sampler.generate

    def generate(requests):
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise Crash()
        return inner_generate(requests)

    sampler.generate = generate
    return sampler


def test_resume_replays_finished_requests_and_gives_the_same_result(tmp_path):
    reference = synthesize(TASK, ScriptedSampler(scripted), CFG, PromptFormat(), seed=3)

    journal = tmp_path / "journal.jsonl"
    with pytest.raises(Crash):
        synthesize(TASK, JournaledSampler(crashing_after(3), journal, "id-1"), CFG, PromptFormat(), seed=3)
    assert len(journal.read_text().splitlines()) == 1 + 3 * CFG.wave_size  # header + three finished waves

    fresh = ScriptedSampler(scripted)
    resumed_sampler = JournaledSampler(fresh, journal, "id-1")
    resumed = synthesize(TASK, resumed_sampler, CFG, PromptFormat(), seed=3)
    assert resumed.train == reference.train and resumed.dropped == reference.dropped
    assert resumed_sampler.replayed == 3 * CFG.wave_size
    total = CFG.num_inputs + reference.stats["inputs_accepted"]
    assert len(fresh.requests) == total - 3 * CFG.wave_size  # nothing decoded twice
    resumed_sampler.discard()
    assert not journal.exists()


def test_journal_of_another_identity_is_not_replayed(tmp_path):
    journal = tmp_path / "journal.jsonl"
    with pytest.raises(Crash):
        synthesize(TASK, JournaledSampler(crashing_after(2), journal, "student-A"), CFG, PromptFormat(), seed=3)
    fresh = ScriptedSampler(scripted)
    other = JournaledSampler(fresh, journal, "student-B")
    synthesize(TASK, other, CFG, PromptFormat(), seed=3)
    assert other.replayed == 0


def test_a_line_cut_by_a_crash_is_ignored(tmp_path):
    journal = tmp_path / "journal.jsonl"
    with pytest.raises(Crash):
        synthesize(TASK, JournaledSampler(crashing_after(2), journal, "x"), CFG, PromptFormat(), seed=3)
    with open(journal, "a") as fh:
        fh.write('{"key": "abc", "compl')
    resumed = JournaledSampler(ScriptedSampler(scripted), journal, "x")
    assert journal.read_text().endswith("\n")  # the cut line is gone before anything is appended
    synthesize(TASK, resumed, CFG, PromptFormat(), seed=3)
    assert resumed.replayed == 2 * CFG.wave_size
    again = JournaledSampler(ScriptedSampler(scripted), journal, "x")
    synthesize(TASK, again, CFG, PromptFormat(), seed=3)
    assert len(again.inner.requests) == 0  # a third run finds everything in the journal
