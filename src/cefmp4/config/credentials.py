"""The secrets of the settings, for the log redaction (``logs.set_secrets``).

Only secrets: an access key id is an identifier (AWS prints it in consoles, bills and
access logs), and masking it garbled every word it occurred in (a key ``cefmp4`` masked
the product's own name). With S3_ACCESS_KEY_ID empty, botocore finds the keys itself
(environment, shared files, SSO, container or instance metadata); cefmp4 never sees them,
and so asks the chain here, once, to mask what it resolves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, unquote_plus, urlsplit

if TYPE_CHECKING:
    from cefmp4.config.settings import Settings

# Query parameters of a webhook URL that carry a credential (matched in lower case, as
# parts of the name: ``api_key``, ``access_token``, ``sig``).
_TOKEN_NAMES = ("token", "secret", "passw", "pwd", "key", "sig", "auth", "credential")


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the settings hold: the S3 secret key, the Redis password,
    NOTIFY_WEBHOOK_SECRET, NOTIFY_WEBHOOK_URL (whole: a path can be its token, as Slack's
    is) with its credentials (the password, the user when it stands alone as a token,
    credential-named query values); with no static keys, what the AWS chain resolves."""
    secrets = [
        settings.s3_secret_access_key.get_secret_value(),
        settings.notify_webhook_secret.get_secret_value(),
    ]
    redis_url = settings.redis_url.get_secret_value()
    if redis_url:
        secrets += _url_credentials(redis_url)
    webhook = settings.notify_webhook_url.get_secret_value()
    if webhook:
        secrets += [webhook, *_url_credentials(webhook)]
    if not settings.s3_access_key_id.get_secret_value():
        secrets += chain_secrets()  # keys from the AWS chain: session tokens too
    return [s for s in dict.fromkeys(secrets) if s]


def _url_credentials(url: str) -> list[str]:
    """The credentials a URL carries: its password; its user name when no password
    follows (``https://TOKEN@host``, ``https://TOKEN:@host``: the user is the token);
    the values of credential-named query parameters, as written and decoded."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    found = [password, unquote(password)] if password else []
    if user and not password:
        found += [user, unquote(user)]
    for name, _, value in (pair.partition("=") for pair in parts.query.split("&")):
        if value and any(word in name.lower() for word in _TOKEN_NAMES):
            found += [value, unquote_plus(value)]
    return [s for s in found if s]


def chain_secrets() -> list[str]:
    """Secret key and session token the chain resolves now; [] when none.

    Resolved once, at start-up: credentials that rotate later (instance roles, SSO) are
    not added; botocore logs none of them below WARNING, which is the floor cefmp4 sets.
    """
    # Imported here: botocore costs ~0.1 s of start-up, paid only when the chain is asked.
    import botocore.session  # type: ignore[import-untyped]

    try:
        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            return []
        frozen = credentials.get_frozen_credentials()
    except Exception:
        # Nothing to log yet (logging is being configured with this very list); the S3
        # client resolves the chain again and reports a failure where it matters.
        return []
    return [s for s in (frozen.secret_key, frozen.token) if s]
