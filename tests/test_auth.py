"""Who can reach the app: password hashes, slow failed logins, the listening-address rule, the data folder, and the
login gate in front of every page (AppTest on the real database; the real browser is tests/e2e/test_auth_flow.py)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import streamlit as st
from streamlit import config as streamlit_config
from streamlit.testing.v1 import AppTest

from core.cli import main
from core.config import get_settings
from core.errors import UserError
from core.security.data_dir import protect_data_dir
from core.security.exposure import classify_address, configured_address, oidc_section_in_secrets, refusal_reason
from core.security.login import PasswordLogin
from core.security.passwords import (
    DEFAULT_N,
    PasswordHashError,
    check_new_password,
    hash_password,
    parse_password_hash,
    verify_password,
)
from core.security.throttle import GLOBAL_FAILURES_PER_DOUBLING, WINDOW_SECONDS, LoginThrottle
from core.security.users import parse_allowed_users, user_is_allowed
from core.ui.auth import SIGNED_IN_KEY

ROOT = Path(__file__).resolve().parents[1]
APP = "../streamlit_app.py"
PASSWORD = "correct horse battery staple"
CHEAP = {"n": 2**10}  # tests hash with a small scrypt cost; the parameters travel inside the hash
PAGES = ["home", "documents", "ask", "compare", "training_data", "finetune", "exams", "evaluation", "advisor", "models"]


# --- password hashes --------------------------------------------------------------------------------------------


def test_hash_round_trip_and_format():
    encoded = hash_password(PASSWORD, **CHEAP)
    assert encoded.startswith("scrypt:1024:8:1:")
    assert not set(encoded) & set("$ \"'\n")  # safe in an env var, a .env file and docker-compose.yml
    assert verify_password(PASSWORD, encoded)
    assert not verify_password(PASSWORD + " ", encoded)
    assert not verify_password("", encoded)
    assert hash_password(PASSWORD, **CHEAP) != encoded  # a fresh salt each time


def test_default_cost_is_owasp_minimum_and_travels_in_the_hash():
    assert DEFAULT_N == 2**17
    stored = parse_password_hash(hash_password(PASSWORD, n=2**11, r=4, p=2))
    assert (stored.n, stored.r, stored.p, len(stored.salt), len(stored.key)) == (2**11, 4, 2, 16, 32)
    assert verify_password(PASSWORD, stored)


@pytest.mark.parametrize("bad", [
    "", "plain-text-password", "pbkdf2:1000:abc:def", "scrypt:1024:8:1:only-five", "scrypt:1000:8:1:AAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAA",
    "scrypt:4194304:8:1:AAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAA", "scrypt:1024:8:1:!!:AAAA", "scrypt:1024:8:1:AAAA:AAAA",
])
def test_malformed_hashes_are_a_user_error_not_an_open_door(bad):
    with pytest.raises(PasswordHashError) as error:
        parse_password_hash(bad)
    assert isinstance(error.value, UserError)
    assert "EXPERT_STUDIO_PASSWORD_HASH" in str(error.value) or "scrypt parameters" in str(error.value)


def test_short_passwords_are_refused_for_new_hashes():
    with pytest.raises(UserError, match="at least 12"):
        check_new_password("short")
    check_new_password(PASSWORD)


# --- slow failed logins -----------------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_doubles_per_client_up_to_the_cap_and_a_success_forgets():
    throttle = LoginThrottle(base_delay=1.0, max_delay=8.0, clock=Clock())
    assert [throttle.record_failure("10.0.0.1") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert throttle.record_failure("10.0.0.2") == 1.0  # another client starts low while few failures are global
    throttle.record_success("10.0.0.1")
    assert throttle.failures("10.0.0.1") == 0
    assert throttle.record_failure("10.0.0.1") == 1.0


def test_failures_from_many_clients_raise_the_delay_for_everyone():
    throttle = LoginThrottle(base_delay=1.0, max_delay=1000.0, clock=Clock())
    delays = [throttle.record_failure(f"10.0.1.{i}") for i in range(3 * GLOBAL_FAILURES_PER_DOUBLING)]
    assert delays[GLOBAL_FAILURES_PER_DOUBLING - 2] == 1.0
    assert delays[GLOBAL_FAILURES_PER_DOUBLING - 1] == 2.0  # each a first failure, yet slower
    assert delays[-1] == 8.0
    assert throttle.record_failure("fresh client") == 8.0


def test_failures_are_forgotten_after_the_window():
    clock = Clock()
    throttle = LoginThrottle(base_delay=1.0, max_delay=60.0, clock=clock)
    for _ in range(4):
        throttle.record_failure("10.0.0.1")
    clock.now += WINDOW_SECONDS + 1
    assert throttle.failures("10.0.0.1") == 0
    assert throttle.record_failure("10.0.0.1") == 1.0


def test_right_password_never_waits_wrong_ones_wait_longer_each_time():
    waits: list[float] = []
    login = PasswordLogin(hash_password(PASSWORD, **CHEAP), LoginThrottle(1.0, 60.0, clock=Clock()), sleep=waits.append)
    outcomes = [login.attempt("10.0.0.1", guess) for guess in ("guess one", "guess two", "guess three")]
    assert [o.status for o in outcomes] == ["refused"] * 3
    assert "Wrong password" in outcomes[0].message
    assert waits == [1.0, 2.0, 4.0]
    assert login.attempt("10.0.0.1", PASSWORD).admitted
    assert waits == [1.0, 2.0, 4.0]  # no wait for the right password
    assert login.attempt("10.0.0.1", "guess four").status == "refused"
    assert waits[-1] == 1.0  # the success forgot this client's failures


def test_one_attempt_in_flight_per_client():
    """A second tab guessing while the first one's wrong answer is still delayed gets no check at all."""
    waits: list[float] = []
    throttle = LoginThrottle(1.0, 60.0, clock=Clock())
    login = PasswordLogin(hash_password(PASSWORD, **CHEAP), throttle, sleep=waits.append)
    assert throttle.begin("10.0.0.1")  # as if an attempt from that address were being answered now
    busy = login.attempt("10.0.0.1", PASSWORD)
    assert busy.status == "busy" and not busy.admitted
    assert login.attempt("10.0.0.2", PASSWORD).admitted  # other clients are not held up
    throttle.end("10.0.0.1")
    assert login.attempt("10.0.0.1", PASSWORD).admitted
    assert waits == []


