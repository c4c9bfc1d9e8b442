"""Sleep as an eviction tier: when it is allowed, and which sleepers make room (pure).

A sleeping engine (vLLM's sleep mode, level 1) keeps its process, holds its
weights in host memory and gives its device memory back; waking it is a
call, not an engine start. Only GPU engines can sleep, and only within
``[neuron] sleep_memory_gb`` of host memory for all sleepers together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CPU_HOST_REFUSAL", "SleepPlan", "Sleeper", "plan_sleep", "refusal"]

CPU_HOST_REFUSAL = (
    "vLLM's sleep mode needs GPUs and NVML sees none on this host: remove the key on CPU hosts"
)


def refusal(sleep_memory_gb: float | None, gpus: int, engine_reason: str | None) -> str | None:
    """Why ``sleep_memory_gb`` cannot be honoured on this host, or ``None`` when it can.

    ``gpus`` is how many GPUs NVML sees; ``engine_reason`` the engine's own
    reason its engines cannot sleep (its ``sleep_support()``).
    """
    if sleep_memory_gb is None:
        return None
    if gpus == 0:
        return CPU_HOST_REFUSAL
    return engine_reason


@dataclass(frozen=True, slots=True)
class Sleeper:
    """A model asleep: the host memory it holds and when it was last used."""

    id: str
    host_bytes: int
    last_used: float


@dataclass(frozen=True, slots=True)
class SleepPlan:
    """The new sleeper fits once ``drop`` (least recently used first) are unloaded."""

    drop: tuple[str, ...] = ()


def plan_sleep(
    need: int, budget: int, host_free: int, sleepers: Sequence[Sleeper]
) -> SleepPlan | None:
    """Room for a model holding ``need`` bytes of host memory asleep, or ``None``.

    It must fit ``budget`` (``sleep_memory_gb``) with the sleepers kept, and
    the host's free memory, which each sleeper dropped adds to. Sleepers are
    dropped least recently used first, as few as make room; when even dropping
    all of them would not, nothing is dropped and the model is unloaded instead.
    """
    if need > budget:
        return None
    held = sum(s.host_bytes for s in sleepers)
    freed = 0
    drop: list[str] = []
    for sleeper in sorted(sleepers, key=lambda s: (s.last_used, s.id)):
        if held - freed + need <= budget and need <= host_free + freed:
            break
        drop.append(sleeper.id)
        freed += sleeper.host_bytes
    if held - freed + need <= budget and need <= host_free + freed:
        return SleepPlan(tuple(drop))
    return None
