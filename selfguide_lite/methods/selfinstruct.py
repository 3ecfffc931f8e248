"""Self-Instruct as a `Method`: general instructions from a seed pool, evaluated zero-shot on tasks."""

from __future__ import annotations

from typing import Any

from ..engine.base import Sampler
from ..errors import UserError
from ..prompts import PromptFormat
from ..store import file_hash
from ..tasks import load_seed_pool, load_task
from .base import Method, PromptFn, SynthResult, register


@register
class SelfInstruct(Method):
    name = "self-instruct"
    own_flags = ("--seeds", "--eval-tasks", "--num-instructions")

    def check_inputs(self) -> None:
        if not self.cfg.seeds:
            raise UserError("self-instruct needs --seeds")
        if not self.eval_task_files():
            raise UserError("self-instruct needs --eval-tasks (Natural Instructions task files to evaluate on)")
        load_seed_pool(self.cfg.seeds, self.cfg.selfinstruct.bad_seed_lines)  # a bad seed file fails here

    def input_files(self) -> list[str]:
        return [*self.eval_task_files(), *([self.cfg.seeds] if self.cfg.seeds else [])]

    def eval_task_files(self) -> list[str]:
        return list(self.cfg.eval_tasks or ([self.cfg.task] if self.cfg.task else []))

    def eval_tasks(self):
        return [load_task(p) for p in self.eval_task_files()]  # as written: no label/type overrides

    def default_run_name(self) -> str:
        return "self-instruct"

    def settings(self) -> dict[str, Any]:
        return {**self.cfg.selfinstruct.model_dump(), "seeds": file_hash(self.cfg.seeds) if self.cfg.seeds else ""}

    def synthesize(self, sampler: Sampler, seed: int) -> SynthResult:
        from ..selfinstruct import bootstrap

        seeds = load_seed_pool(self.cfg.seeds, self.cfg.selfinstruct.bad_seed_lines, warn=print)
        return bootstrap(seeds, sampler, self.cfg.selfinstruct, PromptFormat.from_info(sampler.info), seed=seed)

    def extra_outputs(self, result: SynthResult) -> dict[str, list[dict[str, Any]]]:
        return {"instances.jsonl": result.train}

    def training_rows(self, result: SynthResult) -> list[dict[str, Any]]:
        from ..selfinstruct import selfinstruct_training_rows

        return selfinstruct_training_rows(result.train)

    def uses_chat_template(self) -> bool:
        """`selfinstruct.template: fixed` trains and evaluates with the plain instruction template even
        when the student has a chat template."""
        return self.cfg.selfinstruct.template == "auto"

    def eval_prompt(self) -> tuple[PromptFn, tuple[str, ...]]:
        from ..selfinstruct import zero_shot_prompt

        return zero_shot_prompt, ("\n###",)

    @staticmethod
    def funnel_steps(stats: dict[str, Any]) -> list[tuple[str, int]]:
        steps = [("instruction candidates", stats.get("candidates", 0))]
        left = stats.get("candidates", 0)
        for stage, n in (stats.get("instruction_dropped") or {}).items():
            left -= n
            steps.append((f"- {stage}", left))
        steps += [("with instances", stats.get("instructions_with_instances", 0)), ("training rows", stats.get("train", 0))]
        return steps
