"""Which single-sign-on accounts may enter: a list of e-mail addresses and @domains (EXPERT_STUDIO_ALLOWED_USERS).

An OpenID Connect provider such as Google signs in anyone with an account there; this list narrows that down.
"""

from __future__ import annotations


def parse_allowed_users(text: str) -> frozenset[str]:
    """"ana@example.org, @example.com" -> {"ana@example.org", "@example.com"} (lower case; blanks dropped)."""
    return frozenset(item.strip().lower() for item in text.split(",") if item.strip())


def user_is_allowed(email: str | None, allowed: frozenset[str], *, email_verified: bool | None = None) -> bool:
    """Empty list: everyone the provider signed in. Otherwise the address, or its @domain, must be listed.

    A provider that says the address is not verified (`email_verified` false) is not trusted with it.
    """
    if not allowed:
        return True
    if not email or email_verified is False:
        return False
    email = email.strip().lower()
    domain = "@" + email.rsplit("@", 1)[-1] if "@" in email else None
    return email in allowed or (domain is not None and domain in allowed)
