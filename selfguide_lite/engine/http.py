"""Sampling through one or more OpenAI-compatible `/v1/completions` servers.

Works with llama.cpp's `llama-server`, llama-cpp-python's server (`selfguide_lite serve`), vLLM
and SGLang. Every sample is one HTTP request (`n=1`, `seed = params.seed + i` for sample i), so a
result does not depend on which server answered it or on what else was in flight. Through
llama-cpp-python's server on the same GGUF it equals `LlamaCppSampler`'s exactly (llama-server
decodes sequences in batches, whose kernels may round differently). Many requests are in flight
at once (asyncio + httpx), spread over the endpoints by least outstanding requests. A failed
attempt (429, 5xx, timeout, dropped connection) moves to an endpoint that has not failed that
sample, with exponential backoff once all have; an endpoint that refuses connections (or fails
DOWN_AFTER times in a row) is set aside for a while, then probed one request at a time.

Label constraints (`params.choices`) go out as a GBNF `grammar` (llama.cpp servers). An endpoint
that rejects that (400/422) is remembered and gets vLLM's `guided_choice` instead (a server that
calls itself vLLM in `/v1/models` gets that from the start, since vLLM ignores unknown fields),
and if that is rejected too, unconstrained requests (the pipeline's label filter drops off-label
answers).

Prompt rendering needs the student's chat template and special tokens, and `max_tokens` sizing
needs its tokenizer: both come from the model's GGUF when `tokenizer_gguf` is given (vocabulary
only, fast; the exact match for the served model), otherwise from the server (llama-server's
`/props`; `/tokenize` or `/extras/tokenize` for token counts).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import progress
from ..errors import UserError
from .sampler import (
    Completion,
    ModelInfo,
    Request,
    Sampler,
    SamplingParams,
    choices_grammar,
    truncate_at_stop,
)

# How an endpoint is asked to constrain a classification answer, in the order they are tried.
CONSTRAINT_MODES = ("grammar", "guided_choice", "none")
MAX_DOWN_S = 30.0  # longest time an endpoint that refuses connections is left alone
DOWN_AFTER = 3  # consecutive failures (429, 5xx, timeouts) that set an endpoint aside like a refusal does


def normalize_endpoint(url: str) -> str:
    """`http://host:8000`, `http://host:8000/`, `http://host:8000/v1` -> `http://host:8000`."""
    base = url.strip().rstrip("/")
    if not base:
        raise UserError("empty endpoint URL")
    if "://" not in base:
        base = "http://" + base
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


class _Retryable(Exception):
    """An attempt failed in a way another try (maybe elsewhere) can fix."""

    def __init__(self, message: str, down: bool = False) -> None:
        super().__init__(message)
        self.down = down  # the endpoint itself looks gone: set it aside for a while


class _Rejected(Exception):
    """The server refused the request itself (4xx): retrying the same body cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Endpoint:
    url: str
    model: str | None = None
    owned_by: str = ""
    probed: bool = False
    constraint: str = "grammar"  # first CONSTRAINT_MODES entry this endpoint accepts
    down_until: float = 0.0
    failures: int = 0  # consecutive failed attempts; sets how long it is set aside
    served: int = 0

    @property
    def openai_style(self) -> bool:
        """vLLM / SGLang name some sampling fields differently from llama.cpp."""
        return self.owned_by.lower() in ("vllm", "sglang")


@dataclass
class _Run:
    """State of one `generate` call inside its event loop."""

    cond: asyncio.Condition
    clients: list[Any]
    outstanding: list[int]
    probe_locks: list[asyncio.Lock]
    results: list[list[Completion | None]] = field(default_factory=list)


