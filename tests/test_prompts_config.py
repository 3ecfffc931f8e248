import pytest

from selfguide_lite.config import load_config
from selfguide_lite.errors import UserError
from selfguide_lite.prompts import PromptFormat, task_prompt
from selfguide_lite.tasks import Demo, Task
from selfguide_lite.train import render_rows

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TASK = Task("t", "Say the topic.", [Demo("rain", "weather")], "classification", ["weather", "sports"])


def test_plain_format_is_the_text_itself_and_answers_after_a_space():
    fmt = PromptFormat(None, "<s>", "</s>")
    user = task_prompt(TASK, "the match")
    assert fmt.render(user) == user == "Say the topic.\n\nInput: rain\nOutput: weather\n\nInput: the match\nOutput:"
    assert fmt.answer("sports ") == " sports</s>"
    assert "\nInput:" in fmt.answer_stops


def test_chat_format_renders_one_user_turn_and_strips_bos():
    fmt = PromptFormat(CHATML, "<s>", "<|im_end|>")
    text = fmt.render("hello")
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.answer("sports") == "sports<|im_end|>"
    assert fmt.answer_stops == ()


def test_training_rows_use_the_same_render_function():
    fmt = PromptFormat(CHATML, "<s>", "<|im_end|>")
    rows = render_rows([{"prompt": task_prompt(TASK, "x"), "completion": "weather"}], fmt)
    assert rows[0]["prompt"] == fmt.render(task_prompt(TASK, "x"))
    assert rows[0]["completion"] == "weather<|im_end|>"


def test_broken_chat_template_is_a_user_error():
    with pytest.raises(UserError):
        PromptFormat("{{ raise_exception('no system role') }}").render("x")


def test_config_layers_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("selfguide: {num_inputs: 50}\ntrain: {lora_r: 8}\n")
    cfg = load_config(path, {"selfguide": {"num_inputs": 60, "vote_threshold": None}, "loop": {"rounds": 1}})
    assert cfg.selfguide.num_inputs == 60 and cfg.selfguide.vote_threshold == 0.3
    assert cfg.train.lora_r == 8 and cfg.train.lora_alpha == 16 and cfg.loop.rounds == 1
    assert cfg.export.quant == "auto" and cfg.train.quantization == "auto"


@pytest.mark.parametrize("text", ["selfguide: {num_inputs: 0}\n", "nonsense_key: 1\n", "train: {quantization: int3}\n"])
def test_bad_config_is_a_user_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError):
        load_config(path)


# The stage cache keys of Self-Guide's synthesis (method.settings()) computed by the code before the
# small-student preset existed (commit f40f86d, with its keys: see the variants below). A change that
# moves them makes every finished run recompute its synthesis, so it must be deliberate.
PINNED_SYNTH_KEYS = {
    ("classification", "full"): "07f319b342fc7bbe",
    ("classification", "no_label_filter"): "d79cb6aae4e40e2c",
    ("classification", "no_strip_input_echo"): "8fec2cbb96ab9561",
    ("classification", "original"): "9deae8e965c268dd",
    ("generation", "full"): "a5865be2960fd7d6",
    ("generation", "no_label_filter"): "5de3d4a6fa07e4f6",
    ("generation", "no_repeat_limit"): "07f319b342fc7bbe",
    ("generation", "no_strip_input_echo"): "c75c34346c411bd3",
    ("generation", "original"): "9deae8e965c268dd",
}
TODAY_KEYS = {
    "full": {},
    "no_label_filter": {"selfguide": {"labels_in_vote": "any"}},
    "no_repeat_limit": {"selfguide": {"without": ["repeat_limit"]}},
    "no_strip_input_echo": {"selfguide": {"without": ["strip_input_echo"]}},
    "original": {"selfguide": {"preset": "original"}},
}
OLD_KEYS = {
    "full": {},
    "no_label_filter": {"selfguide": {"constrain_labels": False, "label_filter": False}},
    "no_repeat_limit": {"selfguide": {"answer_repeat_limit": 0}},
    "no_strip_input_echo": {"selfguide": {"strip_input_echo": False}},
    "original": {"selfguide": {"input_lead": False, "field_filter": False, "answer_checks": False, "balance_floor": 0,
                               "context_sampling": "request", "answer_repeat_limit": 0, "strip_input_echo": False}},
}


