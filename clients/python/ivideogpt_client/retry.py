"""When and how long to retry: only idempotent calls, only on errors that a later try can cure.

Idempotent here means a second delivery cannot change the outcome: GET, DELETE, imagine (the
session is unchanged) and steps that carry the session's ``step_index`` (the gateway answers a
recorded index from its record). Opening a session is not: a lost answer would leak a session.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ivideogpt_client.errors import AtCapacity, ServiceUnavailable, WorldModelError


def retryable(err: WorldModelError) -> bool:
    """Connection errors and 5xx (``ServiceUnavailable``) and 429 (``AtCapacity``)."""
    return isinstance(err, ServiceUnavailable | AtCapacity)


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``base * 2**attempt`` (at most ``cap``) times a factor in [0.5, 1];
    a ``Retry-After`` from the gateway replaces it (at most ``max_retry_after``)."""

    retries: int = 3
    base: float = 0.25
    cap: float = 8.0
    max_retry_after: float = 60.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def delay(self, attempt: int, err: WorldModelError) -> float:
        if err.retry_after is not None:
            return min(max(err.retry_after, 0.0), self.max_retry_after)
        return min(self.cap, self.base * 2**attempt) * self.rng.uniform(0.5, 1.0)

    def should_retry(self, attempt: int, idempotent: bool, err: WorldModelError) -> bool:
        return idempotent and attempt < self.retries and retryable(err)
