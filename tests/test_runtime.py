"""The installation check of llama.cpp (selfguide_lite.runtime): a build that crashes or decodes wrongly
on this CPU ends in one `error:` line with the repair command, never in a bare segfault; the load
setting chosen from the CPU's flags is tested with the flags given, so it holds on any CPU."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from selfguide_lite import runtime
from selfguide_lite.cli import main
from selfguide_lite.engine import llama
from selfguide_lite.errors import UserError

AMX_XEON = frozenset("fma avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16".split())
AVX2_EPYC = frozenset("fma avx f16c avx2 sse4_2".split())
NATIVE_AMX_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 |"
NATIVE_AVX2_BUILD = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | REPACK = 1 |"
GOOD_MODELS = [{"file": "a.Q4_1.gguf", "tokens": 39, "finite": True, "top1_agreement": 0.97, "relative_diff": 0.02,
                "seconds": 1.0}]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A private verdict cache and no verdict remembered by this process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "_verdict", None)
    return tmp_path


def fake_probe(tmp_path: Path, body: str) -> list[str]:
    """A probe command: a script that gets the mode (auto/on/off) as its last argument."""
    script = tmp_path / f"probe{len(list(tmp_path.glob('probe*.py')))}.py"
    script.write_text("import json, os, signal, sys\nmode = sys.argv[-1]\n" + textwrap.dedent(body))
    return [sys.executable, str(script)]


INFO = 'print(json.dumps({"system_info": "CPU : AVX2 = 1 |", "rule": "on: test", "extra_bufts": mode != "off"}), flush=True)\n'
GOOD = f'print(json.dumps({{"models": {json.dumps(GOOD_MODELS).replace("true", "True")}}}), flush=True)\n'


def test_cpu_flags_and_build_features_parse_what_linux_and_llama_cpp_print():
    cpuinfo = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 amx_int8 avx512f\n\nprocessor\t: 1\n"
    assert runtime.cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_int8", "avx512f"}
    assert runtime.cpu_flags("nothing here") == frozenset()
    build = runtime.build_features(NATIVE_AMX_BUILD)
    assert build["AMX_INT8"] and build["AVX512"] and build["SSE3"]
    assert runtime.build_features("CPU : AVX2 = 1 | AVX512 = 0 |") == {"AVX2": True, "AVX512": False}
    assert runtime.named_features(AMX_XEON | {"fpu", "sse2"}) == sorted(AMX_XEON)


@pytest.mark.parametrize(("flags", "system_info", "expected"), [
    (AMX_XEON, NATIVE_AMX_BUILD, False),  # the reported crash: AMX kernels compiled in and usable
    (AMX_XEON, NATIVE_AVX2_BUILD, True),  # a portable build on the Xeon: no AMX kernels to take
    (AVX2_EPYC, NATIVE_AVX2_BUILD, True),
    (AVX2_EPYC, NATIVE_AMX_BUILD, True),  # AMX compiled in but the CPU cannot run it: never registered
])
def test_extra_buffer_types_are_off_only_where_amx_kernels_can_run(flags, system_info, expected):
    on, reason = runtime.extra_bufts_rule(flags, runtime.build_features(system_info))
    assert on is expected
    assert reason.startswith("on" if expected else "off")


def test_a_probe_that_segfaults_is_reported_with_its_signal_and_stage(fresh):
    crash = fake_probe(fresh, INFO + "os.kill(os.getpid(), signal.SIGSEGV)\n")
    out = runtime.run_probe("auto", crash)
    assert not out["ok"] and out["signal"] == "SIGSEGV" and out["extra_bufts"] is True
    assert "multi-token decode" in out["failure"]
    early = runtime.run_probe("auto", fake_probe(fresh, "os.kill(os.getpid(), signal.SIGILL)\n"))
    assert early["signal"] == "SIGILL" and "while loading llama.cpp" in early["failure"] and "extra_bufts" not in early


def test_a_crash_with_extra_buffer_types_falls_back_to_plain_kernels_and_is_cached(fresh):
    probe = fake_probe(fresh, INFO + 'if mode != "off":\n    os.kill(os.getpid(), signal.SIGSEGV)\n' + GOOD)
    record = runtime.check_runtime(probe_cmd=probe)
    assert record["ok"] and record["extra_bufts"] is False and not record["cached"]
    assert [a["requested"] for a in record["attempts"]] == ["auto", "off"]
    again = runtime.check_runtime(probe_cmd=fake_probe(fresh, "sys.exit(5)\n"))  # would fail if it ran
    assert again["cached"] and again["extra_bufts"] is False
    assert runtime.check_runtime(use_cache=False, probe_cmd=probe)["cached"] is False
    for cache_file in (fresh / "cache").glob("**/llama-runtime-*.json"):
        cache_file.write_text("[not a record")  # a damaged cache is a miss: the check runs again
    assert runtime.check_runtime(probe_cmd=probe)["cached"] is False


def test_the_cache_key_follows_the_cpu_flags():
    assert runtime.installation_key(AMX_XEON) != runtime.installation_key(AVX2_EPYC)
    assert runtime.installation_key(AVX2_EPYC) == runtime.installation_key(AVX2_EPYC)


def test_a_crash_either_way_is_one_line_with_the_cpu_version_and_a_portable_rebuild(fresh):
    probe = fake_probe(fresh, INFO + "os.kill(os.getpid(), signal.SIGSEGV)\n")
    with pytest.raises(UserError) as err:
        runtime.check_runtime(probe_cmd=probe)
    message = str(err.value)
    assert "\n" not in message
    assert "SIGSEGV" in message and "extra buffer types on" in message and "extra buffer types off" in message
    assert runtime.installed_version() in message and runtime.cpu_name() in message
    assert "-DGGML_NATIVE=OFF" in message and "--no-cache-dir" in message and "--force-reinstall" in message
    assert not list((fresh / "cache").glob("**/*.json"))  # a failure is not remembered: a repair is re-checked


def test_a_build_for_another_cpu_gets_a_native_rebuild_past_the_wheel_cache(fresh):
    with pytest.raises(UserError) as err:
        runtime.check_runtime(probe_cmd=fake_probe(fresh, "os.kill(os.getpid(), signal.SIGILL)\n"))
    message = str(err.value)
    assert "SIGILL while loading llama.cpp" in message
    assert "pip install --force-reinstall --no-cache-dir --no-deps 'llama-cpp-python==" in message
    assert "CMAKE_ARGS" not in message


def test_wrong_logits_count_as_a_failure(fresh):
    wrong = [{**GOOD_MODELS[0], "top1_agreement": 0.1, "relative_diff": 0.9}]
    probe = fake_probe(fresh, INFO + f'print(json.dumps({{"models": {json.dumps(wrong).replace("true", "True")}}}))\n')
    with pytest.raises(UserError, match="wrong logits on a multi-token batch of a.Q4_1.gguf"):
        runtime.check_runtime(probe_cmd=probe)


def test_the_cli_turns_a_crashing_llama_cpp_into_one_error_line(fresh, monkeypatch, capsys):
    crash = fake_probe(fresh, INFO + "os.kill(os.getpid(), signal.SIGSEGV)\n")
    real = runtime.run_probe
    monkeypatch.setattr(runtime, "run_probe", lambda mode, cmd=None: real(mode, crash))
    from selfguide_lite.builtin_students import DEFAULT_STUDENT, builtin_gguf

    capsys.readouterr()
    code = main(["--quiet", "chat", str(builtin_gguf(DEFAULT_STUDENT))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: llama.cpp"), err
    assert "SIGSEGV" in err and "Repair:" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_installed_llama_cpp_passes_the_real_check(fresh):
    """The real probe: the built-in Q4_1 student and its q8_0 copy, batched against token by token."""
    record = runtime.check_runtime(use_cache=False)
    assert record["ok"] and record["extra_bufts"] in (True, False)
    models = record["attempts"][-1]["models"]
    assert [m["file"].split(".")[-2] for m in models] == ["Q4_1", "q8_0"]
    assert all(runtime.decodes_correctly(m) and m["tokens"] > 20 for m in models)
    expected, _ = runtime.extra_bufts_rule(runtime.cpu_flags(), runtime.build_features(record["system_info"]))
    assert record["extra_bufts"] == expected or len(record["attempts"]) == 2
    assert any(line.startswith("llama.cpp build") for line in runtime.runtime_lines(record))


def test_doctor_reports_a_crashing_llama_cpp_and_never_loads_it_in_process(fresh, monkeypatch):
    from selfguide_lite import compat, doctor

    crash = fake_probe(fresh, INFO + "os.kill(os.getpid(), signal.SIGSEGV)\n")
    real = runtime.run_probe
    monkeypatch.setattr(runtime, "run_probe", lambda mode, cmd=None: real(mode, crash))

    def must_not_run(*a, **k):
        raise AssertionError("doctor decoded in-process after a failed check")

    monkeypatch.setattr(compat, "converter_runtime_check", must_not_run)
    lines: list[str] = []
    assert doctor.report(log=lines.append, run_dir=fresh) is False
    broken = [line for line in lines if line.startswith("llama.cpp: BROKEN")]
    assert len(broken) == 1 and "SIGSEGV" in broken[0] and "Repair:" in broken[0]
    assert not any(line.startswith("serve") for line in lines)


def test_llama_cpp_warnings_stay_out_of_the_output_and_its_errors_go_into_the_message(tmp_path, capfd):
    """llama-cpp-python 0.3.36 maps an older log-level enum: it printed warnings with verbose off and hid
    errors. The tiny converter check loads a model with a context above its training length (a warning);
    a file that is not a GGUF fails with llama.cpp's own reason in the one error line."""
    from selfguide_lite.compat import converter_runtime_check

    capfd.readouterr()
    assert converter_runtime_check(use_cache=False)["ok"]
    err = capfd.readouterr().err
    assert "n_ctx_seq" not in err and "Writing model shards" not in err, err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" * 64)
    with pytest.raises(UserError, match="invalid magic characters"):
        llama.load_model(bad)
    assert capfd.readouterr().err == ""