def _synth_key(task_kind, over, tmp_path, warnings, labeller="vote"):
    from selfguide_lite.config import load_config
    from selfguide_lite.methods import method_for
    from selfguide_lite.store import value_hash
    from selfguide_lite.toy_models.headline import headline_task_path

    gen = tmp_path / "gen.json"
    gen.write_text('{"Definition": ["Fix it."], "Positive Examples": [{"input": "a b", "output": "a"}], '
                   '"Instances": [{"input": "c d", "output": ["c"]}]}')
    task, task_type = (headline_task_path(), None) if task_kind == "classification" else (gen, "generation")
    cfg = load_config(None, {**over, "task": str(task), "task_type": task_type}, warn=warnings.append)
    method = method_for(cfg)
    # the default labeller is `auto`: the loop synthesises with the labeller its signal check chose
    return value_hash((method.with_labeller(labeller) if labeller else method).settings())


@pytest.mark.parametrize("task_kind,variant", sorted(PINNED_SYNTH_KEYS))
def test_default_and_ablation_runs_keep_their_synthesis_cache_keys(task_kind, variant, tmp_path):
    """Written with today's keys or with the old ones (read with one warning line), a run asks for the
    synthesis its finished stages were cached under."""
    today, old = [], []
    assert _synth_key(task_kind, TODAY_KEYS[variant], tmp_path, today) == PINNED_SYNTH_KEYS[(task_kind, variant)]
    assert _synth_key(task_kind, OLD_KEYS[variant], tmp_path, old) == PINNED_SYNTH_KEYS[(task_kind, variant)]
    assert today == [] and len(old) == (variant not in ("full", "no_repeat_limit"))  # answer_repeat_limit: 0 is off
    assert all(line.startswith("warning: command line: old setting names") for line in old)


def test_auto_resolved_to_the_vote_keeps_the_key_and_unresolved_has_its_own(tmp_path):
    """Runs cached before `auto` became the default were labelled by the vote: a round whose signal check
    chooses the vote asks for their synthesis (the pins above); `auto` itself, before the check, keys apart
    (the `synth` command runs the check inside the stage), and so does another labeller."""
    unresolved = _synth_key("classification", {}, tmp_path, [], labeller=None)
    calibrated = _synth_key("classification", {}, tmp_path, [], labeller="content-free-calibrated")
    assert unresolved == "ebf3d8943d7c2e4a"  # pinned on purpose when auto became the default
    assert len({unresolved, calibrated, PINNED_SYNTH_KEYS[("classification", "full")]}) == 3
    assert _synth_key("generation", {}, tmp_path, [], labeller=None) == PINNED_SYNTH_KEYS[("generation", "full")]


def test_an_old_config_file_loads_with_one_warning_line(tmp_path):
    from selfguide_lite.config import load_config

    path = tmp_path / "old.yaml"
    path.write_text("seeds: s.jsonl\nselfguide:\n  input_lead: false\n  context_sampling: request\n"
                    "  strip_input_echo: true\n  constrain_labels: false\n")
    lines: list[str] = []
    cfg = load_config(path, warn=lines.append)
    assert cfg.seed_tasks == "s.jsonl"
    assert cfg.selfguide.without == ["input_lead", "wave_context"] and cfg.selfguide.labels_in_vote == "exact"
    assert not cfg.selfguide.uses("input_lead") and cfg.selfguide.uses("strip_input_echo")
    assert len(lines) == 1 and str(path) in lines[0] and "selfguide.input_lead" in lines[0]


def test_the_original_preset_switches_every_small_student_change_off():
    from typing import get_args

    from selfguide_lite.config import SelfGuideConfig, SmallStudentChange

    original = SelfGuideConfig(preset="original")
    every_change_off = SelfGuideConfig(without=list(get_args(SmallStudentChange)))
    for change in get_args(SmallStudentChange):
        assert SelfGuideConfig().uses(change) and not original.uses(change) and not every_change_off.uses(change)
    assert (original.repeat_limit, original.floor) == (0, 0) == (every_change_off.repeat_limit, every_change_off.floor)
    assert (SelfGuideConfig().repeat_limit, SelfGuideConfig().floor) == (3, 32)


def test_gold_examples_enter_the_signal_stage_key_only_where_they_act():
    """`selfguide.gold_per_label` came after runs were cached: at 0 the section reads as it did before."""
    from selfguide_lite.config import Config

    off = Config().selfguide
    assert "gold_per_label" not in off.key_dump() and off.key_dump() == off.model_dump(exclude={"gold_per_label"})
    assert Config.model_validate({"selfguide": {"gold_per_label": 4}}).selfguide.key_dump()["gold_per_label"] == 4
