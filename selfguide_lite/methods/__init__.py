"""Self-training methods behind one interface (`base.Method`), looked up by name."""

from .base import METHODS, Method, SynthResult, method_class, method_for, method_of_stats, stage_seed

__all__ = ["METHODS", "Method", "SynthResult", "method_class", "method_for", "method_of_stats", "stage_seed"]
