
import pytest

from repl.errors import TextgenError
from repl.models import default_gguf_path, load_model, resolve_spec


def test_local_directory_loads_with_info(tiny_model_dir, tiny_loaded):
    info = tiny_loaded.info
    assert info.name == "tiny-gpt2" and info.context_length == 256
    assert info.device == "cpu" and info.dtype == "float32"
    assert info.has_chat_template is False
    assert 3_000_000 < info.parameters < 4_000_000
    assert tiny_loaded.tokenizer.pad_token_id == tiny_loaded.tokenizer.eos_token_id == 50256


def test_spec_kinds(tiny_model_dir, tmp_path):
    assert resolve_spec("default")[0] == "default"
    assert resolve_spec(str(tiny_model_dir)) == ("dir", tiny_model_dir)
    assert resolve_spec("gpt2") == ("hub", "gpt2")
    assert resolve_spec("HuggingFaceTB/SmolLM2-135M") == ("hub", "HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(TextgenError, match="no such model directory or file"):
        resolve_spec(str(tmp_path / "missing"))
    with pytest.raises(TextgenError, match="no such model directory or file"):
        resolve_spec("weights.gguf")
    with pytest.raises(TextgenError, match="no config.json"):
        resolve_spec(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TextgenError, match="not a model"):
        resolve_spec(str(tmp_path / "notes.txt"))


def test_hub_id_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(TextgenError, match="not in the local Hugging Face cache.*--model default"):
        load_model("gpt2")


def test_corrupt_model_directory_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TextgenError, match="cannot load the model"):
        load_model(str(tmp_path))


def test_default_model_is_real_and_converted_once(default_loaded):
    from repl.models import default_model_dir

    info = default_loaded.info
    assert info.name == "SmolLM2-135M-Instruct" and info.has_chat_template
    assert info.context_length == 8192 and 130e6 < info.parameters < 140e6
    assert (default_model_dir() / "model.safetensors").is_file()
    # Loading again reads the converted file: nothing is converted or written a second time.
    weights = default_model_dir() / "model.safetensors"
    before = weights.stat().st_mtime_ns
    load_model("default", device="cpu")
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_gguf_file_spec_loads(default_loaded):
    path = default_gguf_path()
    loaded = load_model(str(path), device="cpu")
    assert loaded.info.name == path.stem
    assert loaded.info.parameters == default_loaded.info.parameters
