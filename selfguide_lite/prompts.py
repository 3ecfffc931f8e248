"""Every prompt the product sends, in one place, and the one function that renders them.

`PromptFormat.render` is the only way a prompt becomes text: sampling (llama.cpp, template read
from the GGUF), training (template read from the HF tokenizer) and evaluation all go through it,
so the three can never disagree on the format. With a chat template the user text becomes one
user turn and the answer is the assistant turn; without one the user text is used as is and the
answer follows it after a space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import UserError
from .tasks import Demo, Task


@dataclass(frozen=True)
class ModelInfo:
    """What prompt rendering needs to know about the student (from its GGUF or HF tokenizer)."""

    chat_template: str | None
    bos_token: str
    eos_token: str


# Stop strings that end an answer: the model starting the next example's field.
FIELD_STOPS = ("\nInput:", "\n\nInput", "\nOutput:")
INPUT_STOPS = ("\n\n", "\nInput:", "\nOutput:")


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


@dataclass(frozen=True)
class PromptFormat:
    """How one student wants its prompts: through its chat template, or plain text."""

    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def from_info(cls, info: ModelInfo) -> PromptFormat:
        return cls(info.chat_template or None, info.bos_token, info.eos_token)

    @classmethod
    def from_tokenizer(cls, tok, use_chat_template: bool = True) -> PromptFormat:
        """From a transformers tokenizer (training, import checks): the same format llama.cpp reads from the GGUF."""
        template = (tok.chat_template or None) if use_chat_template else None
        return cls(template, tok.bos_token or "", tok.eos_token or "")

    @property
    def is_chat(self) -> bool:
        return bool(self.chat_template)

    def describe(self) -> str:
        """How prompts are rendered, in words, for eval.json and the report."""
        return ("one user turn through the student's chat template" if self.is_chat
                else "plain text (no chat template: a base model, or a method that renders its own)")

    def render(self, user_text: str, answer_start: str = "") -> str:
        """The prompt text the model continues. Never starts with BOS: tokenizers add it.

        `answer_start` is written as the beginning of the answer (after a space in plain text, at the
        start of the assistant turn with a chat template), so the model continues it."""
        if answer_start:
            lead = answer_start if self.is_chat else f" {answer_start}"
            return self.render(user_text) + lead
        if not self.chat_template:
            return user_text
        try:
            text = _compile(self.chat_template).render(
                messages=[{"role": "user", "content": user_text}],
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise UserError(f"the model's chat template failed to render: {exc}") from None
        if self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        return text

    def answer(self, output: str) -> str:
        """The completion that trains the model to answer `output` and then stop."""
        lead = "" if self.is_chat else " "
        return f"{lead}{output.strip()}{self.eos_token}"

    @property
    def answer_stops(self) -> tuple[str, ...]:
        """Stops for free-form use of a student (chat, serve, an Ollama Modelfile): a chat student's turn
        ends itself; plain text ends where the next example's field begins. A task's answers end at
        FIELD_STOPS for every student."""
        return () if self.is_chat else FIELD_STOPS


# Where a task's answer ends, for every student and every round alike (evaluation and annotation use
# FIELD_STOPS; contract §5): where the student starts a new `Input:`/`Output:` field; without them a chat
# student writes more `Output:` lines until the token cap. Chosen on validation by
# scripts/answer_stops_study.py (docs/results/answer-stops.json): also ending one-line answers at a blank
# line (+0.11 mean validation over the 11 shared tasks) or at the line break (+0.34, one task -0.42)
# did not pass the rule committed before the run (+0.5 mean, no task below -2).
ANSWER_END_RULE = "fields"  # names the rule in stage cache keys: a new rule re-evaluates and re-synthesises


def _demo_block(demos: Sequence[Demo]) -> str:
    return "".join(f"Input: {d.input.strip()}\nOutput: {d.output.strip()}\n\n" for d in demos)


def task_prompt(task: Task, input_text: str) -> str:
    """Annotation, training and evaluation prompt: instruction + all demos + the new input (contract §2.3, 2.5)."""
    return f"{task.instruction}\n\n{_demo_block(task.demos)}Input: {input_text.strip()}\nOutput:"


def input_generation_prompt(task: Task, accepted: Sequence[str], target_label: str | None) -> str:
    """Ask for one new input, shown the demo inputs and recent accepted ones (contract §2.1)."""
    examples = [d.input.strip() for d in task.demos] + [a.strip() for a in accepted]
    shown = "".join(f"Input: {x}\n\n" for x in examples)
    ask = "Write one new input for this task, different from the ones above"
    if target_label is not None:
        ask += f', whose correct output is "{target_label}"'
    return f"{task.instruction}\n\nExample inputs for this task:\n\n{shown}{ask}.\nInput:"


# --- Self-Instruct (contract §3) -------------------------------------------------------------------

def instruction_generation_prompt(instructions: Sequence[str]) -> str:
    """A numbered list of tasks the model continues (contract §3.1)."""
    lines = "".join(f"{i}. {text.strip()}\n" for i, text in enumerate(instructions, 1))
    return f"Come up with a series of tasks:\n{lines}{len(instructions) + 1}."


def classification_check_prompt(examples: Sequence[tuple[str, bool]], instruction: str) -> str:
    """Few-shot yes/no: is this instruction a classification task with a finite label set? (contract §3.3)"""
    shots = "".join(
        f"Task: {text.strip()}\nIs it classification? {'Yes' if flag else 'No'}\n\n" for text, flag in examples
    )
    return (
        "Can the following task be regarded as a classification task with finite output labels?\n\n"
        f"{shots}Task: {instruction.strip()}\nIs it classification?"
    )


def output_first_prompt(instruction: str) -> str:
    """Classification instances: a class label first, then an input for it (contract §3.4)."""
    return (
        "Given the classification task definition and the class labels, generate an input that "
        "corresponds to each of the class labels. If the task doesn't require input, just generate "
        "the correct class label.\n\n"
        "Task: Classify the sentiment of the sentence into positive, negative, or mixed.\n"
        "Class label: mixed\nSentence: I enjoy the flavor of the restaurant but their service is too slow.\n"
        "Class label: positive\nSentence: I had a great day today. The weather was beautiful.\n"
        "Class label: negative\nSentence: I was really disappointed by the latest superhero movie.\n\n"
        "Task: Tell me if the following email is a promotion email or not.\n"
        "Class label: Promotion\nEmail: Check out our amazing new sale! We've got discounts on all items.\n"
        "Class label: Not Promotion\nEmail: We hope you are doing well. Let us know if you need any help.\n\n"
        f"Task: {instruction.strip()}\nClass label:"
    )


def input_first_prompt(instruction: str) -> str:
    """Other instances: an input (or none), then the output (contract §3.4)."""
    return (
        "Come up with examples for the following tasks. Try to generate multiple examples when "
        "possible. If the task doesn't require additional input, you can generate the output directly.\n\n"
        "Task: Which exercises are best for reducing belly fat at home?\n"
        "Output:\n- Lying Leg Raises\n- Leg In And Out\n- Plank\n- Side Plank\n- Sit-ups\n\n"
        "Task: Extract all the country names in the paragraph, list them separated by commas.\n"
        "Example 1\nParagraph: Dr. No is the sixth novel by the English author Ian Fleming. Set in "
        "Jamaica, it is about a British secret agent.\nOutput: English, British, Jamaica\n\n"
        "Task: Converting 85 F to Celsius.\nOutput: 85°F = 29.44°C\n\n"
        f"Task: {instruction.strip()}\n"
    )


def instruct_training_prompt(instruction: str, input_text: str = "") -> str:
    """The one fixed instruction/input/response template Self-Instruct data is trained with (contract §3).

    The input section is left out when the task needs none, so the model never learns to expect an
    empty field; the answer follows "### Response:" (after a space in plain text, as a separate
    assistant turn when the template goes through a chat template).
    """
    parts = [f"### Instruction:\n{instruction.strip()}\n\n"]
    if input_text.strip():
        parts.append(f"### Input:\n{input_text.strip()}\n\n")
    parts.append("### Response:")
    return "".join(parts)
