"""Test-time finetuning: sessions (LoRA or full) with exact reset, the multiset trainer, and offline behaviour
cloning (the baseline that trains once)."""

from hullft_agent.finetune.offline import BehaviourCloning, behaviour_cloning
from hullft_agent.finetune.session import FinetuneSession, FullSession, LoRASession, create_session
from hullft_agent.finetune.trainer import Completion, TrainResult, encode_for_training, train_multiset

__all__ = [
    "BehaviourCloning",
    "Completion",
    "FinetuneSession",
    "FullSession",
    "LoRASession",
    "TrainResult",
    "behaviour_cloning",
    "create_session",
    "encode_for_training",
    "train_multiset",
]
