"""Test-time finetuning: sessions (LoRA or full) with exact reset, and the multiset trainer."""

from hullft_agent.finetune.session import FinetuneSession, FullSession, LoRASession, create_session
from hullft_agent.finetune.trainer import Completion, TrainResult, encode_for_training, train_multiset

__all__ = [
    "Completion",
    "FinetuneSession",
    "FullSession",
    "LoRASession",
    "TrainResult",
    "create_session",
    "encode_for_training",
    "train_multiset",
]
