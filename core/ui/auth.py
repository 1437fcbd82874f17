"""The gate in front of every page: refuse to serve the network without a login, and ask for the login.

streamlit_app.py calls `check_access()` before `st.navigation(...)` and `Access.enforce()` before
`navigation.run()`, so no page (nor the sidebar's library figures) runs until the visitor is admitted.
Two ways in, either or both: Streamlit's own OpenID Connect login (`st.login`, an [auth] section in
.streamlit/secrets.toml), or the team password whose scrypt hash is EXPERT_STUDIO_PASSWORD_HASH.
With neither, the app serves only on a loopback address (the default, 127.0.0.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import streamlit as st

from core.config import Settings, get_settings
from core.security.data_dir import protect_data_dir
from core.security.exposure import refusal_reason
from core.security.login import PasswordLogin
from core.security.passwords import PasswordHashError, parse_password_hash
from core.security.throttle import LoginThrottle
from core.security.users import parse_allowed_users, user_is_allowed

SIGNED_IN_KEY = "_auth_password_signed_in"  # session state: this session gave the right password
MIN_AUTHLIB = (1, 3, 2)  # what st.login needs


@st.cache_resource(show_spinner=False)
def _password_login(password_hash: str, base_delay: float, max_delay: float) -> PasswordLogin:
    """One per server process, shared by all sessions: the failed-attempt counts must be too."""
    return PasswordLogin(password_hash, LoginThrottle(base_delay, max_delay))


@st.cache_resource(show_spinner=False)
def _private_data_dir(path: str) -> None:
    """Close the data folder to other users once per server process, before any page writes to it."""
    protect_data_dir(Path(path))


def _oidc_section() -> Mapping | None:
    try:
        section = st.secrets.get("auth")
    except FileNotFoundError:  # no secrets.toml at all
        return None
    return section or None


def _authlib_ready() -> bool:
    try:
        version = metadata.version("Authlib")
    except metadata.PackageNotFoundError:
        return False
    numbers = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    return numbers >= MIN_AUTHLIB


def _client() -> str:
    """Who is trying, for the throttle: the TCP peer's address (None on loopback: one local client)."""
    return st.context.ip_address or "local"


@dataclass(frozen=True)
class Access:
    """What this run of the script may show; `enforce` shows the refusal or the login instead, and stops."""

    settings: Settings
    refusal: str | None
    config_error: str | None
    password: bool
    oidc: Mapping | None
    admitted: bool

    def enforce(self) -> None:
        if self.admitted:
            return
        if self.refusal:
            st.title("Expert Studio is not served on this address")
            st.error(self.refusal, icon=":material/lock:")
        elif self.config_error:
            st.title("Expert Studio: sign-in is misconfigured")
            st.error(self.config_error)
        else:
            _render_login(self)
        st.stop()


def check_access(settings: Settings | None = None) -> Access:
    """Whether this visitor may see the pages now (reads the listening address, the settings and the session)."""
    settings = settings or get_settings()
    _private_data_dir(str(settings.data_dir.resolve()))
    oidc = _oidc_section()
    password = bool(settings.password_hash)
    refusal = refusal_reason(
        st.get_option("server.address"), password_configured=password, oidc_configured=oidc is not None,
        published_to_loopback_only=settings.published_to_loopback_only,
    )
    config_error = None
    if password:
        try:
            parse_password_hash(settings.password_hash)
        except PasswordHashError as error:
            config_error = str(error)
    if refusal or config_error:
        admitted = False
    elif not password and oidc is None:
        admitted = True  # loopback (or a loopback-only publish) and no login asked for
    else:
        admitted = bool(password and st.session_state.get(SIGNED_IN_KEY)) or _oidc_user_admitted(settings, oidc)
    return Access(settings, refusal, config_error, password, oidc, admitted)


def _oidc_user_admitted(settings: Settings, oidc: Mapping | None) -> bool:
    if oidc is None or not st.user.get("is_logged_in"):
        return False
    return user_is_allowed(st.user.get("email"), parse_allowed_users(settings.allowed_users),
                           email_verified=st.user.get("email_verified"))


def _providers(oidc: Mapping) -> list[str | None]:
    """Named providers ([auth.google], ...) or the one configured in [auth] itself (None)."""
    named = [name for name, value in oidc.items() if isinstance(value, Mapping)]
    return named or [None]


def _render_login(access: Access) -> None:
    st.title("Expert Studio")
    st.subheader("Sign in")
    if access.oidc is not None:
        if st.user.get("is_logged_in"):
            st.error(f"{st.user.get('email') or 'This account'} may not use this app (EXPERT_STUDIO_ALLOWED_USERS).")
            st.button("Log out", on_click=st.logout, key="auth_denied_logout")
        elif not _authlib_ready():
            st.error("Single sign-on is configured in .streamlit/secrets.toml, but the Authlib package it needs is "
                     "missing: install it with `pip install 'Authlib>=1.3.2'` and restart the app.")
        else:
            for provider in _providers(access.oidc):
                label = f"Log in with {provider.title()}" if provider else "Log in with single sign-on"
                st.button(label, on_click=st.login, args=(provider,), key=f"auth_login_{provider or 'default'}",
                          icon=":material/login:")
    if access.password:
        _render_password_form(access.settings)


def _render_password_form(settings: Settings) -> None:
    with st.form("auth_password_form", clear_on_submit=True, border=False):
        password = st.text_input("Password", type="password", key="auth_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    login = _password_login(settings.password_hash, settings.login_delay_seconds, settings.login_max_delay_seconds)
    outcome = login.attempt(_client(), password)
    if outcome.admitted:
        st.session_state[SIGNED_IN_KEY] = True
        st.rerun()
    (st.warning if outcome.status == "busy" else st.error)(outcome.message)


def _sign_out() -> None:
    st.session_state.pop(SIGNED_IN_KEY, None)


def render_account(settings: Settings | None = None) -> None:
    """In the sidebar: who is signed in, and a Log out button (nothing when no login is configured)."""
    settings = settings or get_settings()
    if settings.password_hash and st.session_state.get(SIGNED_IN_KEY):
        st.caption("Signed in with the team password")
        st.button("Log out", on_click=_sign_out, key="auth_logout", icon=":material/logout:")
    elif _oidc_section() is not None and st.user.get("is_logged_in"):
        st.caption(f"Signed in as {st.user.get('email') or st.user.get('name') or 'you'}")
        st.button("Log out", on_click=st.logout, key="auth_logout", icon=":material/logout:")


def require_access() -> None:
    """Every page's first call. streamlit_app.py guards the pages it navigates to, but while no visitor
    has opened the app's root since the server started, Streamlit (its legacy pages/ folder mode) runs a
    page's file on its own when its URL is opened directly, without streamlit_app.py. Cheap when admitted."""
    check_access().enforce()
