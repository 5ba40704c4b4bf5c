"""Finetuning sessions: the trainable state of a model, with an exact and cheap reset.

A session owns the parameters that test-time training changes (LoRA adapters, or every weight for
full finetuning) and a copy of their initial values. `reset()` copies those values back in place, so
the module tree, the optimizer-visible parameter objects and any references callers hold stay valid;
nothing is re-injected or re-allocated.
"""

from __future__ import annotations

import logging
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hullft_agent.config import FinetuneConfig, LoRAConfig
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.files import atomic_path

logger = logging.getLogger(__name__)

_FORMAT = "hullft-agent-session"


class FinetuneSession(ABC):
    """The trainable state of a causal LM under test-time finetuning.

    Subclasses set `model` (the module to call forward on), `tokenizer`, and the ordered mapping of
    trainable parameters; everything else (reset, state dicts, snapshots) is shared.
    """

    #: Short name stored in snapshots ("lora" or "full"); a snapshot loads only into the same kind.
    method: str = ""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model: nn.Module = model
        self.tokenizer = tokenizer
        self._params: dict[str, nn.Parameter] = {}
        self._initial: dict[str, Tensor] = {}

    # -- subclasses -----------------------------------------------------------------------------
    @abstractmethod
    @contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """Run the base (unadapted) model inside the block without losing the trained state.

        Yields the module to call (`self.model`).
        """

    @property
    def uses_dropout(self) -> bool:
        """True when training steps must run in train() mode (dropout active)."""
        return False

    # -- shared ---------------------------------------------------------------------------------
    def _capture_initial(self, device: torch.device | str | None) -> None:
        """Record the trainable parameters and a detached copy of their current values."""
        self._params = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        if not self._params:
            raise InvalidArgumentError("the model has no trainable parameters")
        with torch.no_grad():
            self._initial = {
                name: p.detach().to(device=device if device is not None else p.device, copy=True)
                for name, p in self._params.items()
            }

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should update, in a fixed order."""
        return list(self._params.values())

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._params)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self._params.values())

    def reset(self) -> None:
        """Restore the exact initial trainable state, in place (no module is replaced)."""
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(self._initial[name])
                p.grad = None
        self.model.eval()

    def state_dict(self) -> dict[str, Tensor]:
        """A CPU clone of the trainable parameters, keyed by parameter name."""
        with torch.no_grad():
            return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in self._params.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy `state` into the trainable parameters; keys and shapes must match exactly."""
        missing = sorted(set(self._params) - set(state))
        unexpected = sorted(set(state) - set(self._params))
        if missing or unexpected:
            raise InvalidArgumentError(
                f"state dict does not match this {self.method or 'finetune'} session: "
                f"{len(missing)} missing key(s) {_preview(missing)}, "
                f"{len(unexpected)} unexpected key(s) {_preview(unexpected)}"
            )
        bad = [
            f"{name}: expected {tuple(p.shape)}, got {tuple(state[name].shape)}"
            for name, p in self._params.items()
            if tuple(state[name].shape) != tuple(p.shape)
        ]
        if bad:
            raise InvalidArgumentError(f"state dict shape mismatch for {len(bad)} tensor(s): {_preview(bad)}")
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(state[name])
                p.grad = None

    def snapshot(self, path: str | os.PathLike[str]) -> Path:
        """Write the trainable state to a safetensors file atomically (temp file, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(self.state_dict(), str(tmp), metadata={"format": _FORMAT, "method": self.method})
        logger.debug("saved %s session state (%d tensors) to %s", self.method, len(self._params), path)
        return path

    def load(self, path: str | os.PathLike[str]) -> None:
        """Load a state written by `snapshot` (same kind of session, same adapter shape)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no session snapshot at {path}")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        method = metadata.get("method")
        if method and self.method and method != self.method:
            raise InvalidArgumentError(f"{path} holds a '{method}' session state; this session is '{self.method}'")
        self.load_state_dict(load_file(str(path)))