def test_empty_password_is_refused_without_counting():
    throttle = LoginThrottle(1.0, 60.0, clock=Clock())
    login = PasswordLogin(hash_password(PASSWORD, **CHEAP), throttle, sleep=lambda _: None)
    assert login.attempt("10.0.0.1", "").status == "refused"
    assert throttle.failures("10.0.0.1") == 0


# --- where the app listens --------------------------------------------------------------------------------------


@pytest.mark.parametrize("address, reach", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("[::1]", "loopback"),
    ("localhost", "loopback"), ("LOCALHOST.", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    (None, "all-interfaces"), ("", "all-interfaces"), ("  ", "all-interfaces"), ("0.0.0.0", "all-interfaces"),
    ("::", "all-interfaces"), ("192.168.1.20", "network"), ("10.0.0.5", "network"), ("fe80::1%eth0", "network"),
    ("studio.example.org", "network"), ("unix:///run/expert.sock", "unix-socket"),
])
def test_addresses_are_classified(address, reach):
    assert classify_address(address) == reach


def test_only_loopback_serves_without_a_login():
    open_ = dict(password_configured=False, oidc_configured=False, published_to_loopback_only=False)
    assert refusal_reason("127.0.0.1", **open_) is None
    reason = refusal_reason("0.0.0.0", **open_)
    assert "no login is configured" in reason
    for step in ("--server.address 127.0.0.1", "python -m core auth hash-password", "EXPERT_STUDIO_PASSWORD_HASH",
                 ".streamlit/secrets.toml", "[auth]", "EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY"):
        assert step in reason, step
    assert "server.address is not set" in refusal_reason(None, **open_)
    for enough in ({"password_configured": True}, {"oidc_configured": True}, {"published_to_loopback_only": True}):
        assert refusal_reason("0.0.0.0", **{**open_, **enough}) is None


