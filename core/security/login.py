"""One password login attempt: check the hash (few at a time), and make a wrong guess wait before it is answered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from core.security.passwords import PasswordHash, parse_password_hash, verify_password
from core.security.throttle import LoginThrottle

# Each scrypt check takes 128 MiB by default: bound how many run at once.
CONCURRENT_CHECKS = 2


@dataclass(frozen=True)
class LoginOutcome:
    status: Literal["admitted", "refused", "busy"]
    message: str

    @property
    def admitted(self) -> bool:
        return self.status == "admitted"


class PasswordLogin:
    """The built-in password login of one server process (the app keeps one in st.cache_resource)."""

    def __init__(self, password_hash: str | PasswordHash, throttle: LoginThrottle,
                 sleep: Callable[[float], None] = time.sleep):
        self._hash = parse_password_hash(password_hash) if isinstance(password_hash, str) else password_hash
        self.throttle = throttle
        self._sleep = sleep
        self._checks = threading.BoundedSemaphore(CONCURRENT_CHECKS)

    def attempt(self, client: str, password: str) -> LoginOutcome:
        """Admit at once on the right password; on a wrong one, wait the throttle's delay, then refuse."""
        if not password:
            return LoginOutcome("refused", "Type the password.")
        if not self.throttle.begin(client):
            return LoginOutcome("busy", "Another sign-in attempt from your address is still being checked. "
                                        "Try again in a few seconds.")
        try:
            with self._checks:
                right = verify_password(password, self._hash)
            if right:
                self.throttle.record_success(client)
                return LoginOutcome("admitted", "Signed in.")
            delay = self.throttle.record_failure(client)
            self._sleep(delay)
            return LoginOutcome("refused", "Wrong password. Each further wrong attempt waits longer before it is answered.")
        finally:
            self.throttle.end(client)