class LoRASession(FinetuneSession):
    """LoRA adapters (peft) on a frozen base model.

    The model is wrapped in place by peft; `self.model` is the resulting `PeftModel`. LoRA B starts
    at zero, so the adapted model's outputs equal the base model's bitwise until the first step.
    """

    method = "lora"

    def __init__(self, model: nn.Module, tokenizer: Any, lora: LoRAConfig | None = None) -> None:
        from peft import LoraConfig, PeftModel, TaskType, get_peft_model

        lora = lora if lora is not None else LoRAConfig()
        if isinstance(model, PeftModel):
            raise InvalidArgumentError("the model is already a PeftModel; pass the plain base model")
        _check_targets(model, lora.target_modules)
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            layers_to_transform=_last_layers(model, lora.layers),
            bias="none",
            task_type=TaskType.CAUSAL_LM,
        )
        with warnings.catch_warnings():  # transformers deprecation noise triggered inside peft
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, peft_config)
        super().__init__(peft_model, tokenizer)
        self.lora = lora
        for name, p in peft_model.named_parameters():
            p.requires_grad_("lora_" in name)
        peft_model.eval()
        self._capture_initial(device=None)
        with torch.no_grad():
            nonzero = [n for n, p in self._params.items() if "lora_B" in n and bool(p.any())]
        if nonzero:
            raise RuntimeError(
                f"LoRA B is not zero-initialised ({_preview(nonzero)}); the start would differ"
            )
        logger.debug(
            "LoRA session: r=%d alpha=%s on %s, %d trainable parameters",
            lora.r,
            lora.alpha,
            lora.target_modules,
            self.num_trainable(),
        )

    @property
    def uses_dropout(self) -> bool:
        return self.lora.dropout > 0

    @contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        with self.model.disable_adapter():  # type: ignore[operator]
            yield self.model


class FullSession(FinetuneSession):
    """Every weight trainable (the published protocol); reset copies back from a CPU copy."""

    method = "full"

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__(model, tokenizer)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
        self._capture_initial(device="cpu")

    @contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        trained = self.state_dict()
        grads = {name: p.grad for name, p in self._params.items()}
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(self._initial[name])
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for name, p in self._params.items():
                    p.copy_(trained[name])
                    p.grad = grads[name]


def create_session(model: nn.Module, tokenizer: Any, config: FinetuneConfig | None = None) -> FinetuneSession:
    """A `LoRASession` or `FullSession` as `config.method` says.

    LoRA's A matrices start random: with `config.seed` set they are drawn from that seed (without
    touching the caller's RNG), so the same settings give the same adapter in every process.
    """
    config = config if config is not None else FinetuneConfig()
    if config.method == "lora":
        if config.seed is None:
            return LoRASession(model, tokenizer, config.lora)
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            return LoRASession(model, tokenizer, config.lora)
    if config.method == "full":
        return FullSession(model, tokenizer)
    raise InvalidArgumentError(f"unknown finetune method {config.method!r}")


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    """Raise when a LoRA target module name matches no module of the model."""
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted(
            {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise InvalidArgumentError(
            f"LoRA target module(s) {missing} match no module of {type(model).__name__}; "
            f"its linear modules are {linear}"
        )


def _last_layers(model: nn.Module, layers: int | None) -> list[int] | None:
    """Indices of the model's last `layers` transformer blocks (None: every block)."""
    if layers is None:
        return None
    total = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(total, int):
        raise InvalidArgumentError(f"lora.layers needs a model whose config names num_hidden_layers; "
                                   f"{type(model).__name__} has none")
    if layers > total:
        raise InvalidArgumentError(f"lora.layers is {layers} but the model has {total} transformer blocks")
    return list(range(total - layers, total))


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    more = f", ... (+{len(items) - limit})" if len(items) > limit else ""
    return f"[{shown}{more}]"
