"""Self-Guide as a `Method`: one task; the student writes inputs, labels them by vote, trains on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.base import Sampler
from ..errors import UserError
from ..prompts import PromptFormat, task_prompt
from .base import ClassBalance, Method, PromptFn, SynthResult, register


@register
class SelfGuide(Method):
    name = "self-guide"
    own_flags = ("--labels", "--task-type", "--num-inputs")

    def check_inputs(self) -> None:
        if not self.cfg.task:
            raise UserError("self-guide needs --task")

    def input_files(self) -> list[str]:
        return [self.cfg.task] if self.cfg.task else []

    def eval_task_files(self) -> list[str]:
        return self.input_files()

    def default_run_name(self) -> str:
        return Path(self.cfg.task).stem if self.cfg.task else "self-guide"

    def settings(self) -> dict[str, Any]:
        """Settings added after runs had been cached enter the key only where they act
        (answer_repeat_limit: generation, > 0; strip_input_echo: on, the default since it was measured): a
        setting that changes nothing must not invalidate finished runs, and a run cached with the echo
        filter's original behaviour stays valid for a config that asks for it."""
        settings = self.cfg.selfguide.model_dump()
        if self.eval_tasks()[0].is_classification or not settings["answer_repeat_limit"]:
            del settings["answer_repeat_limit"]
        if not settings["strip_input_echo"]:
            del settings["strip_input_echo"]
        return settings

    def synthesize(self, sampler: Sampler, seed: int) -> SynthResult:
        from ..selfguide import synthesize

        task = self.eval_tasks()[0]
        return synthesize(task, sampler, self.cfg.selfguide, PromptFormat.from_info(sampler.info), seed=seed)

    def eval_prompt(self) -> tuple[PromptFn, tuple[str, ...]]:
        return task_prompt, ()

    @staticmethod
    def class_balance(stats: dict[str, Any], dropped: list[dict[str, Any]]) -> ClassBalance | None:
        if stats.get("type") != "classification":
            return None
        kept = dict(stats.get("train_per_label") or {})
        labelled = dict(kept)
        for d in dropped:
            if d.get("stage") == "balance":
                labelled[d["output"]] = labelled.get(d["output"], 0) + 1
        return ClassBalance(labelled, kept, list(stats.get("missing_labels") or []))

    @staticmethod
    def funnel_steps(stats: dict[str, Any]) -> list[tuple[str, int]]:
        left = stats.get("candidates", 0)
        steps = [("candidate inputs", left)]
        for stage, n in (stats.get("input_dropped") or {}).items():
            left -= n
            steps.append((f"- {stage}", left))
        for stage, n in (stats.get("annotation_dropped") or {}).items():
            left -= n
            steps.append((f"- {stage.replace('_', ' ')}", left))
        if stats.get("balance_dropped"):
            left -= stats["balance_dropped"]
            steps.append(("- balance", left))
        steps.append(("training rows", stats.get("train", left)))
        return steps
