"""Auth: who is calling, and may they call this method.

The default verifier trusts the ``user-id`` header, as the seeds do behind a gateway. The HMAC
verifier checks a signed bearer token (``authorization: Bearer <token>``, see ``make_token``) so a
service can run without a trusted gateway. A missing or invalid identity is UNAUTHENTICATED; an
identity the ``authorize`` callback refuses is PERMISSION_DENIED. Exempt methods (health and
reflection by default) are matched on the exact full method name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..settings import DEFAULT_AUTH_EXEMPT_METHODS
from .base import Middleware

if TYPE_CHECKING:
    from grpclib.events import RecvRequest
    from grpclib.metadata import _Metadata

    from ..context import CallContext

USER_ID_KEY = "user-id"
_USER_ID = re.compile(r"^[A-Za-z0-9._@:+\-]{1,128}$")

Authorize = Callable[[str, str], bool | Awaitable[bool]]


class Verifier(Protocol):
    """Returns the caller's user id, None when no credentials were sent; raises
    GRPCError(UNAUTHENTICATED) for credentials that are present but invalid. ``verify`` may be
    a coroutine function (e.g. to ask an identity service) or a plain one."""

    def verify(self, metadata: _Metadata, method: str) -> str | Awaitable[str | None] | None: ...


def _unauthenticated(message: str) -> GRPCError:
    return GRPCError(Status.UNAUTHENTICATED, message)


def _single(metadata: _Metadata, key: str) -> str | bytes | None:
    """The one value of ``key``: two are ambiguous (a gateway that appends instead of replacing
    would let the caller pick its identity), so they are refused, not resolved."""
    values = metadata.getall(key, ())
    if len(values) > 1:
        raise _unauthenticated(f'"{key}" metadata given more than once')
    return values[0] if values else None


class TrustedHeaderVerifier:
    """Trusts ``user-id`` metadata set by a gateway in front of the service."""

    def __init__(self, key: str = USER_ID_KEY) -> None:
        self.key = key

    def verify(self, metadata: _Metadata, method: str) -> str | None:
        value = _single(metadata, self.key)
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not _USER_ID.match(value):
            raise _unauthenticated(f'invalid "{self.key}" metadata')
        return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(
    secret: str | bytes, user_id: str, *, ttl: float = 3600, now: float | None = None
) -> str:
    """A bearer token for HmacTokenVerifier: base64url(JSON claims) "." base64url(HMAC-SHA256)."""
    key = secret.encode() if isinstance(secret, str) else secret
    issued = time.time() if now is None else now
    claims = json.dumps({"sub": user_id, "exp": int(issued + ttl)}, separators=(",", ":")).encode()
    body = _b64(claims)
    signature = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(signature)}"


class HmacTokenVerifier:
    """Checks ``authorization: Bearer <token>`` signed with a shared secret (see make_token)."""

    def __init__(self, secret: str | bytes, *, leeway: float = 30.0) -> None:
        if not secret:
            raise ValueError("HmacTokenVerifier needs a non-empty secret")
        self._key = secret.encode() if isinstance(secret, str) else secret
        self.leeway = leeway

    def verify(self, metadata: _Metadata, method: str) -> str | None:
        header = _single(metadata, "authorization")
        if header is None:
            return None
        if not isinstance(header, str) or not header.startswith("Bearer "):
            raise _unauthenticated("authorization must be a Bearer token")
        body, _, signature = header[7:].strip().partition(".")
        expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        if not signature or not hmac.compare_digest(signature, expected):
            raise _unauthenticated("invalid token signature")
        try:
            claims = json.loads(_unb64(body))
            user_id, expires = claims["sub"], float(claims["exp"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _unauthenticated("malformed token") from None
        if not isinstance(user_id, str) or not _USER_ID.match(user_id):
            raise _unauthenticated("malformed token subject")
        if expires + self.leeway < time.time():
            raise _unauthenticated("token expired")
        return user_id


class AuthMiddleware(Middleware):
    name = "auth"
    trusted = True

    def __init__(
        self,
        *,
        verifier: Verifier | None = None,
        exempt_methods: Collection[str] = DEFAULT_AUTH_EXEMPT_METHODS,
        authorize: Authorize | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.verifier: Verifier = verifier or TrustedHeaderVerifier()
        self.exempt = frozenset(exempt_methods)
        self.authorize = authorize
        # plain functions all the way down: no coroutine per call
        sync = not inspect.iscoroutinefunction(self.verifier.verify) and not (
            authorize is not None and inspect.iscoroutinefunction(authorize)
        )
        self.on_request = self._on_request_sync if sync else self._on_request_async  # type: ignore[assignment]
        self._missing = (
            f'missing "{self.verifier.key}" metadata'
            if isinstance(self.verifier, TrustedHeaderVerifier)
            else "missing credentials"
        )

    def _check(self, method: str, user_id: str | None, call: CallContext) -> None:
        if user_id is None:
            raise _unauthenticated(self._missing)
        call.user_id = user_id

    def _denied(self, user_id: str, method: str) -> GRPCError:
        return GRPCError(Status.PERMISSION_DENIED, f"{user_id} may not call {method}")

    async def _on_request_async(self, event: RecvRequest, call: CallContext) -> None:
        method = event.method_name
        if method in self.exempt:
            return
        user_id = self.verifier.verify(event.metadata, method)
        if inspect.isawaitable(user_id):
            user_id = await user_id
        self._check(method, user_id, call)
        if self.authorize is not None:
            allowed = self.authorize(call.user_id or "", method)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                raise self._denied(call.user_id or "", method)

    def _on_request_sync(self, event: RecvRequest, call: CallContext) -> None:
        method = event.method_name
        if method in self.exempt:
            return
        self._check(method, self.verifier.verify(event.metadata, method), call)  # type: ignore[arg-type]
        if self.authorize is not None and not self.authorize(call.user_id or "", method):
            raise self._denied(call.user_id or "", method)
