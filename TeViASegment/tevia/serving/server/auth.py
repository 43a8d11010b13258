"""Bearer-token authentication and the binding rule for a server without a token."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import stat
from pathlib import Path

__all__ = ["TOKEN_ENV", "MIN_TOKEN_CHARS", "LOOPBACK_HOST", "load_token", "check_bind", "bearer_matches"]

logger = logging.getLogger(__name__)

TOKEN_ENV = "TEVIA_SERVER_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK_HOST = "127.0.0.1"
_HOW_TO_MAKE = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def load_token(token_file: str | Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The server's token from `token_file`, else from the TEVIA_SERVER_TOKEN variable.

    Args:
        token_file: a file holding the token (surrounding whitespace is ignored), or None.
        environ: the environment to read (default os.environ).

    Returns:
        The token, or None when neither source gives one.

    Raises:
        ValueError: the file is missing or empty, or the token is shorter than 16 characters.
    """
    environ = os.environ if environ is None else environ
    if token_file is not None:
        path = Path(token_file)
        if not path.is_file():
            raise ValueError(f"--token-file {str(path)!r} does not exist or is not a file")
        token = path.read_text(encoding="utf-8").strip()
        source = f"--token-file {str(path)!r}"
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("token file %s is readable by other users; chmod 600 it", path)
    elif environ.get(TOKEN_ENV):
        token = environ[TOKEN_ENV].strip()
        source = TOKEN_ENV
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token from {source} has {len(token)} characters; use at least "
                         f"{MIN_TOKEN_CHARS} ({_HOW_TO_MAKE})")
    if any(ch.isspace() for ch in token) or not token.isascii():
        raise ValueError(f"the token from {source} must be printable ASCII without spaces ({_HOW_TO_MAKE})")
    return token


def check_bind(host: str, token: str | None, insecure_no_token: bool) -> None:
    """Refuse a server configuration that would expose the model without a token.

    Args:
        host: the address the server will bind.
        token: the configured token or None.
        insecure_no_token: whether the user passed --insecure-no-token.

    Raises:
        ValueError: no token and no flag; the flag together with a token; or the flag with a
            host other than 127.0.0.1.
    """
    if token is not None and insecure_no_token:
        raise ValueError("--insecure-no-token was given together with a token; drop one of them")
    if token is None and not insecure_no_token:
        raise ValueError(f"no token: give --token-file PATH or set {TOKEN_ENV} ({_HOW_TO_MAKE}); "
                         f"for local tests only, --insecure-no-token serves without one on {LOOPBACK_HOST}")
    if token is None:
        try:
            loopback = ipaddress.ip_address(host) == ipaddress.ip_address(LOOPBACK_HOST)
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"--insecure-no-token binds to {LOOPBACK_HOST} only, got --host {host!r}; "
                             f"give a token to serve on another address")


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time).

    Args:
        authorization: the raw header value, e.g. "Bearer abc...", or None.
        token: the server's token.
    """
    if not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode("utf-8", "replace"), token.encode("utf-8"))
