"""One retry-with-backoff for every LLM call: labeling votes and synthesis generations.

The policy (how many retries, the first wait) is ``LabelStage.max_retries`` and ``backoff``.
Only ``TransientBackendError`` (HTTP 429, 5xx, timeouts) is retried; anything else propagates at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from shelver.config import LabelStage
from shelver.errors import TransientBackendError

T = TypeVar("T")

# no single wait longer than a minute, whatever the attempt or the server's Retry-After says
MAX_DELAY = 60.0


def retry_delay(attempt: int, backoff: float, retry_after: float | None) -> float:
    """The server's Retry-After when given, else ``backoff * 2**(attempt-1)`` with ±25% jitter, ≤ 60 s.

    The jitter keeps concurrent workers that failed together from retrying together.
    """
    if retry_after is not None:
        return min(MAX_DELAY, max(0.0, retry_after))
    return min(MAX_DELAY, backoff * 2 ** (attempt - 1) * random.uniform(0.75, 1.25))


def with_retries(
    call: Callable[[], T],
    max_retries: int = LabelStage.max_retries,
    backoff: float = LabelStage.backoff,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """``call()``, retried up to ``max_retries`` times on a transient failure; the last one is raised."""
    for attempt in range(1, max_retries + 2):
        try:
            return call()
        except TransientBackendError as err:
            if attempt > max_retries:
                raise
            sleep(retry_delay(attempt, backoff, err.retry_after))
    raise AssertionError("unreachable")
