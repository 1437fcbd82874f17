"""Failed logins make the next ones slow: a delay that doubles per client and grows with failures from everyone.

The delay is served after a wrong password, before the answer, while that client's attempt still counts as in
flight: one client (one IP address) gets one guess per delay, however many browser tabs it opens. Failures from
all clients together raise the floor for everybody, so many addresses do not multiply the guessing rate freely.
A right password is never delayed, and a success forgets that client's failures.
State lives in memory: a server restart starts afresh.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# Every this many failures (from any client) in the window double the delay that every failure gets.
GLOBAL_FAILURES_PER_DOUBLING = 10
# Failures older than this are forgotten, per client and globally.
WINDOW_SECONDS = 15 * 60
# Bound on the remembered failures and clients, so a flood of addresses cannot grow memory without end.
MAX_REMEMBERED = 10_000


@dataclass
class _Client:
    failures: int = 0
    last_failure: float = 0.0


class LoginThrottle:
    """Bookkeeping of failed attempts; `LoginGate` (core/security/login.py) does the waiting."""

    def __init__(self, base_delay: float = 1.0, max_delay: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._recent: deque[float] = deque(maxlen=MAX_REMEMBERED)
        self._in_flight: set[str] = set()

    def begin(self, client: str) -> bool:
        """Claim the one attempt a client may have in flight; False while an earlier one is still being answered."""
        with self._lock:
            if client in self._in_flight:
                return False
            self._in_flight.add(client)
            return True

    def end(self, client: str) -> None:
        with self._lock:
            self._in_flight.discard(client)

    def record_failure(self, client: str) -> float:
        """Count a wrong password; returns the seconds to wait before answering it."""
        now = self._clock()
        with self._lock:
            self._forget_old(now)
            state = self._clients.setdefault(client, _Client())
            state.failures += 1
            state.last_failure = now
            self._recent.append(now)
            if len(self._clients) > MAX_REMEMBERED:
                oldest = min(self._clients, key=lambda name: self._clients[name].last_failure)
                del self._clients[oldest]
            return self._delay(state.failures, len(self._recent))

    def record_success(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    def failures(self, client: str) -> int:
        """Recent failures of one client (for messages and tests)."""
        with self._lock:
            self._forget_old(self._clock())
            state = self._clients.get(client)
            return state.failures if state else 0

    def _delay(self, client_failures: int, global_failures: int) -> float:
        client_delay = self.base_delay * 2 ** min(client_failures - 1, 30)
        global_delay = self.base_delay * 2 ** min(global_failures // GLOBAL_FAILURES_PER_DOUBLING, 30)
        return min(self.max_delay, max(client_delay, global_delay))

    def _forget_old(self, now: float) -> None:
        horizon = now - WINDOW_SECONDS
        while self._recent and self._recent[0] < horizon:
            self._recent.popleft()
        for name in [name for name, state in self._clients.items() if state.last_failure < horizon]:
            del self._clients[name]
