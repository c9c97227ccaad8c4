"""Secrets: *_FILE settings, secrets refused as flags, AWS-chain credentials redacted."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cefmp4.cli import main as cli
from cefmp4.config.credentials import chain_secrets, secrets_of
from cefmp4.config.settings import SECRET_FILES, load_settings
from cefmp4.runtime import logs
from cefmp4.runtime.errors import ConfigError


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("k3y-value\n", "k3y-value"),
        ("k3y-value\r\n", "k3y-value"),
        ("k3y-value", "k3y-value"),
        (" spaced secret \n", " spaced secret "),  # only the newline is trimmed
    ],
)
def test_secret_is_read_from_its_file(tmp_path: Path, content: str, expected: str) -> None:
    settings = load_settings(
        s3_access_key_id_file=_write(tmp_path / "id", "AKID\n"),
        s3_secret_access_key_file=_write(tmp_path / "secret", content),
        redis_url_file=_write(tmp_path / "url", "redis://:pw@127.0.0.1:6379/0\n"),
    )
    assert settings.s3_secret_access_key.get_secret_value() == expected
    assert settings.s3_access_key_id.get_secret_value() == "AKID"
    assert settings.redis_url.get_secret_value() == "redis://:pw@127.0.0.1:6379/0"


def test_secret_files_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY_FILE", _write(tmp_path / "s", "from-env-file\n"))
    assert load_settings().s3_secret_access_key.get_secret_value() == "from-env-file"


@pytest.mark.parametrize("secret", sorted(SECRET_FILES))
def test_both_the_secret_and_its_file_is_a_config_error(tmp_path: Path, secret: str) -> None:
    value = "redis://h:1/0" if secret == "redis_url" else "direct"
    file_setting = SECRET_FILES[secret].upper()
    with pytest.raises(ConfigError, match=f"^{file_setting}: .*not both") as caught:
        load_settings(**{secret: value, SECRET_FILES[secret]: _write(tmp_path / "f", "x\n")})
    assert "direct" not in str(caught.value)


@pytest.mark.parametrize("case", ["missing", "empty", "newline only", "directory", "fifo",
                                  "two lines", "binary", "huge"])
def test_unusable_secret_file_is_one_line_naming_the_setting(tmp_path: Path, case: str) -> None:
    path = tmp_path / "secret"
    if case == "empty":
        path.write_text("")
    elif case == "newline only":
        path.write_text("\n")
    elif case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)  # opening it would block until a writer came: never opened
    elif case == "two lines":
        path.write_text("first\nsecond\n")
    elif case == "binary":
        path.write_bytes(b"\xff\xfe\x00")
    elif case == "huge":
        path.write_bytes(b"x" * (1024 * 1024))
    done = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_settings(s3_secret_access_key_file=str(path))
        except BaseException as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=load, daemon=True).start()
    assert done.wait(5), "reading the secret file hung"
    [error] = errors
    assert isinstance(error, ConfigError)
    message = str(error)
    assert message.startswith("S3_SECRET_ACCESS_KEY_FILE: ")
    assert "\n" not in message
    assert "s3cr3t" not in message
    assert "first" not in message


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--s3-secret-access-key", "hunter2-value"],
        ["check", "--s3-access-key-id=hunter2-value"],
        ["status", "--redis-url", "redis://:hunter2-value@h:6379/0"],
        ["upload", "--s3-secret-access-key", "hunter2-value", "a.mp4"],
    ],
)
def test_secret_flags_are_refused_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cefmp4: configuration error: ")
    assert "not accepted as a command-line flag" in err
    assert "_FILE" in err
    assert "hunter2-value" not in err


def test_secret_file_flags_are_accepted(tmp_path: Path) -> None:
    """A path is no secret: the _FILE settings work as flags."""
    args = cli.build_parser().parse_args(
        ["check", "--s3-secret-access-key-file", str(tmp_path / "s")]
    )
    assert args.s3_secret_access_key_file == str(tmp_path / "s")


def test_aws_chain_credentials_with_session_token_are_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIACHAINTESTKEY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret-0a1b2c3d4e5f")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEChainSessionToken+/=")
    expected = {"chain-secret-0a1b2c3d4e5f", "FwoGZXIvYXdzEChainSessionToken+/="}
    assert set(chain_secrets()) == expected  # the key id is an identifier: not masked

    secrets = secrets_of(load_settings())
    assert set(secrets) == expected
    logs.set_secrets(secrets)
    try:
        line = logs.redact("token FwoGZXIvYXdzEChainSessionToken+/= key ASIACHAINTESTKEY0001")
        assert line == "token *** key ASIACHAINTESTKEY0001"
    finally:
        logs.set_secrets(())


def test_explicit_keys_do_not_consult_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "chain-token-not-used")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "chain-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    settings = load_settings(s3_access_key_id="explicit-id", s3_secret_access_key="explicit-s")
    assert secrets_of(settings) == ["explicit-s"]


def test_an_access_key_id_is_no_secret() -> None:
    """The compose default key id ``cefmp4`` masked the product's own name everywhere."""
    settings = load_settings(s3_access_key_id="cefmp4", s3_secret_access_key="s3cr3t-0123456789")
    assert secrets_of(settings) == ["s3cr3t-0123456789"]


def test_the_webhook_and_redis_credentials_are_secrets() -> None:
    url = "https://hook-user:hook%2Fpw@hooks.example/in/T0/B1?channel=ops&token=tok-123%2B4"
    settings = load_settings(
        s3_access_key_id="id", s3_secret_access_key="s3-secret-value",
        redis_url="redis://default:redis-pw-0001@127.0.0.1:6379/0",
        notify_webhook_url=url, notify_webhook_secret="hmac-key-42",
    )
    secrets = secrets_of(settings)
    assert set(secrets) == {
        "s3-secret-value", "redis-pw-0001", "hmac-key-42", url,
        "hook%2Fpw", "hook/pw", "tok-123%2B4", "tok-123+4",
    }
    assert "hook-user" not in secrets  # a user followed by a password is a name
    assert "ops" not in secrets  # only credential-named query values


@pytest.mark.parametrize(
    ("url", "token"),
    [("https://tok-as-user-77@hooks.example/x", "tok-as-user-77"),
     ("https://tok-as-user-77:@hooks.example/x", "tok-as-user-77")],
)
def test_a_webhook_user_without_a_password_is_its_token(url: str, token: str) -> None:
    settings = load_settings(s3_access_key_id="id", s3_secret_access_key="s3-secret-value",
                             notify_webhook_url=url)
    assert token in secrets_of(settings)


def test_webhook_credentials_never_reach_the_log() -> None:
    url = "https://u:hook-pw-8812@hooks.example/in?sig=sig-value-31"
    settings = load_settings(s3_access_key_id="id", s3_secret_access_key="s3-secret-value",
                             notify_webhook_url=url, notify_webhook_secret="hmac-key-42abc")
    logs.set_secrets(secrets_of(settings))
    try:
        text = logs.redact(f"posting to {url} with hmac-key-42abc; pw hook-pw-8812, sig-value-31")
    finally:
        logs.set_secrets(())
    for secret in ("hook-pw-8812", "sig-value-31", "hmac-key-42abc"):
        assert secret not in text
    assert "hooks.example" not in text  # the whole URL is a secret (a path may be its token)


def test_no_chain_credentials_is_an_empty_list() -> None:
    assert chain_secrets() == []  # hermetic_env: no AWS_* and empty config files