def test_configured_address_follows_streamlit_precedence(tmp_path):
    global_file, project_file = tmp_path / "global.toml", tmp_path / "project.toml"
    global_file.write_text('[server]\naddress = "0.0.0.0"\n')
    project_file.write_text('[server]\nmaxUploadSize = 5\n')
    assert configured_address({}, (global_file, project_file)) == "0.0.0.0"
    project_file.write_text('[server]\naddress = "127.0.0.1"\n')
    assert configured_address({}, (global_file, project_file)) == "127.0.0.1"
    assert configured_address({"STREAMLIT_SERVER_ADDRESS": "::"}, (global_file, project_file)) == "::"
    assert configured_address({}, (tmp_path / "missing.toml",)) is None


def test_the_project_config_listens_on_loopback():
    assert configured_address({}, (ROOT / ".streamlit" / "config.toml",)) == "127.0.0.1"


def test_oidc_section_is_found_in_secrets(tmp_path):
    secrets = tmp_path / "secrets.toml"
    assert not oidc_section_in_secrets((secrets,))
    secrets.write_text('[auth]\nclient_id = "x"\n')
    assert oidc_section_in_secrets((secrets,))
    example = ROOT / ".streamlit" / "secrets.toml.example"
    assert oidc_section_in_secrets((example,))  # the example is a complete, valid TOML [auth] section


def test_allowed_users_narrow_single_sign_on():
    allowed = parse_allowed_users(" Ana@Example.org, @team.example.com ,")
    assert allowed == {"ana@example.org", "@team.example.com"}
    assert user_is_allowed("ana@example.org", allowed)
    assert user_is_allowed("Bo@team.example.com", allowed)
    assert not user_is_allowed("eve@example.org", allowed)
    assert not user_is_allowed("bo@team.example.com.evil.net", allowed)
    assert not user_is_allowed("bo@team.example.com", allowed, email_verified=False)
    assert not user_is_allowed(None, allowed)
    assert user_is_allowed("anyone@anywhere.net", frozenset())  # empty list: the provider decides


# --- the data folder --------------------------------------------------------------------------------------------


def test_data_folder_is_created_and_closed_to_other_users(tmp_path):
    # As root the group may pass (the embedded Postgres, user pgserver, keeps root's group), also before the
    # database folder exists: another process may be creating it at that moment.
    private = 0o710 if os.geteuid() == 0 else 0o700
    fresh = protect_data_dir(tmp_path / "new" / "data")
    assert stat.S_IMODE(fresh.stat().st_mode) == private
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    protect_data_dir(existing)
    assert stat.S_IMODE(existing.stat().st_mode) == private


def test_as_root_the_embedded_postgres_keeps_its_way_through(tmp_path):
    """As root the embedded Postgres runs as `pgserver` with root's group: the group may pass, nobody else may enter."""
    data = tmp_path / "data"
    (data / "postgres").mkdir(parents=True)
    data.chmod(0o755)
    protect_data_dir(data)
    info = data.stat()
    expected = (0o710, os.getegid()) if os.geteuid() == 0 else (0o700, info.st_gid)
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == expected


