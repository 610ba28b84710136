"""The console's session cookie, its CSRF tokens and its response headers.

The session is a signed cookie (itsdangerous), not a server-side table: any API replica can read it and
nothing has to be cleaned up. It holds a random nonce (the CSRF token is derived from it) and, once signed
in, a fingerprint of the API key used, never the key: a key removed from APERAG_API_KEYS signs its
sessions out at their next request. The signing secret is APERAG_CONSOLE_SESSION_SECRET, or derived from
the API keys, so every replica agrees without another Secret, and changing the keys signs everyone out.

With auth off (no keys) the secret is a constant. That is acceptable: there is nothing to sign in to, and
a CSRF token is bound to the nonce in an HttpOnly, SameSite=Strict cookie that another site can neither
read nor set, so knowing the secret does not let a page forge a token for a victim's browser.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from aperag.config import Settings

COOKIE = "aperag_console"
COOKIE_PATH = "/console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

# What a console page may load and where it may send things: only this origin, no inline script or style
# (htmx is configured not to inject its indicator style), no framing, no plugins.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def key_fingerprint(key: str) -> str:
    return hashlib.sha256(b"aperag-console-key\0" + key.encode()).hexdigest()[:32]


def _secret(settings: Settings) -> bytes:
    if settings.console_session_secret:
        return settings.console_session_secret.encode()
    material = b"\0".join(k.encode() for k in sorted(settings.api_keys))
    return hashlib.sha256(b"aperag-console-session\0" + material).digest()


@dataclass(frozen=True)
class Session:
    nonce: str
    key: str | None = None  # fingerprint of the API key signed in with

    @staticmethod
    def new() -> Session:
        return Session(nonce=secrets.token_urlsafe(24))


class SessionCodec:
    """Reads and writes the session cookie, and derives and checks CSRF tokens, for one app's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._secret = _secret(settings)
        self._serializer = URLSafeTimedSerializer(self._secret, salt="aperag-console-session")
        self.max_age = settings.console_session_hours * 3600
        self._fingerprints = {key_fingerprint(k) for k in settings.api_keys}

    def dumps(self, session: Session) -> str:
        return self._serializer.dumps({"n": session.nonce, "k": session.key})

    def loads(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("n"), str):
            return None
        key = data.get("k")
        return Session(nonce=data["n"], key=key if isinstance(key, str) else None)

    def key_matches(self, key: str) -> bool:
        """The rule of the API's Bearer check: any configured key, compared in constant time."""
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in self.settings.api_keys)

    def signed_in(self, session: Session | None) -> bool:
        if not self.settings.auth_enabled:
            return True
        return session is not None and session.key is not None and session.key in self._fingerprints

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._secret, b"csrf\0" + session.nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)
