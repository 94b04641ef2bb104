"""Pure: which API answers are worth another try, and how long to wait before it.

The policy KubeApi follows for every request (the watch stream aside, whose callers relist):

- 429 Too Many Requests and 503 Service Unavailable: retried for every verb (the API server did not
  act on the request); a ``Retry-After`` header (seconds or an HTTP date) is honoured as the wait, up to
  ``max_retry_after`` — a longer one ends the retries, and the error carries it so the caller can come
  back then.
- 500, 502, 504, a timeout or a broken connection: retried for idempotent verbs (GET, PUT, PATCH,
  DELETE — pinserve's patches are server-side applies and merge patches of whole values), never for
  POST (an Event could be posted twice).
- Anything else (4xx such as 400, 403, 404, 409, 422) is the caller's to judge: never retried here.
  409 Conflict on an apply is retried by the controller after it re-reads the object.

Waits grow exponentially from ``base`` to ``cap`` with equal jitter (half fixed, half random), and the
number of tries is bounded by ``attempts``, so one request never takes more than about
``attempts * (timeout + cap)``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass

THROTTLED = frozenset({429, 503})  # the server refused before acting: safe to retry any verb
SERVER_ERRORS = frozenset({500, 502, 504})
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
TRANSPORT = 0  # ApiError.status of a timeout or a broken connection (no HTTP answer)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in all, the first included
    base: float = 0.25  # seconds before the first retry, doubled for each further one
    cap: float = 4.0  # the longest backoff
    max_retry_after: float = 30.0  # a longer Retry-After ends the retries (the next reconcile waits instead)

    def backoff(self, retry: int, rand: float) -> float:
        """The wait before retry number ``retry`` (0-based); ``rand`` in [0, 1) jitters the upper half."""
        ceiling = min(self.cap, self.base * 2.0 ** retry)
        return ceiling / 2 + ceiling / 2 * min(max(rand, 0.0), 1.0)


def retryable(method: str, status: int) -> bool:
    """Whether an answer with ``status`` (TRANSPORT for no answer) may be retried for ``method``."""
    if status in THROTTLED:
        return True
    if status in SERVER_ERRORS or status == TRANSPORT:
        return method.upper() in IDEMPOTENT
    return False


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - now).total_seconds(), 0.0)


def next_wait(policy: RetryPolicy, retry: int, *, status: int, retry_after: float | None,
              rand: float) -> float | None:
    """Seconds to wait before retry number ``retry``, or None when the retries end here."""
    if retry + 1 >= policy.attempts:
        return None
    if status in THROTTLED and retry_after is not None:
        return retry_after if retry_after <= policy.max_retry_after else None
    return policy.backoff(retry, rand)
