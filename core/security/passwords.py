"""Password hashes for the built-in login: scrypt, with its salt and cost parameters inside the hash.

The hash is one line, `scrypt:N:r:p:SALT:KEY` (SALT and KEY in unpadded URL-safe base64), so it can sit in an
environment variable, a .env file or docker-compose.yml without quoting: it holds no `$`, no spaces, no quotes.
The cost parameters travel with the hash, so raising the defaults later keeps old hashes valid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from core.errors import UserError

# OWASP's minimum for scrypt (N=2^17, r=8, p=1): 128 MiB and ~0.8 s per check on a laptop core.
DEFAULT_N = 2**17
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_PASSWORD_CHARS = 12
# A hash from the environment must not be able to ask for gigabytes of memory per login attempt.
MAX_N = 2**20
MAX_R = 32
MAX_P = 16
PREFIX = "scrypt"


class PasswordHashError(UserError):
    """EXPERT_STUDIO_PASSWORD_HASH is not a hash this app made (`python -m core auth hash-password` makes one)."""


@dataclass(frozen=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def encode(self) -> str:
        return ":".join((PREFIX, str(self.n), str(self.r), str(self.p), _b64(self.salt), _b64(self.key)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # scrypt needs 128 * r * N * p bytes; hashlib refuses anything over maxmem (32 MiB by default).
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * p + 2**20, dklen=length
    )


def check_new_password(password: str) -> None:
    """Refuse passwords too short to withstand guessing, even slowed down."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(
            f"The password has {len(password)} characters; use at least {MIN_PASSWORD_CHARS} "
            "(a few random words make a good one)."
        )


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new salted scrypt hash of `password`, as one line for EXPERT_STUDIO_PASSWORD_HASH."""
    _check_parameters(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    return PasswordHash(n, r, p, salt, _derive(password, salt, n, r, p, KEY_BYTES)).encode()


def parse_password_hash(encoded: str) -> PasswordHash:
    """Read a hash made by `hash_password`; a PasswordHashError says what is wrong with any other text."""
    parts = encoded.strip().split(":")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise PasswordHashError(
            "EXPERT_STUDIO_PASSWORD_HASH is not of the form scrypt:N:r:p:SALT:KEY. "
            "Make one with: python -m core auth hash-password"
        )
    try:
        n, r, p = (int(value) for value in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError as error:
        raise PasswordHashError(f"EXPERT_STUDIO_PASSWORD_HASH cannot be read ({error}). "
                                "Make a new one with: python -m core auth hash-password") from None
    _check_parameters(n, r, p)
    if len(salt) < 8 or len(key) < 16:
        raise PasswordHashError("EXPERT_STUDIO_PASSWORD_HASH has a salt or key that is too short; make a new one.")
    return PasswordHash(n, r, p, salt, key)


def _check_parameters(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1) or n > MAX_N or not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        raise PasswordHashError(
            f"scrypt parameters N={n}, r={r}, p={p} are out of range: N must be a power of two up to {MAX_N}, "
            f"r at most {MAX_R}, p at most {MAX_P}."
        )


def verify_password(password: str, stored: PasswordHash | str) -> bool:
    """Whether `password` matches; the keys are compared in constant time."""
    stored = parse_password_hash(stored) if isinstance(stored, str) else stored
    candidate = _derive(password, stored.salt, stored.n, stored.r, stored.p, len(stored.key))
    return hmac.compare_digest(candidate, stored.key)
