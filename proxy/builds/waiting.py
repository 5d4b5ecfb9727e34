"""How long a client that follows a build-pending link is held, and when it is told to come back (pure).

What the clients do, measured with pip 26.3 and uv 0.13.9 against a server that always answers 503:
- pip gives up on a response with no headers after its read timeout (15 s, ``PIP_TIMEOUT``), honours
  ``Retry-After`` to the second, and makes ``PIP_RETRIES`` + 1 attempts (6 by default);
- uv's read timeout is 30 s (``UV_HTTP_TIMEOUT``); it ignores ``Retry-After`` and makes
  ``UV_HTTP_RETRIES`` + 1 attempts (4 by default), between them a jittered exponential backoff that
  stays under about 30 s.

So a request is held while the build runs for a while shorter than the client's read timeout (never send
headers before the wheel is ready: a stalled body fails pip the same way), then answered 503 with a
``Retry-After`` that grows with the build's age: short while most builds finish (a 30 s build is picked up
at once), long enough later that pip's six default attempts span ``[builder] max_wait``. With a hold H and
Retry-After = 1.25 x the build's age (at least ``retry_after``, at most 0.4 x max_wait), pip's attempts
start at 0, 27, 88, 225, 534 and 906 s for H = 12 s and max_wait = 900 s. uv needs its retry count raised
(``UV_HTTP_RETRIES``, see ``uv_retries_for``). Past max_wait nobody is held any more: the build goes on, and
the client is told to come back later (or to build ahead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GROWTH = 1.25
CAP_SHARE = 0.4
UV_BACKOFF_MEAN = 15.0  # seconds, measured: uv's jittered backoff averages about half its 30 s cap


@dataclass(frozen=True, slots=True)
class Waiting:
    hold_seconds: float  # pip and every other client
    uv_hold_seconds: float  # uv reads for up to 30 s
    retry_after: int  # the shortest Retry-After
    max_wait: float  # past it, nobody is held or asked to keep trying

    def hold(self, user_agent: str | None) -> float:
        """Seconds to hold this client's request while the build runs."""
        if user_agent and user_agent.startswith("uv/"):
            return self.uv_hold_seconds
        return self.hold_seconds

    def retry_after_for(self, age: float) -> int:
        """The Retry-After for a build running for ``age`` seconds."""
        cap = max(self.retry_after, math.ceil(self.max_wait * CAP_SHARE))
        return int(min(cap, max(self.retry_after, math.ceil(age * GROWTH))))

    def gave_up(self, age: float) -> bool:
        return age >= self.max_wait

    def uv_retries_for(self) -> int:
        """The UV_HTTP_RETRIES that keeps uv waiting max_wait (each attempt: a hold and a backoff)."""
        return math.ceil(self.max_wait / (self.uv_hold_seconds + UV_BACKOFF_MEAN))
