"""HttpSampler against real `selfguide_lite serve` processes and small fake servers on 127.0.0.1.

Real servers: the same synthesis as the in-process sampler (two servers share the load), one
server killed mid-run, a journaled run crashed and resumed without sending anything twice, and
label-constrained classification. Fake servers (http.server in a thread): 500s and hangs end in
one clear UserError, and the grammar -> guided_choice -> unconstrained fallback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from selfguide_lite import progress
from selfguide_lite.config import SelfGuideConfig
from selfguide_lite.engine.http import HttpSampler, normalize_endpoint
from selfguide_lite.engine.journal import JournaledSampler
from selfguide_lite.engine.sampler import Completion, Request, Sampler, SamplingParams
from selfguide_lite.engine.sequential import LlamaCppSampler
from selfguide_lite.errors import UserError
from selfguide_lite.methods.selfguide import synthesize
from selfguide_lite.prompts import PromptFormat, task_prompt
from selfguide_lite.toy_models.headline import headline_task

CFG = SelfGuideConfig(labeler="vote", num_inputs=24, wave_size=12, num_samples=3, annotate_temperature=0.7, length_filter=False)
SEED = 5


# --- helpers ---------------------------------------------------------------------------------------

class Recording(Sampler):
    """Passes requests through and records every sample asked for as (prompt, seed)."""

    def __init__(self, inner: Sampler, crash_after: int | None = None) -> None:
        self.inner, self.info, self.crash_after = inner, inner.info, crash_after
        self.calls = 0
        self.sent: list[tuple[str, int]] = []

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise Crash()
        self.sent.extend((r.prompt, r.params.seed + i) for r in requests for i in range(r.params.n))
        return self.inner.generate(requests)


class Crash(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path


def server_cmd(gguf: Path, port: int) -> list[str]:
    """`python -m selfguide_lite serve`, with one llama.cpp thread: on a shared 2-core box a server
    with a thread per core waits on busy cores (seconds per request)."""
    return [sys.executable, "-m", "selfguide_lite", "serve", str(gguf), "--port", str(port), "--threads", "1"]


def start_servers(gguf: Path, log_dir: Path, count: int) -> list[Server]:
    """Server processes (`server_cmd`), each waited for (60 s at most) until /v1/models answers."""
    servers = []
    try:
        for _ in range(count):
            port = _free_port()
            log = log_dir / f"serve-{port}.log"
            with open(log, "w") as fh:
                proc = subprocess.Popen(server_cmd(gguf, port), stdout=fh, stderr=subprocess.STDOUT)
            servers.append(Server(proc, f"http://127.0.0.1:{port}", log))
        deadline = time.monotonic() + 60
        for srv in servers:
            while True:
                try:
                    with urllib.request.urlopen(f"{srv.url}/v1/models", timeout=2):
                        break
                except OSError:
                    if srv.proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"server did not come up: {srv.log.read_text()[-2000:]}")
                    time.sleep(0.2)
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: list[Server]) -> None:
    for srv in servers:
        if srv.proc.poll() is None:
            srv.proc.terminate()
    for srv in servers:
        try:
            srv.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(timeout=10)


@dataclass
class Fake:
    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def fake_server(answer: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> Iterator[Fake]:
    """A tiny OpenAI-lookalike: GET /v1/models names a model; POST /v1/completions is `answer(body)`.
    Every POST body is recorded. `answer` may block on the `release` event (set on exit)."""
    release = threading.Event()
    fake = Fake("")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout) and closed the connection
                pass

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "fake", "owned_by": "test"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path != "/v1/completions":
                self._send(404, {"error": "not found"})
                return
            fake.posts.append(body)
            status, payload = answer(body) if not release.is_set() else (503, {})
            self._send(status, payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.release = release  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@contextmanager
def counting_proxy(target: str) -> Iterator[Fake]:
    """A pass-through proxy in front of a real server that records every completion request it forwards."""

    def forward(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(f"{target}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as err:
            return err.code, {"error": err.read().decode(errors="replace")}

    with fake_server(forward) as proxy:
        yield proxy


def completion(text: str) -> tuple[int, dict[str, Any]]:
    return 200, {"object": "text_completion", "choices": [{"text": text, "index": 0, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _quiet():
    progress.set_mode("quiet")
    yield
    progress.set_mode("auto")


@pytest.fixture(scope="module")
def gguf(reference) -> Path:
    return reference / "round-1" / "model-q8_0.gguf"


@pytest.fixture(scope="module")
def servers(gguf, tmp_path_factory) -> Iterator[list[str]]:
    procs = start_servers(gguf, tmp_path_factory.mktemp("serve-logs"), 2)
    try:
        yield [s.url for s in procs]
    finally:
        stop_servers(procs)


@pytest.fixture(scope="module")
def local(gguf):
    """The in-process reference: synthesis result and the samples it needed, as (prompt, seed)."""
    progress.set_mode("quiet")
    # One thread: the box is shared, and llama.cpp's results do not depend on the thread count.
    with LlamaCppSampler(gguf, n_ctx=2048, n_threads=1) as sampler:
        rec = Recording(sampler)
        result = synthesize(headline_task(), rec, CFG, PromptFormat.from_info(sampler.info), seed=SEED)
    return result, rec.sent


def synth(sampler: Sampler):
    return synthesize(headline_task(), sampler, CFG, PromptFormat.from_info(sampler.info), seed=SEED)


# --- real servers ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_servers_give_the_in_process_result_and_share_the_work(servers, gguf, local):
    expected, needed = local
    with HttpSampler(servers + [servers[0] + "/v1/"], tokenizer_gguf=gguf) as http:  # a duplicate URL counts once
        assert len(http.endpoints) == 2
        rec = Recording(http)
        result = synth(rec)
        served = http.served_by
    assert result.train == expected.train and result.dropped == expected.dropped
    assert len(expected.train) > 0
    assert Counter(rec.sent) == Counter(needed)
    assert sum(served.values()) == len(needed) and all(n > 0 for n in served.values()), served
    assert http.stats["retries"] == 0


@pytest.mark.slow
def test_a_server_killed_mid_run_loses_nothing(servers, gguf, local, tmp_path):
    expected, needed = local
    [victim] = start_servers(gguf, tmp_path, 1)
    try:
        with HttpSampler([servers[0], victim.url], tokenizer_gguf=gguf, backoff_s=0.1) as http:
            stop = threading.Event()

            def kill_when_busy() -> None:  # SIGKILL once the victim has answered a few samples
                deadline = time.monotonic() + 120
                while not stop.is_set() and time.monotonic() < deadline:
                    if http.served_by[victim.url] >= 2:
                        os.kill(victim.proc.pid, signal.SIGKILL)
                        return
                    time.sleep(0.002)

            watcher = threading.Thread(target=kill_when_busy, daemon=True)
            watcher.start()
            try:
                result = synth(http)
            finally:
                stop.set()
                watcher.join(timeout=10)
            served, retries = http.served_by, http.stats["retries"]
        assert victim.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop_servers([victim])
    assert result.train == expected.train and result.dropped == expected.dropped
    assert sum(served.values()) == len(needed)
    assert served[victim.url] >= 2 and served[servers[0]] > len(needed) // 2, served
    assert retries >= 1  # requests in flight on the killed server went to the other one


@pytest.mark.slow
def test_a_failing_endpoint_beside_a_good_one_is_routed_around(servers, gguf):
    task = headline_task()
    fmt = PromptFormat()
    requests = [Request(fmt.render(task_prompt(task, i.input)), SamplingParams(max_tokens=6, seed=3, n=2))
                for i in task.instances[:4]]
    with LlamaCppSampler(gguf, n_ctx=2048, n_threads=1) as sampler:
        expected = sampler.generate(requests)
    with fake_server(lambda body: (500, {"error": {"message": "boom"}})) as bad:
        with HttpSampler([bad.url, servers[1]], tokenizer_gguf=gguf, backoff_s=0.01) as http:
            got = http.generate(requests)
            served = http.served_by
    assert got == expected
    assert served == {bad.url: 0, servers[1]: 8}
    assert 1 <= len(bad.posts) <= 8  # each sample tried the bad one at most once, then moved on


@pytest.mark.slow
def test_an_interrupted_journaled_run_resumes_without_sending_anything_twice(servers, gguf, local, tmp_path):
    expected, needed = local
    journal = tmp_path / "journal.jsonl"
    with counting_proxy(servers[1]) as proxy:
        with HttpSampler([proxy.url], tokenizer_gguf=gguf) as first:
            with pytest.raises(Crash):
                synth(JournaledSampler(Recording(first, crash_after=1), journal, "http-resume"))
        sent_before_crash = len(proxy.posts)
        with HttpSampler([proxy.url], tokenizer_gguf=gguf) as second:
            resumed_sampler = JournaledSampler(second, journal, "http-resume")
            resumed = synth(resumed_sampler)
    assert sent_before_crash == CFG.wave_size  # one wave of input requests, then the crash
    assert resumed_sampler.replayed == CFG.wave_size
    assert resumed.train == expected.train and resumed.dropped == expected.dropped
    sent = [(p["prompt"], p["seed"]) for p in proxy.posts]
    assert Counter(sent) == Counter(needed)  # every sample needed went out exactly once in the two runs


@pytest.mark.slow
def test_classification_requests_come_back_as_labels_only(servers, gguf):
    task = headline_task()
    fmt = PromptFormat()
    params = SamplingParams(temperature=2.0, top_k=0, max_tokens=8, n=4, seed=11, stop=fmt.answer_stops,
                            choices=tuple(task.labels))
    requests = [Request(fmt.render(task_prompt(task, i.input)), params) for i in task.instances[:5]]
    with HttpSampler(servers, tokenizer_gguf=gguf) as http:
        got = http.generate(requests)
        assert set(http.stats["constraint"].values()) == {"grammar"}
    assert all(c.text.strip() in task.labels for comps in got for c in comps), got
    with LlamaCppSampler(gguf, n_ctx=2048, n_threads=1) as sampler:
        assert got == sampler.generate(requests)


@pytest.mark.slow
def test_model_info_and_tokens_from_the_gguf_and_from_a_llama_cpp_python_server(servers, gguf):
    with LlamaCppSampler(gguf, n_ctx=2048, n_threads=1) as sampler:
        info, n = sampler.info, sampler.count_tokens("Input: Heavy rain hits Leeds\nOutput: weather")
    with HttpSampler(servers, tokenizer_gguf=gguf) as http:
        assert http.info == info
        assert http.count_tokens("Input: Heavy rain hits Leeds\nOutput: weather") == n
    with HttpSampler(servers) as http:  # no GGUF: llama-cpp-python's /extras/tokenize counts
        assert http.count_tokens("Input: Heavy rain hits Leeds\nOutput: weather") == n
        with pytest.raises(UserError, match="pass the model's GGUF"):
            _ = http.info  # this server does not publish its chat template


# --- fake servers ----------------------------------------------------------------------------------

def test_endpoint_urls_are_normalised():
    assert normalize_endpoint("http://h:8000/v1/") == "http://h:8000"
    assert normalize_endpoint(" 127.0.0.1:8080 ") == "http://127.0.0.1:8080"
    assert normalize_endpoint("https://h/api/v1") == "https://h/api"


def test_an_only_endpoint_answering_500_is_retried_then_a_clear_error():
    with fake_server(lambda body: (500, {"error": {"message": "out of memory"}})) as fake:
        with HttpSampler([fake.url], timeout_s=2, retries=2, backoff_s=0.01) as http:
            with pytest.raises(UserError) as err:
                http.generate([Request("Input: x\nOutput:")])
    message = str(err.value)
    assert len(fake.posts) == 3  # the first try and two retries
    assert "\n" not in message and fake.url in message and "HTTP 500: out of memory" in message
    assert "after 3 attempts" in message


def test_a_hanging_endpoint_times_out_then_a_clear_error():
    def hang(body):
        fake.release.wait(10)  # bounded: released when the fake stops
        return completion(" late")

    with fake_server(hang) as fake:
        with HttpSampler([fake.url], timeout_s=0.3, retries=1, backoff_s=0.01) as http:
            started = time.monotonic()
            with pytest.raises(UserError, match="timed out after 0.3s"):
                http.generate([Request("Input: x\nOutput:")])
            assert time.monotonic() - started < 5
    assert len(fake.posts) == 2


def test_an_endpoint_refusing_connections_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    with HttpSampler([url + "/v1"], timeout_s=2, retries=2, backoff_s=0.01) as http:
        with pytest.raises(UserError, match="cannot connect") as err:
            http.generate([Request("x")])
    assert url in str(err.value)


def test_a_rejected_request_is_not_retried():
    with fake_server(lambda body: (400, {"error": {"message": "prompt exceeds the context"}})) as fake:
        with HttpSampler([fake.url], retries=3, backoff_s=0.01) as http:
            with pytest.raises(UserError, match="rejected a completion request: HTTP 400: prompt exceeds"):
                http.generate([Request("x")])
    assert len(fake.posts) == 1


def test_results_keep_request_order_and_stops_apply_client_side():
    def answer(body):
        time.sleep(0.05 if body["seed"] % 2 else 0.0)  # odd seeds answer later
        status, payload = completion(f" answer {body['seed']}\nInput: more")
        payload["choices"][0]["finish_reason"] = "length"
        del payload["usage"]  # no usage: the sampler counts tokens itself
        return status, payload

    with fake_server(answer) as fake:
        with HttpSampler([fake.url], max_in_flight=4) as http:
            http.count_tokens = lambda text: len(text.split())  # type: ignore[method-assign]
            got = http.generate([Request(f"p{k}", SamplingParams(seed=10 * k, n=2, stop=("\nInput:",)))
                                 for k in range(6)])
    assert [[c.text for c in comps] for comps in got] == [[f" answer {10 * k}", f" answer {10 * k + 1}"]
                                                         for k in range(6)]
    assert all(c.finish_reason == "stop" and c.n_tokens == 2 for comps in got for c in comps)
    assert sorted(p["seed"] for p in fake.posts) == sorted(10 * k + i for k in range(6) for i in range(2))
    assert all(p["n"] == 1 and p["model"] == "fake" and p["stop"] == ["\nInput:"] for p in fake.posts)


@pytest.mark.parametrize("accepts", ["guided_choice", "none"])
def test_label_constraint_falls_back_when_the_server_rejects_it(accepts):
    def answer(body):
        if "grammar" in body or ("guided_choice" in body and accepts == "none"):
            return 422, {"detail": "unknown field"}
        return completion(" sports")

    params = SamplingParams(choices=("sports", "weather"), max_tokens=4)
    with fake_server(answer) as fake:
        with HttpSampler([fake.url], retries=0) as http:
            first = http.generate([Request("a", params)])
            n_first = len(fake.posts)
            second = http.generate([Request("b", params), Request("c", SamplingParams())])
            assert http.stats["constraint"][fake.url] == accepts
    assert first[0][0].text == second[0][0].text == " sports"
    kinds = ["grammar" if "grammar" in p else "guided_choice" if "guided_choice" in p else "none"
             for p in fake.posts]
    assert kinds[:n_first] == (["grammar", "guided_choice"] if accepts == "guided_choice"
                               else ["grammar", "guided_choice", "none"])
    assert sorted(kinds[n_first:]) == sorted([accepts, "none"])  # remembered: straight to what works
    assert http.stats["retries"] == 0  # a fallback is not a retry


def test_generate_works_when_called_inside_a_running_event_loop():
    async def caller(url: str) -> list[list[Completion]]:  # e.g. a notebook cell
        with HttpSampler([url]) as http:
            return http.generate([Request("x", SamplingParams(n=3))])

    with fake_server(lambda body: completion(f" {body['seed']}")) as fake:
        got = asyncio.run(caller(fake.url))
    assert [c.text for c in got[0]] == [" 0", " 1", " 2"]


@pytest.mark.slow
def test_synth_and_eval_commands_take_endpoints_and_match_local_sampling(servers, gguf, tmp_path):
    """The CLI path: `synth`/`eval --endpoint A --endpoint B` write what local sampling writes."""
    from selfguide_lite.toy_models.headline import headline_task_path

    cfg = tmp_path / "c.yaml"
    cfg.write_text("selfguide: {num_inputs: 16, wave_size: 8, num_samples: 3, length_filter: false, labeler: vote}\n"
                   "engine: {n_ctx: 2048, n_threads: 1}\neval: {validation_size: 10, test_size: 10}\n")

    def cli(*args: str) -> str:
        res = subprocess.run([sys.executable, "-m", "selfguide_lite", *args, "--config", str(cfg)],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    remote = ["--endpoint", servers[0], "--endpoint", servers[1]]
    common = ["--task", str(headline_task_path()), "--model", str(gguf)]
    stats = json.loads(cli("synth", *common, "--out", str(tmp_path / "remote"), *remote))
    cli("synth", *common, "--out", str(tmp_path / "local"))
    for name in ("train.jsonl", "dropped.jsonl"):
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert stats["sampler"] == "endpoints" and sum(stats["served_by"].values()) > 0
    remote_eval = json.loads(cli("eval", *common, *remote).strip().splitlines()[-1])
    local_eval = json.loads(cli("eval", *common).strip().splitlines()[-1])
    assert remote_eval["exact_match"] == local_eval["exact_match"] and remote_eval["n"] == local_eval["n"] == 10
    assert remote_eval["split"] == local_eval["split"] == "test"


@pytest.mark.slow
def test_loop_samples_the_base_student_on_the_servers_and_its_own_students_locally(student, tmp_path):
    """`loop --endpoint`: the servers serve round 0's GGUF, so round-0 eval and round-1 synthesis go
    there; the round-1 student (exported by the loop) is evaluated locally. The manifest says so."""
    from selfguide_lite.export import gguf_from_hf
    from selfguide_lite.toy_models.headline import headline_task_path
    from tests.helpers import CONFIG

    run = tmp_path / "run"
    base_gguf = gguf_from_hf(student, run / "round-0" / "model-q8_0.gguf", "q8_0")  # what the loop makes first
    (tmp_path / "logs").mkdir()
    procs = start_servers(base_gguf, tmp_path / "logs", 2)
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(CONFIG.replace("engine: {n_ctx: 2048}", "engine: {n_ctx: 2048, n_threads: 1}"))
        res = subprocess.run([sys.executable, "-m", "selfguide_lite", "loop", "--task", str(headline_task_path()),
                              "--model", str(student), "--rounds", "1", "--run-dir", str(run), "--config", str(cfg),
                              "--endpoint", procs[0].url, "--endpoint", procs[1].url],
                             capture_output=True, text=True, timeout=600)
    finally:
        stop_servers(procs)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "synthesising with the round-0 student (on 2 server(s))" in res.stdout
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    synth = stages["round-1/synth"]
    assert synth["sampler"] == "endpoints" and sum(synth["served_by"].values()) > 0
    assert len([n for n in synth["served_by"].values() if n > 0]) == 2
    assert json.loads((run / "round-0" / "eval.json").read_text())["sampler"] == "endpoints"
    assert json.loads((run / "round-1" / "eval.json").read_text())["sampler"].startswith("local llama.cpp")
