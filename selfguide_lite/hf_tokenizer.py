"""Loading a checkpoint's tokenizer: one function, shared by resolving students, the GGUF importer,
training, export and the gate (a leaf module, so none of them imports another to get it)."""

from __future__ import annotations

import json
from pathlib import Path

GENERIC_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer. A tokenizer saved as the generic fast class (our GGUF imports, and
    the adapters and merges made from them) is loaded exactly as its tokenizer.json says: AutoTokenizer
    would swap in the model type's own class (Qwen2Tokenizer for any `qwen2`), whose pre-tokenizer may
    differ from the GGUF's."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(path) / "tokenizer_config.json"
    if config.is_file() and (Path(path) / "tokenizer.json").is_file():
        declared = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
        if declared in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))
