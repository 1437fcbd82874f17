"""Who can reach the app from where it listens, and the rule: beyond this machine only behind a login.

Streamlit's `server.address` decides the reach: a loopback address (127.0.0.1, ::1, localhost) serves this
machine only; an empty or unset address, 0.0.0.0 or :: listens on every interface; any other address or host
name is some network. A container must listen on 0.0.0.0 for its port to be published at all, so the operator
can state that the published port is on the host's loopback only (EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY, set
next to the `127.0.0.1:8501:8501` mapping in docker-compose.yml); that statement is theirs to keep true.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Literal

Reach = Literal["loopback", "unix-socket", "all-interfaces", "network"]

UNIX_SOCKET_PREFIX = "unix://"  # Streamlit binds a unix socket for such an address
SECRETS_FILES = (Path(".streamlit/secrets.toml"), Path.home() / ".streamlit" / "secrets.toml")


def classify_address(address: str | None) -> Reach:
    """Where a server listening on `address` can be reached from."""
    address = (address or "").strip()
    if not address:
        return "all-interfaces"  # Streamlit (and uvicorn) bind every interface when no address is given
    if address.startswith(UNIX_SOCKET_PREFIX):
        return "unix-socket"
    host = address.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return "loopback"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return "network"  # a host name: whatever it resolves to, it is not guaranteed to be loopback
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "all-interfaces"
    return "loopback" if ip.is_loopback else "network"


def describe_address(address: str | None) -> str:
    reach = classify_address(address)
    if reach == "all-interfaces":
        return f"every network interface (server.address = {address!r})" if address else \
            "every network interface (server.address is not set)"
    return f"{address} ({reach})"


def refusal_reason(address: str | None, *, password_configured: bool, oidc_configured: bool,
                   published_to_loopback_only: bool) -> str | None:
    """Why the app must not serve on `address` with this configuration, or None when it may.

    The message says exactly how to fix it; the app shows it instead of any page.
    """
    if classify_address(address) in ("loopback", "unix-socket"):
        return None
    if password_configured or oidc_configured or published_to_loopback_only:
        return None
    return (
        f"Expert Studio is listening on {describe_address(address)} and no login is configured, so anyone who can "
        "reach this machine over the network could read every document, delete collections and start training. "
        "It serves no page until you do one of these and restart it:\n\n"
        "1. **Serve only this machine**: start it with `--server.address 127.0.0.1` (the default in "
        "`.streamlit/config.toml`) and open http://localhost:8501.\n"
        "2. **A password for a small team**: run `python -m core auth hash-password`, then start the app with "
        "`EXPERT_STUDIO_PASSWORD_HASH=<that hash>` in its environment (or in `.env`).\n"
        "3. **Single sign-on (OpenID Connect)**: copy `.streamlit/secrets.toml.example` to "
        "`.streamlit/secrets.toml` and fill in its `[auth]` section (needs `Authlib>=1.3.2`).\n\n"
        "In a container that must listen on 0.0.0.0 but whose port is published to the host's 127.0.0.1 only, set "
        "`EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY=true` (docker-compose.yml does). See docs/security.md."
    )


def oidc_section_in_secrets(paths: tuple[Path, ...] = SECRETS_FILES) -> bool:
    """Whether a secrets.toml Streamlit reads by default has an [auth] section (for the CLI; the app asks Streamlit)."""
    for path in paths:
        try:
            if tomllib.loads(path.read_text()).get("auth"):
                return True
        except (OSError, tomllib.TOMLDecodeError):
            continue
    return False


STREAMLIT_CONFIG_FILES = (Path.home() / ".streamlit" / "config.toml", Path(".streamlit/config.toml"))


def configured_address(environ: dict[str, str] | None = None,
                       config_files: tuple[Path, ...] = STREAMLIT_CONFIG_FILES) -> str | None:
    """The server.address `streamlit run streamlit_app.py` would use without flags (for the CLI; the app asks Streamlit).

    Streamlit reads the global config, then the project's, then STREAMLIT_SERVER_ADDRESS; a --server.address flag
    beats them all.
    """
    import os

    environ = os.environ if environ is None else environ
    address = None
    for path in config_files:
        try:
            server = tomllib.loads(path.read_text()).get("server", {})
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if "address" in server:
            address = server["address"]
    return environ.get("STREAMLIT_SERVER_ADDRESS", address)
