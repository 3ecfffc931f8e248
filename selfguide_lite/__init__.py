"""selfguide_lite: make a small language model better at a task using only data it writes itself."""

__version__ = "0.1.0"
