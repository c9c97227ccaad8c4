"""Credentials of the AWS chain, so the log redaction knows them too.

With S3_ACCESS_KEY_ID empty, botocore finds the keys itself (environment, shared files,
SSO, container or instance metadata); cefmp4 never sees them, and so could not mask them.
"""

from __future__ import annotations

import botocore.session  # type: ignore[import-untyped]


def chain_secrets() -> list[str]:
    """Access key, secret key and session token the chain resolves now; [] when none.

    Resolved once, at start-up: credentials that rotate later (instance roles, SSO) are
    not added; botocore logs none of them below WARNING, which is the floor cefmp4 sets.
    """
    try:
        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            return []
        frozen = credentials.get_frozen_credentials()
    except Exception:
        # Nothing to log yet (logging is being configured with this very list); the S3
        # client resolves the chain again and reports a failure where it matters.
        return []
    return [s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s]
