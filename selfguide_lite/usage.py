"""Using the result: an Ollama Modelfile beside each exported GGUF, `chat`, and `serve`.

The Modelfile's TEMPLATE is derived from the model's own chat template (read from the GGUF, the
same one training and sampling used): the Jinja template is rendered for one user turn whose text
is a placeholder, and the placeholder becomes Ollama's `{{ .Prompt }}`. That reproduces exactly the
single-turn prompt the student was trained on, whatever its family. A student without a chat
template gets the plain `{{ .Prompt }}` template: send it the task prompt (instruction, examples,
`Input: ...` and `Output:`), as the loop does.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from .engine.llama import gguf_model_info
from .engine.sampler import ModelInfo
from .errors import UserError
from .gguf_files import existing_gguf
from .prompts import PromptFormat
from .store import atomic_write_text

PLACEHOLDER = "\x00SELFGUIDE_PROMPT\x00"




def modelfile_text(gguf: Path, info: ModelInfo) -> str:
    fmt = PromptFormat.from_info(info)
    template = fmt.render(PLACEHOLDER).replace(PLACEHOLDER, "{{ .Prompt }}")
    stops = [s for s in dict.fromkeys([info.eos_token, *fmt.answer_stops]) if s]
    lines = [
        f"# Ollama Modelfile written by selfguide_lite for {gguf.name}",
        f"# ollama create my-student -f {gguf.with_suffix('.Modelfile').name}  &&  ollama run my-student",
        f"FROM ./{gguf.name}",
        f'TEMPLATE """{template}"""',
        *(f"PARAMETER stop {_quote(s)}" for s in stops),
        "PARAMETER temperature 0",
    ]
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_modelfile(gguf: str | Path) -> Path:
    """`X.gguf` -> `X.Modelfile` beside it (atomically)."""
    gguf = Path(gguf)
    return atomic_write_text(gguf.with_suffix(".Modelfile"), modelfile_text(gguf, gguf_model_info(gguf)))


def chat(gguf: str | Path, read: Callable[[str], str] = input, write: Callable[[str], None] = print,
         max_tokens: int = 256, n_ctx: int = 0) -> int:
    """A quick interactive check: each line you type is one single-turn prompt, answered greedily
    through the model's own prompt format. Empty line, `/exit` or end of input quits."""
    from .engine.sampler import Request, SamplingParams
    from .engine.sequential import LlamaCppSampler

    turns = 0
    with LlamaCppSampler(gguf, n_ctx=n_ctx) as sampler:  # n_ctx 0: the model's training context
        fmt = PromptFormat.from_info(sampler.info)
        write(f"chatting with {Path(gguf).name} ({'chat template' if fmt.is_chat else 'plain prompts'}); "
              "empty line or /exit to quit")
        while True:
            try:
                line = read("> ")
            except EOFError:
                break
            if not line.strip() or line.strip() == "/exit":
                break
            prompt = fmt.render(line.replace("\\n", "\n"))
            out = sampler.generate([Request(prompt, SamplingParams(max_tokens=max_tokens, stop=fmt.answer_stops))])
            write(out[0][0].text.strip())
            turns += 1
    return turns


def serve(gguf: str | Path, host: str = "127.0.0.1", port: int = 8000, n_ctx: int = 0,
          n_threads: int | None = None) -> None:
    """llama-cpp-python's OpenAI-compatible server (`/v1/completions`, `/v1/chat/completions`,
    `/v1/models`) on the student, until interrupted."""
    path = existing_gguf(gguf)
    from .engine.llama import llama_cpp_module, llama_defaults

    llama_cpp_module()  # the installation's check runs before the server's modules load llama.cpp
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as exc:
        raise UserError(f"the server needs llama-cpp-python's server extra ({exc.name} is missing): "
                        "pip install 'llama-cpp-python[server]'") from None
    import os

    model = ModelSettings(model=str(path), model_alias=path.stem, n_ctx=n_ctx, verbose=False,
                          n_threads=n_threads or os.cpu_count() or 1, n_threads_batch=n_threads or os.cpu_count() or 1)
    try:
        with llama_defaults():  # the server loads the model here, through llama-cpp-python's own `Llama`
            app = create_app(server_settings=ServerSettings(host=host, port=port), model_settings=[model])
    except ValueError as exc:
        raise UserError(f"llama.cpp could not load {path}: {exc}") from None
    print(f"serving {path.name} as '{path.stem}' on http://{host}:{port}/v1 (OpenAI API); Ctrl-C stops", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that
    # was there before it: make that handler end the process normally, so a stop is exit 0, no traceback.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="off")
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("server stopped", flush=True)


class _Stopped(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stopped()
