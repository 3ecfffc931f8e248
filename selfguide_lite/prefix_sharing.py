"""Shared-prefix training: run the prompt that every row of a micro-batch shares once, not once per row.

Every Self-Guide training row is the same long prompt (chat template, instruction, all
demonstrations) followed by a short input and a shorter answer, and the loss covers only the answer.
The plain path recomputes that prompt for every row. Here the common prefix (found on token ids, so
tokenizer merges at the boundary cannot break it) runs once, with gradients; its keys and values are
repeated for the rows, whose tails run on top of them; backpropagation goes through both. With
dropout 0 this is the same computation reordered: loss and gradients equal the plain per-row ones
within float tolerance (tests/test_prefix_sharing.py). The same idea appears in GRPO trainers that
share one prompt's forward pass across its completions ("Prefix Grouper").

Rows without a useful shared prefix (Self-Instruct: a different instruction per row) fall back to
one forward over the full rows micro-batch by micro-batch, still computing logits only from the
earliest trained position (`trained_positions_loss`): with a 262K-token vocabulary (Gemma 3) the
prompt positions' logits would be most of the step's memory.
"""

from __future__ import annotations

import functools
from typing import Any

IGNORE = -100
MIN_SHARED_TOKENS = 32  # below this, the saving does not pay for the second forward call


def shared_prefix_length(input_ids, attention_mask, labels) -> int:
    """Tokens at the start that every row has in common, stopping before any row's first trained token.

    The prefix must end at least one token before the earliest label, so that every logit the loss
    needs is computed in the tails' forward pass."""
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    differs = (~same).nonzero()
    common = int(differs[0]) if len(differs) else input_ids.shape[1]
    if not bool((labels != IGNORE).any()):
        return 0
    return max(0, min(common, _first_label(labels) - 1))


def shared_prefix_loss(model, input_ids, attention_mask, labels, prefix_len: int,
                       num_items: int | None = None) -> Any:
    """Sum of token cross-entropies over the labelled tokens, divided by `num_items` (or their count), as
    the plain causal-LM loss; computed with the first `prefix_len` tokens run once for the batch."""
    import torch
    import torch.nn.functional as F

    batch, length = input_ids.shape
    p = prefix_len
    from transformers import DynamicCache

    cache = DynamicCache()  # passed in, not read back: trainers may wrap forward and drop the returned cache
    argument, keeps_logits = _forward_arguments(model)
    # Logits only where the loss reads them: the vocabulary projection is about a fifth of a small
    # model's per-token work, and neither the prompt nor the inputs are trained on.
    prefix_keep = {"logits_to_keep": 1} if keeps_logits else {}
    model(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p], use_cache=True,
          **{argument: cache}, **prefix_keep)
    if cache.get_seq_length() != p:
        raise RuntimeError(f"the prefix forward filled {cache.get_seq_length()} of {p} cache positions")
    cache.batch_repeat_interleave(batch)  # differentiable: gradients of every row flow back into the prefix
    positions = torch.arange(p, length, device=input_ids.device).expand(batch, -1)
    # tail position j predicts token p + j + 1; the earliest one the loss needs predicts the first label
    first = _first_label(labels)
    skip = max(0, first - p - 1) if keeps_logits else 0
    tail_keep = {"logits_to_keep": length - p - skip} if keeps_logits else {}
    tails = model(input_ids=input_ids[:, p:], attention_mask=attention_mask, position_ids=positions,
                  use_cache=True, **{argument: cache}, **tail_keep)
    logits = tails.logits[:, :-1, :]
    targets = labels[:, p + skip + 1:]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    count = num_items if num_items is not None else int((labels[:, 1:] != IGNORE).sum())
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def _first_label(labels) -> int:
    """Index of the earliest trained token of any row (the sequence length when none is)."""
    import torch

    labelled = labels != IGNORE
    rows = labelled.any(dim=1)
    if not bool(rows.any()):
        return labels.shape[1]
    return int(torch.where(rows, labelled.int().argmax(dim=1), labels.shape[1]).min())


def _forward_arguments(model) -> tuple[str, bool]:
    """(name of the cache argument, whether forward takes `logits_to_keep`). transformers 5.24 renamed
    `past_key_values` to `cache`; models without `logits_to_keep` compute every position's logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_signature(type(base))


@functools.cache
def _forward_signature(model_class) -> tuple[str, bool]:
    """Read once per model class, not once per micro-batch."""
    import inspect

    params = inspect.signature(model_class.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def trained_positions_loss(model, input_ids, attention_mask, labels, num_items: int | None = None) -> Any:
    """The plain loss (one forward over the full rows) with logits only from the position that predicts
    the earliest trained token on: the same numbers as `plain_loss` without the prompt's logits."""
    import torch
    import torch.nn.functional as F

    length = input_ids.shape[1]
    _, keeps_logits = _forward_arguments(model)
    skip = max(0, _first_label(labels) - 1) if keeps_logits else 0
    keep = {"logits_to_keep": length - skip} if keeps_logits else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **keep).logits[:, :-1, :]
    targets = labels[:, skip + 1:]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    count = num_items if num_items is not None else int((labels[:, 1:] != IGNORE).sum())
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def plain_loss(model, input_ids, attention_mask, labels, num_items: int | None = None) -> Any:
    """The reference: one forward over every full row (what the trainer computes without sharing)."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, :]
    targets = labels[:, 1:]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    count = num_items if num_items is not None else int((targets != IGNORE).sum())
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def shared_prefix_trainer_class(base):
    """`base` (trl's SFTTrainer) with `compute_loss` running a micro-batch's shared prefix once."""

    class SharedPrefixTrainer(base):
        shared_batches = 0
        plain_batches = 0
        _checkpointing: bool | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, mask, labels = inputs.get("input_ids"), inputs.get("attention_mask"), inputs.get("labels")
            # activation checkpointing turns the model's cache off, and with it the shared prefix (it is
            # set before training starts, so one look per trainer)
            if self._checkpointing is None:
                self._checkpointing = any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
            checkpointing = self._checkpointing
            if return_outputs or not model.training or ids is None or mask is None or labels is None:
                self.plain_batches += 1
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            p = 0 if checkpointing or ids.shape[0] < 2 else shared_prefix_length(ids, mask, labels)
            if p < MIN_SHARED_TOKENS:
                self.plain_batches += 1
                loss = trained_positions_loss(model, ids, mask, labels, num_items_in_batch)
            else:
                self.shared_batches += 1
                loss = shared_prefix_loss(model, ids, mask, labels, p, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return loss

    return SharedPrefixTrainer
