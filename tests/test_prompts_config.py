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
