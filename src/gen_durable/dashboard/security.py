"""Who may use the dashboard, and how an action proves it came from its own page
(SPEC §25).

* Authentication: HTTP Basic with ``user:password`` (``--auth``) or a bearer token
  (``GEN_DURABLE_DASHBOARD_TOKEN``; a browser may also send it as the Basic password).
  Compared in constant time. ``gen-durable dashboard`` refuses a non-loopback bind
  without one of them.
* CSRF: double-submit. Every page sets a random ``gd_csrf`` cookie (SameSite=Strict,
  HttpOnly) and puts the same value in each action form; a POST whose form token does
  not equal its cookie is refused before anything is read from the database.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

CSRF_COOKIE = "gd_csrf"
CSRF_FIELD = "csrf_token"
TOKEN_ENV = "GEN_DURABLE_DASHBOARD_TOKEN"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost`` included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Auth:
    """The credentials the dashboard accepts; both None: no authentication."""

    basic: str | None = None
    """``user:password``."""
    token: str | None = None

    @property
    def required(self) -> bool:
        return self.basic is not None or self.token is not None

    def allows(self, header: str | None) -> bool:
        if not self.required:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.token is not None:
            return _same(value.strip(), self.token)
        if scheme != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        if self.basic is not None and _same(decoded, self.basic):
            return True
        password = decoded.partition(":")[2]
        return self.token is not None and _same(password, self.token)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(cookie: str | None, field: object) -> bool:
    if not cookie or not isinstance(field, str) or not field:
        return False
    return _same(field, cookie)