def test_the_embedded_server_works_in_its_closed_folder():
    """A real embedded server started in a data folder: the folder ends closed, new backends still reach their files."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from core.db.embedded import embedded_database_url

    data = Path(tempfile.mkdtemp(prefix="es-test-private-", dir="/tmp"))
    data.chmod(0o755)
    engine = create_engine(embedded_database_url(data / "postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    assert stat.S_IMODE(data.stat().st_mode) & 0o077 in (0, 0o010)  # at most group traverse (root's group, as root)
    with engine.connect() as connection:
        connection.execute(text("CREATE DATABASE private_check"))
        connection.execute(text("DROP DATABASE private_check"))
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


# --- the command line -------------------------------------------------------------------------------------------


def test_cli_hashes_a_password_read_from_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["auth", "hash-password"]) == 0
    out, err = capsys.readouterr()
    encoded = out.strip()
    assert verify_password(PASSWORD, encoded) and parse_password_hash(encoded).n == DEFAULT_N
    assert "EXPERT_STUDIO_PASSWORD_HASH" in err
    assert PASSWORD not in out + err


def test_cli_refuses_a_short_password_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["auth", "hash-password"]) == 2
    assert capsys.readouterr().err.startswith("error: The password has 5 characters")


def test_cli_takes_no_password_argument():
    with pytest.raises(SystemExit):
        main(["auth", "hash-password", PASSWORD])


def test_python_m_core_auth_hash_password_from_a_pipe():
    result = subprocess.run([sys.executable, "-m", "core", "auth", "hash-password"], input=PASSWORD + "\n",
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert verify_password(PASSWORD, result.stdout.strip())


def test_cli_status_says_whether_the_app_would_serve(monkeypatch, capsys):
    monkeypatch.delenv("EXPERT_STUDIO_PASSWORD_HASH", raising=False)
    monkeypatch.delenv("EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["auth", "status", "--address", "127.0.0.1"]) == 0
        assert "The app serves its pages." in capsys.readouterr().out
        assert main(["auth", "status", "--address", "0.0.0.0"]) == 1
        assert "no login is configured" in capsys.readouterr().out
        monkeypatch.setenv("EXPERT_STUDIO_PASSWORD_HASH", hash_password(PASSWORD, **CHEAP))
        get_settings.cache_clear()
        assert main(["auth", "status", "--address", "0.0.0.0", "--json"]) == 0
        assert '"password": true' in capsys.readouterr().out
        monkeypatch.setenv("EXPERT_STUDIO_PASSWORD_HASH", "not-a-hash")
        get_settings.cache_clear()
        assert main(["auth", "status"]) == 2
    finally:
        get_settings.cache_clear()


# --- the gate in front of every page (AppTest) ------------------------------------------------------------------


@pytest.fixture
def app_settings(settings, monkeypatch):
    """This module's database, and settings re-read from the environment after each test's changes."""
    monkeypatch.delenv("EXPERT_STUDIO_PASSWORD_HASH", raising=False)
    monkeypatch.delenv("EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY", raising=False)
    monkeypatch.delenv("EXPERT_STUDIO_ALLOWED_USERS", raising=False)
    monkeypatch.setenv("EXPERT_STUDIO_LOGIN_DELAY_SECONDS", "0.01")

    def apply(**env: str) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        st.cache_resource.clear()

    apply()
    yield apply
    get_settings.cache_clear()
    st.cache_resource.clear()


@pytest.fixture
def server_address():
    """Set server.address for AppTest runs (they read the real config), restored afterwards."""
    before = streamlit_config.get_option("server.address")
    yield lambda address: streamlit_config.set_option("server.address", address)
    streamlit_config.set_option("server.address", before)


def open_app(page: str = "home", user: dict | None = None, secrets: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if user is not None:
        at.user = user
    if secrets is not None:
        at.secrets = secrets
    at.run()
    if page != "home":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def leaf_types(block) -> list[str]:
    """Element types under a block, in order (containers are walked into, not listed)."""
    types = []
    for child in getattr(block, "children", {}).values():
        types += leaf_types(child) if getattr(child, "children", None) else [child.type]
    return types


def assert_only_the_login_form(at: AppTest) -> None:
    assert [t.value for t in at.title] == ["Expert Studio"]
    assert [s.value for s in at.subheader] == ["Sign in"]
    assert leaf_types(at.main) == ["title", "subheader", "text_input", "button"] + ["error"] * len(at.error)
    assert [w.label for w in at.text_input] == ["Password"]
    assert leaf_types(at.sidebar) == []  # no library figures, no navigation


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_only_the_login_form_until_signed_in(app_settings, page):
    app_settings(EXPERT_STUDIO_PASSWORD_HASH=hash_password(PASSWORD, **CHEAP))
    assert_only_the_login_form(open_app(page))


def test_wrong_password_refused_right_one_admitted_then_log_out(app_settings):
    app_settings(EXPERT_STUDIO_PASSWORD_HASH=hash_password(PASSWORD, **CHEAP))
    at = open_app("home")
    # AppTest starts every run in Streamlit's legacy pages/-folder mode, so the run after the first one executes
    # pages/home.py on its own (its require_access() shows the form): settle there before typing.
    at.run()
    at.text_input(key="auth_password").set_value("not the password")
    at.button[0].click().run()
    assert [e.value for e in at.error] == [
        "Wrong password. Each further wrong attempt waits longer before it is answered."]
    assert_only_the_login_form(at)

    at.text_input(key="auth_password").set_value(PASSWORD)
    at.button[0].click().run()
    assert not at.exception
    assert any("Start here" in h.value for h in at.subheader)  # the Home page itself

    at.switch_page("pages/documents.py").run()  # the session stays signed in across pages
    assert [t.value for t in at.title] == ["Documents"]
    # The sidebar (who is signed in, Log out) is drawn by streamlit_app.py, which AppTest's legacy mode skips
    # after the first run: tests/e2e/test_auth_flow.py checks it and the logout in a real browser.
    at.session_state[SIGNED_IN_KEY] = False
    at.run()
    assert_only_the_login_form(at)


def test_no_login_and_loopback_shows_the_app_as_before(app_settings):
    at = open_app("home")
    assert any("Start here" in h.value for h in at.subheader)
    assert "auth_logout" not in [b.key for b in at.sidebar.button]


def test_a_broken_hash_locks_everyone_out_with_the_reason(app_settings):
    app_settings(EXPERT_STUDIO_PASSWORD_HASH="letmein")
    at = open_app("documents")
    assert [t.value for t in at.title] == ["Expert Studio: sign-in is misconfigured"]
    assert "scrypt:N:r:p:SALT:KEY" in at.error[0].value
    assert leaf_types(at.sidebar) == []


def test_all_interfaces_without_a_login_is_refused(app_settings, server_address):
    server_address("0.0.0.0")
    at = open_app("home")
    assert [t.value for t in at.title] == ["Expert Studio is not served on this address"]
    assert "no login is configured" in at.error[0].value
    assert leaf_types(at.main) == ["title", "error"] and leaf_types(at.sidebar) == []

    app_settings(EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY="true")  # the docker-compose statement
    assert any("Start here" in h.value for h in open_app("home").subheader)

    app_settings(EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY="false",
                 EXPERT_STUDIO_PASSWORD_HASH=hash_password(PASSWORD, **CHEAP))
    assert_only_the_login_form(open_app("home"))


OIDC = {"auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                 "client_id": "id", "client_secret": "secret",
                 "server_metadata_url": "https://accounts.example.org/.well-known/openid-configuration"}}


def test_single_sign_on_guards_pages_and_honours_allowed_users(app_settings):
    at = open_app("documents", secrets=OIDC)
    assert [t.value for t in at.title] == ["Expert Studio"]
    assert leaf_types(at.sidebar) == []
    from core.ui.auth import _authlib_ready

    if _authlib_ready():
        assert [b.label for b in at.button] == ["Log in with single sign-on"]
    else:
        assert "Authlib" in at.error[0].value and not at.button

    app_settings(EXPERT_STUDIO_ALLOWED_USERS="@example.org")
    signed_in = {"is_logged_in": True, "email": "ana@example.org", "email_verified": True}
    at = open_app("home", user=signed_in, secrets=OIDC)
    assert any("Start here" in h.value for h in at.subheader)
    assert "Signed in as ana@example.org" in [c.value for c in at.sidebar.caption]

    at = open_app("home", user={**signed_in, "email": "eve@elsewhere.net"}, secrets=OIDC)
    assert "may not use this app" in at.error[0].value
    assert not any("Start here" in h.value for h in at.subheader)
