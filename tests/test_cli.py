import json
import subprocess
import sys

import pytest

from repl.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_and_repeats_with_a_seed(capsys, tiny_model_dir):
    args = ("generate", "Hello there", "--model", str(tiny_model_dir), "-n", "15", "--seed", "5",
            "-t", "1.0")
    code, first, err = run_cli(capsys, *args)
    assert code == 0 and first.strip()
    assert "seed 5" in err and "15 tokens" in err
    assert run_cli(capsys, *args)[1] == first


def test_generate_json_record(capsys, tiny_model_dir):
    code, out, _ = run_cli(capsys, "generate", "Hi", "--model", str(tiny_model_dir), "-n", "4",
                           "--preset", "greedy", "--json", "--stop", "zzz")
    record = json.loads(out)
    assert code == 0
    assert record["params"]["max_new_tokens"] == 4 and record["params"]["stop"] == ["zzz"]
    assert record["stats"]["new_tokens"] == 4 and record["seed"] == record["stats"]["seed"]
    assert record["model"]["name"] == "tiny-gpt2" and record["text"]


def test_generate_reads_stdin(monkeypatch, capsys, tiny_model_dir):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("piped prompt\n"))
    code, out, _ = run_cli(capsys, "generate", "-", "--model", str(tiny_model_dir), "-n", "3",
                           "--json")
    assert code == 0 and json.loads(out)["prompt"] == "piped prompt"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "wild"], "unknown preset 'wild'"),
        (["-t", "-1"], "temperature must be 0 or more"),
        (["--model", "models/does-not-exist"], "no such model directory or file"),
        (["--chat"], "has no chat template"),
        (["-n", "999"], "less than the model's context of 256"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, tiny_model_dir, argv, message):
    argv = ["generate", "x", "--model", str(tiny_model_dir), *argv]
    if "models/does-not-exist" in argv:
        argv = ["generate", "x", *argv[4:]]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("textgen: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_no_traceback_from_a_real_process():
    result = subprocess.run(
        [sys.executable, "-m", "repl", "generate", "x", "--temperature", "-1"],
        capture_output=True, text=True, timeout=600,  # only a guard against a hang
    )
    assert result.returncode == 2
    expected = "textgen: error: temperature must be 0 or more (0 means greedy)."
    assert result.stderr.strip() == expected