def test_the_fast_gguf_header_reads_what_gguf_py_reads_and_refuses_a_truncated_file(tmp_path, tiny_qwen2):
    """`gguf_header` walks the header itself (gguf-py's reader takes seconds on a large vocabulary): the
    values it decodes and the tensor names must be gguf-py's, and a cut file one error line."""
    from selfguide_lite.errors import UserError
    from selfguide_lite.export import convert_to_gguf
    from selfguide_lite.gguf_files import gguf_header
    from selfguide_lite.gguf_import import GGUFFile

    path = convert_to_gguf(tiny_qwen2, tmp_path / "q.gguf", "q8_0")
    f = GGUFFile(path)
    keys = ("general.architecture", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "qwen2.block_count",
            "qwen2.rope.freq_base", "tokenizer.ggml.merges", "tokenizer.ggml.add_bos_token")
    header = gguf_header(path, keys)
    for key in keys:
        if f.get(key) is None:
            assert key not in header.values
            continue
        ours, theirs = header.values[key], f.get(key)
        assert (list(ours) == list(theirs)) if isinstance(theirs, list) else ours == pytest.approx(theirs), key
    assert "tokenizer.ggml.tokens" in header.values and len(header.values["tokenizer.ggml.tokens"]) == 320
    assert header.tensor_names == tuple(f.tensors)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="truncated or malformed"):
        gguf_header(cut, keys)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(UserError, match="not a GGUF"):
        gguf_header(tmp_path / "empty.gguf")