class HttpSampler(Sampler):
    """Samples from OpenAI-compatible completion servers; see the module docstring.

    `max_in_flight` is per endpoint; `timeout_s` bounds one HTTP request; a sample is given up only
    when it has failed `retries` + 1 times and on every endpoint, and then `generate` raises
    `UserError`. `stats` holds the samples answered per endpoint (`served_by`), the retries, the
    constraint mode each endpoint ended up with, and the model name each server reported.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        tokenizer_gguf: str | Path | None = None,
        max_in_flight: int = 8,
        timeout_s: float = 120.0,
        retries: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        urls = list(dict.fromkeys(normalize_endpoint(u) for u in endpoints))
        if not urls:
            raise UserError("HttpSampler needs at least one endpoint URL")
        if max_in_flight < 1 or timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise UserError("max_in_flight >= 1, timeout_s > 0, retries >= 0 and backoff_s >= 0 are required")
        self.endpoints = [_Endpoint(u) for u in urls]
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.retried = 0
        self._rng = random.Random()
        self._sync_client = None
        self._tokenize_via: tuple[str, str] | None = None  # (endpoint url, dialect) that tokenizes
        self._special_tokens = 0  # tokens a server's tokenizer adds to every text (BOS)
        self._token_cache: dict[str, int] = {}
        self._info: ModelInfo | None = None
        self._vocab_model = None
        self._vocab = None
        self._eos_id: int | None = None
        if tokenizer_gguf is not None:
            self._load_vocab(Path(tokenizer_gguf))

    # --- model description and tokenization ---------------------------------------------------

    def _load_vocab(self, path: Path) -> None:
        from .llama import llama_cpp_module, load_vocab_only, model_info

        llama_cpp = llama_cpp_module()
        model = load_vocab_only(path)
        self._vocab_model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._info = model_info(model)
        eos = llama_cpp.llama_vocab_eos(self._vocab)
        self._eos_id = eos if eos >= 0 else None

    @property
    def info(self) -> ModelInfo:  # type: ignore[override]
        if self._info is None:
            self._info = self._server_info()
        return self._info

    @property
    def served_by(self) -> dict[str, int]:
        """Samples answered by each endpoint (normalised URL -> count)."""
        return {e.url: e.served for e in self.endpoints}

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "served_by": self.served_by,
            "retries": self.retried,
            "constraint": {e.url: e.constraint for e in self.endpoints},
            "models": {e.url: e.model for e in self.endpoints},  # as each server names it (/v1/models)
        }

    def _client(self):
        httpx = _httpx()

        if self._sync_client is None:
            self._sync_client = httpx.Client(timeout=min(self.timeout_s, 30.0))
        return self._sync_client

    def _need_gguf(self, what: str, tried: list[str]) -> UserError:
        return UserError(
            f"could not get the model's {what} from {', '.join(e.url for e in self.endpoints)} "
            f"({'; '.join(tried) or 'no answer'}); pass the model's GGUF for tokenization (tokenizer_gguf)"
        )

    def _server_info(self) -> ModelInfo:
        """llama-server's `GET /props` carries the chat template (and, in recent builds, BOS/EOS)."""
        httpx = _httpx()

        tried = []
        for ep in self.endpoints:
            try:
                r = self._client().get(f"{ep.url}/props")
                if r.status_code != 200:
                    tried.append(f"{ep.url}/props: HTTP {r.status_code}")
                    continue
                props = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                tried.append(f"{ep.url}/props: {_describe(exc, self.timeout_s)}")
                continue
            if not isinstance(props, dict) or "chat_template" not in props:
                tried.append(f"{ep.url}/props: no chat_template")
                continue
            return ModelInfo(
                chat_template=props.get("chat_template") or None,
                bos_token=str(props.get("bos_token") or ""),
                eos_token=str(props.get("eos_token") or ""),
            )
        raise self._need_gguf("chat template", tried)

    def count_tokens(self, text: str) -> int:
        if self._vocab is not None:
            return len(self._tokenize_local(text))
        if text not in self._token_cache:
            if len(self._token_cache) > 4096:
                self._token_cache.clear()
            self._token_cache[text] = self._count_remote(text)
        return self._token_cache[text]

    def _tokenize_local(self, text: str) -> list[int]:
        from .llama import llama_cpp_module

        llama_cpp = llama_cpp_module()

        raw = text.encode("utf-8")
        size = len(raw) + 8
        for _ in range(2):
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self._vocab, raw, len(raw), buf, size, False, True)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise RuntimeError("llama_tokenize failed")  # the second buffer is exactly large enough

    def _tokenize_remote(self, url: str, dialect: str, text: str) -> list[int]:
        if dialect == "llama-server":
            r = self._client().post(f"{url}/tokenize", json={"content": text, "add_special": False,
                                                              "parse_special": True})
        elif dialect == "llama-cpp-python":
            r = self._client().post(f"{url}/extras/tokenize", json={"input": text})
        else:  # vLLM / SGLang
            r = self._client().post(f"{url}/tokenize", json={"prompt": text, "add_special_tokens": False})
        r.raise_for_status()
        tokens = r.json()["tokens"]
        if not isinstance(tokens, list):
            raise ValueError("no token list")
        return tokens

    def _count_remote(self, text: str) -> int:
        httpx = _httpx()

        if self._tokenize_via is not None:
            url, dialect = self._tokenize_via
            try:
                return max(0, len(self._tokenize_remote(url, dialect, text)) - self._special_tokens)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                self._tokenize_via = None  # that server went away: find another
        tried = []
        for ep in self.endpoints:
            for dialect in ("llama-server", "llama-cpp-python", "vllm"):
                try:
                    # Some tokenizers add BOS whatever we ask: measure what an empty text gets.
                    special = len(self._tokenize_remote(ep.url, dialect, ""))
                    n = len(self._tokenize_remote(ep.url, dialect, text))
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    tried.append(f"{ep.url} ({dialect}): {_describe(exc, self.timeout_s)}")
                    continue
                self._tokenize_via, self._special_tokens = (ep.url, dialect), special
                return max(0, n - special)
        raise self._need_gguf("tokenizer", tried[-3:])

    # --- sampling -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        requests = list(requests)
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            results = asyncio.run(self._generate(requests))
        else:  # called from inside an event loop (a notebook): run ours on a worker thread
            box: dict[str, Any] = {}

            def work() -> None:
                try:
                    box["out"] = asyncio.run(self._generate(requests))
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    box["err"] = exc

            worker = threading.Thread(target=work, name="selfguide-http", daemon=True)
            worker.start()
            worker.join()
            if "err" in box:
                raise box["err"]
            results = box["out"]
        out: list[list[Completion]] = []
        for comps in results:
            row = []
            for c in comps:
                assert c is not None
                if c.n_tokens < 0:  # the server reported no usage: count the tokens ourselves
                    c = Completion(c.text, self.count_tokens(c.text), c.finish_reason)
                row.append(c)
            out.append(row)
        return out

    async def _generate(self, requests: list[Request]) -> list[list[Completion | None]]:
        httpx = _httpx()

        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
        clients = [httpx.AsyncClient(base_url=e.url, timeout=timeout, limits=limits) for e in self.endpoints]
        run = _Run(
            cond=asyncio.Condition(),
            clients=clients,
            outstanding=[0] * len(self.endpoints),
            probe_locks=[asyncio.Lock() for _ in self.endpoints],
            results=[[None] * r.params.n for r in requests],
        )
        tasks = [
            asyncio.ensure_future(self._sample(run, ri, i, req))
            for ri, req in enumerate(requests)
            for i in range(req.params.n)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients:
                await c.aclose()
        return run.results

    def _capacity(self, ep: _Endpoint) -> int:
        """Requests an endpoint may have in flight. One that was set aside gets a single probe at a time
        until it answers again, so a dead server costs one request per retry period, not a wave."""
        return 1 if ep.down_until > 0 else self.max_in_flight

    async def _acquire(self, run: _Run, failed_on: set[int]) -> int:
        """An endpoint with a free slot: one this sample has not failed on if any is up, least busy first."""
        async with run.cond:
            while True:
                now = time.monotonic()
                up = [k for k, e in enumerate(self.endpoints) if e.down_until <= now]
                pool = [k for k in up if k not in failed_on] or up
                free = [k for k in pool if run.outstanding[k] < self._capacity(self.endpoints[k])]
                if free:
                    best = min(free, key=lambda k: (run.outstanding[k], self.endpoints[k].served))
                    run.outstanding[best] += 1
                    return best
                if pool:  # all busy: a release wakes us
                    await run.cond.wait()
                    continue
                # Every endpoint is set aside: wait for the first to come back (or a change).
                wake = max(0.01, min(e.down_until for e in self.endpoints) - now)
                try:
                    await asyncio.wait_for(run.cond.wait(), timeout=wake)
                except asyncio.TimeoutError:
                    pass

    async def _release(self, run: _Run, k: int) -> None:
        async with run.cond:
            run.outstanding[k] -= 1
            run.cond.notify_all()

    async def _sample(self, run: _Run, ri: int, i: int, req: Request) -> None:
        failed_on: set[int] = set()
        attempts = 0
        last_error = "no attempt made"
        while True:
            k = await self._acquire(run, failed_on)
            ep = self.endpoints[k]
            attempts += 1
            try:
                comp = await self._attempt(run, k, req, req.params.seed + i)
            except _Retryable as exc:
                last_error = f"{ep.url}: {exc}"
                failed_on.add(k)
                self._failed(run, ep, exc.down)
            except _Rejected as exc:
                raise UserError(f"{ep.url} rejected a completion request: {exc}") from None
            else:
                ep.failures, ep.down_until = 0, 0.0
                ep.served += 1
                run.results[ri][i] = comp
                progress.sample_done()
                return
            finally:
                await self._release(run, k)
            now = time.monotonic()
            everywhere = all(k2 in failed_on or e.down_until > now for k2, e in enumerate(self.endpoints))
            if attempts > self.retries and everywhere:
                names = ", ".join(e.url for e in self.endpoints)
                raise UserError(
                    f"no inference server answered a request after {attempts} attempts "
                    f"(endpoints: {names}); last error: {last_error}"
                )
            self.retried += 1
            if everywhere:  # nowhere fresh to go: back off, then start over on every endpoint
                failed_on.clear()
                await asyncio.sleep(self.backoff_s * 2 ** min(attempts - 1, 10) * (0.75 + 0.5 * self._rng.random()))
            # else: an endpoint this sample has not failed on is up: go there at once

    def _failed(self, run: _Run, ep: _Endpoint, unreachable: bool) -> None:
        """Count a failed attempt; a refused connection or DOWN_AFTER failures in a row set the endpoint
        aside for backoff_s * 2^failures (at most MAX_DOWN_S)."""
        now = time.monotonic()
        if ep.down_until > now:
            return  # requests already in flight when it was set aside do not compound it
        ep.failures += 1
        if unreachable or ep.failures >= DOWN_AFTER:
            ep.down_until = now + min(MAX_DOWN_S, max(self.backoff_s, 0.01) * 2 ** min(ep.failures, 10))

    async def _probe(self, run: _Run, k: int) -> None:
        """Learn the served model's name (vLLM requires it) and the server family, once per endpoint."""
        httpx = _httpx()

        ep = self.endpoints[k]
        async with run.probe_locks[k]:
            if ep.probed:
                return
            try:
                r = await run.clients[k].get("/v1/models")
            except httpx.TransportError as exc:
                raise _Retryable(_describe(exc, self.timeout_s), down=_is_connection_error(exc)) from None
            if r.status_code in (429, 503) or r.status_code >= 500:
                raise _Retryable(_http_error(r), down=r.status_code == 503)
            try:
                data = r.json()["data"][0] if r.status_code == 200 else {}
                ep.model = str(data["id"]) if data.get("id") else None
                ep.owned_by = str(data.get("owned_by") or "")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                ep.model = None
            if ep.owned_by.lower() == "vllm" and ep.constraint == "grammar":
                ep.constraint = "guided_choice"  # vLLM ignores `grammar` silently rather than rejecting it
            ep.probed = True

    def _body(self, ep: _Endpoint, prompt: str, p: SamplingParams, seed: int, constraint: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_k": p.top_k,  # 0: off (llama.cpp); vLLM spells that -1, below
            "top_p": p.top_p,
            "min_p": p.min_p,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
            "seed": seed,
            "n": 1,
            "stream": False,
        }
        if ep.model:
            body["model"] = ep.model
        if ep.openai_style and p.top_k <= 0:
            body["top_k"] = -1
        # llama-cpp-python's server defaults repeat_penalty to 1.1: always send ours.
        body["repetition_penalty" if ep.openai_style else "repeat_penalty"] = p.repeat_penalty
        if p.stop:
            body["stop"] = list(p.stop)
        if p.ignore_eos and not p.choices:
            body["ignore_eos"] = True
            if self._eos_id is not None and not ep.openai_style:  # llama-cpp-python knows only logit_bias
                body["logit_bias"] = {str(self._eos_id): -1.0e9}
        if p.choices:
            if constraint == "grammar":
                body["grammar"] = choices_grammar(p.choices)
            elif constraint == "guided_choice":
                body["guided_choice"] = list(p.choices)
        return body

    async def _attempt(self, run: _Run, k: int, req: Request, seed: int) -> Completion:
        httpx = _httpx()

        ep = self.endpoints[k]
        if not ep.probed:
            await self._probe(run, k)
        p = req.params
        mode = ep.constraint if p.choices else "none"
        while True:
            body = self._body(ep, req.prompt, p, seed, mode)
            try:
                r = await run.clients[k].post("/v1/completions", json=body)
            except httpx.TransportError as exc:
                raise _Retryable(_describe(exc, self.timeout_s), down=_is_connection_error(exc)) from None
            if r.status_code == 200:
                break
            if r.status_code == 429 or r.status_code >= 500:
                raise _Retryable(_http_error(r), down=r.status_code == 503)
            if r.status_code in (400, 422) and p.choices and mode != "none":
                # The endpoint may not know this way of constraining: try the next one.
                mode = CONSTRAINT_MODES[CONSTRAINT_MODES.index(mode) + 1]
                continue
            raise _Rejected(r.status_code, _http_error(r))
        if p.choices and CONSTRAINT_MODES.index(mode) > CONSTRAINT_MODES.index(ep.constraint):
            ep.constraint = mode  # it answered this way: remember, so later requests go straight there
        try:
            out = r.json()
            choice = out["choices"][0]
            text = choice.get("text")
            if not isinstance(text, str):
                raise TypeError("no text")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Retryable("answer is not an OpenAI completion") from None
        usage = out.get("usage") if isinstance(out, dict) else None
        n_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        text, cut = truncate_at_stop(text, p.stop)
        if cut:
            finish = "stop"
        return Completion(text=text, n_tokens=int(n_tokens) if isinstance(n_tokens, int) else -1,
                          finish_reason=finish)

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None
        if self._vocab_model is not None:
            from .llama import llama_cpp_module

            llama_cpp_module().llama_model_free(self._vocab_model)
            self._vocab_model = None
            self._vocab = None


def _httpx():
    """httpx, or its successor httpx2 (same API; what huggingface_hub installs nowadays)."""
    try:
        import httpx
    except ImportError:
        try:
            import httpx2 as httpx
        except ImportError:
            raise UserError("sampling from inference servers needs httpx: pip install httpx") from None
    return httpx


def _is_connection_error(exc: BaseException) -> bool:
    """The endpoint is unreachable or dropped us (refused, reset, died mid-answer), not just slow."""
    httpx = _httpx()

    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                            httpx.ReadError, httpx.WriteError))


def _describe(exc: BaseException, timeout_s: float) -> str:
    httpx = _httpx()

    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {timeout_s:g}s ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc or type(exc).__name__})"
    return str(exc) or type(exc).__name__


def _http_error(r) -> str:
    """`HTTP 500: <the server's message, one line>`."""
    detail = ""
    try:
        data = r.json()
        if isinstance(data, dict):
            err = data.get("error", data.get("detail", data.get("message", "")))
            detail = err.get("message", "") if isinstance(err, dict) else str(err)
    except ValueError:
        detail = r.text
    detail = " ".join(str(detail).split())[:300]
    return f"HTTP {r.status_code}" + (f": {detail}" if detail else "")


__all__ = ["HttpSampler", "normalize_endpoint"]
