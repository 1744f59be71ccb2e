"""Where a scheduler step's time goes: accumulators a benchmark switches on (``Scheduler.profile``).

Off by default: the scheduler then pays one ``is None`` test per step. On, it adds two clock reads
per phase and per sampled token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["StepProfile"]


@dataclass(slots=True)
class StepProfile:
    """Seconds spent per phase of the scheduler's steps, summed since the last ``reset``."""

    steps: int = 0
    tokens_sampled: int = 0
    admit: float = 0.0  # admission, reaping and cache moves between steps
    assemble: float = 0.0  # KV room accounting and filling the llama_batch
    flush: float = 0.0  # handing the previous step's outputs to the event loop
    decode: float = 0.0  # llama_decode itself
    sample: float = 0.0  # the sampler chain (and grammar, logprobs) per output row
    emit: float = 0.0  # after sampling: mirrors, detokenizing, stop strings, outputs, finishing

    def reset(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0 if name in ("steps", "tokens_sampled") else 0.0)

    def split(self) -> dict[str, float]:
        """Milliseconds per step for each phase, and the Python share (everything but the decode)."""
        steps = max(1, self.steps)
        phases = {k: v for k, v in asdict(self).items() if k not in ("steps", "tokens_sampled")}
        out = {f"{k}_ms_per_step": 1e3 * v / steps for k, v in phases.items()}
        total = sum(phases.values())
        out["python_ms_per_step"] = 1e3 * (total - self.decode) / steps
        out["python_share"] = (total - self.decode) / total if total else 0.0
        out["sample_us_per_token"] = 1e6 * self.sample / max(1, self.tokens_sampled)
        return out
