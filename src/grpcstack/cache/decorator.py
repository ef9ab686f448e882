"""``@cached``: read-through caching of a unary service method's responses.

    class StrategyService(StrategyServiceBase):
        @cached(ttl=300)
        async def get_strategy_version(self, message): ...

Entries are per caller by default (the user id of the call, or one scope shared by anonymous
callers): a handler reading ``current_call().user_id`` cannot serve one user's answer to
another. ``shared=True`` declares that the answer does not depend on the caller.

The server binds its GrpcCache to every service with cached methods at start; a service used
outside a server (a unit test calling the method directly) runs uncached. A call whose final
status is NOT_FOUND (a ``GRPCError``, or any exception the error handling maps to NOT_FOUND, e.g.
``KeyError``) is cached for GRPC_CACHE_NEGATIVE_TTL_SECONDS and replayed with its message; other
errors are not cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..codec import PreEncoded, Unsupported, plan
from ..context import current_call
from .binding import BINDING_ATTR, Binding
from .envelope import KIND_NEGATIVE
from .keys import request_key
from .tiered import Negative

F = TypeVar("F", bound=Callable[..., Any])
#: ``(service, request) -> str``: the key material used instead of the whole request message
KeyFn = Callable[[Any, Any], str]


@dataclass(frozen=True)
class CacheSpec:
    attr: str
    ttl: float | None
    tiers: tuple[str, ...] | None
    key: KeyFn | None
    shared: bool


def cached(
    ttl: float | None = None,
    *,
    tiers: Collection[str] | None = None,
    key: KeyFn | None = None,
    shared: bool = False,
) -> Callable[[F], F]:
    """Cache a unary method's responses.

    ``ttl``: seconds (default GRPC_CACHE_DEFAULT_TTL); ``tiers``: e.g. ("l1", "l2");
    ``key(service, request) -> str``: the key material instead of the whole request (e.g. one
    field, so requests differing only in fields the answer ignores share an entry);
    ``shared``: one entry for every caller (default: one per user id, one for anonymous calls).
    """

    def decorate(func: F) -> F:
        spec = CacheSpec(func.__name__, ttl, tuple(tiers) if tiers else None, key, shared)

        @functools.wraps(func)
        async def cached_call(self: Any, message: Any) -> Any:
            binding: Binding | None = getattr(self, BINDING_ATTR, None)
            if binding is None or not binding.cache.enabled:
                return await func(self, message)
            method, reply_type = binding.methods[spec.attr]
            cache = binding.cache
            extra = [] if spec.shared else [caller_scope(current_call())]
            k = request_key(
                method,
                message,
                schema=cache.schema,
                extra=extra,
                material=key_material(spec, self, message),
            )

            async def load() -> bytes | Negative:
                try:
                    reply = await func(self, message)
                except Exception as exc:
                    status, text = cache.final_status(exc)
                    if status is Status.NOT_FOUND:  # whatever raised it
                        return Negative(text.encode())
                    raise
                return encode(reply)

            kind, payload = await cache.tiered.get_or_load(
                k,
                load,
                method=method,
                ttl=spec.ttl if spec.ttl is not None else cache.default_ttl,
                tiers=spec.tiers,
            )
            if kind == KIND_NEGATIVE:
                raise GRPCError(Status.NOT_FOUND, payload.decode(errors="replace") or "not found")
            call = current_call()
            if call is not None and call.method == method:
                # serving this very RPC: the stored bytes go out as they are, no decode/encode
                return PreEncoded(payload)
            return decode(reply_type, payload)

        cached_call.__grpcstack_cache__ = spec  # type: ignore[attr-defined]
        return cached_call  # type: ignore[return-value]

    return decorate


def caller_scope(call: Any) -> str:
    """The key part that keeps one caller's entries from another's."""
    user = call.user_id if call is not None else None
    return f"u={user}" if user else "anon"


def key_material(spec: CacheSpec, service: Any, message: Any) -> str | None:
    if spec.key is None:
        return None
    material = spec.key(service, message)
    if not isinstance(material, str):
        raise TypeError(
            f"@cached(key=...) of {type(service).__name__}.{spec.attr} returned "
            f"{type(material).__name__}, not str"
        )
    return material


def encode(message: Any) -> bytes:
    try:
        return plan.encoder(type(message))(message)
    except Unsupported:
        return bytes(message)


def decode(cls: type, data: bytes) -> Any:
    try:
        return plan.decoder(cls)(data)
    except Unsupported:
        return cls.parse(data)  # type: ignore[attr-defined]


def cache_specs(service: Any) -> list[CacheSpec]:
    """The @cached methods a service really has (an override without @cached hides its base's)."""
    cls = type(service)
    specs = []
    for name in dir(cls):
        spec = getattr(getattr(cls, name, None), "__grpcstack_cache__", None)
        if spec is not None:
            specs.append(spec)
    return specs
