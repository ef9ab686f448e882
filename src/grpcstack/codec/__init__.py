"""The stack's wire codec for betterproto2 messages, on every grpclib Server and Channel it builds.

* betterproto2 messages: the per-class plan (``grpcstack.codec.plan``), falling back to
  betterproto2 per class for shapes the plan does not compile (counted);
* ``PreEncoded`` bytes (e.g. a cache hit): sent as they are, no decode/encode;
* protobuf (upb) messages, as grpclib's own health and reflection use: SerializeToString/FromString;
* GRPC_CODEC=betterproto2 switches the plan off (to rule it out when debugging).

A wrong response type is a clear error naming both types (the server answers INTERNAL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import betterproto2
from google.protobuf.message import Message as ProtobufMessage
from grpclib.encoding.base import CodecBase
from prometheus_client import CollectorRegistry, Counter

from . import plan
from .plan import DecodeError, Unsupported

log = logging.getLogger("grpcstack.codec")

__all__ = ["DecodeError", "PreEncoded", "StackCodec", "Unsupported"]


class PreEncoded(bytes):
    """Wire bytes of a message of the declared response type, sent without re-encoding."""

    __slots__ = ()


class StackCodec(CodecBase):
    __content_subtype__ = "proto"

    def __init__(self, mode: str = "plan", registry: CollectorRegistry | None = None) -> None:
        if mode not in ("plan", "betterproto2"):
            raise ValueError(f"unknown codec mode {mode!r}")
        self.mode = mode
        #: messages encoded/decoded by betterproto2 because the plan does not cover their class
        self.fallback_counter = Counter(
            "grpcstack_codec_fallback_total",
            "Messages the plan codec handed to betterproto2 (shapes it does not compile).",
            ("direction", "message"),
            registry=registry if registry is not None else CollectorRegistry(),
        )
        self._encoders: dict[type, Callable[[Any], bytes]] = {}
        self._decoders: dict[type, Callable[[bytes], Any]] = {}
        #: classes served by betterproto2 because the plan does not cover them
        self.fallbacks: set[type] = set()

    def _encoder_for(self, cls: type) -> Callable[[Any], bytes]:
        if issubclass(cls, ProtobufMessage):
            return cls.SerializeToString  # type: ignore[no-any-return]
        if self.mode == "plan":
            try:
                return plan.encoder(cls)
            except Unsupported as exc:
                self._fallback(cls, exc)
                counted = self.fallback_counter.labels("encode", cls.__name__)

                def encode(message: Any) -> bytes:
                    counted.inc()
                    return bytes(message)

                return encode
        return bytes

    def _decoder_for(self, cls: type) -> Callable[[bytes], Any]:
        if issubclass(cls, ProtobufMessage):
            return cls.FromString  # type: ignore[no-any-return]
        if self.mode == "plan":
            try:
                return plan.decoder(cls)
            except Unsupported as exc:
                self._fallback(cls, exc)
                counted = self.fallback_counter.labels("decode", cls.__name__)

                def decode(data: bytes) -> Any:
                    counted.inc()
                    return cls.parse(data)  # type: ignore[attr-defined]

                return decode
        return cls.parse  # type: ignore[attr-defined,no-any-return]

    def _fallback(self, cls: type, exc: Exception) -> None:
        if cls not in self.fallbacks:
            self.fallbacks.add(cls)
            log.info("codec: %s uses betterproto2 (%s)", cls.__name__, exc)

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            if isinstance(message, PreEncoded):
                return message
            raise TypeError(
                f"a handler returned raw bytes for {message_type.__name__}; "
                "wrap pre-encoded wire bytes in grpcstack.codec.PreEncoded"
            )
        cls = type(message)
        # checked on every call: a class seen before may still be the wrong one for this method
        if cls is not message_type and message_type is not bytes:
            if not isinstance(message, message_type):
                raise TypeError(
                    f"response must be {message_type.__module__}.{message_type.__name__}, "
                    f"not {cls.__module__}.{cls.__name__}"
                )
        fn = self._encoders.get(cls)
        if fn is None:
            fn = self._encoders[cls] = self._encoder_for(cls)
        return fn(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is bytes:  # raw passthrough (proxies, load testers)
            return data
        fn = self._decoders.get(message_type)
        if fn is None:
            if not (
                isinstance(message_type, type)
                and issubclass(message_type, betterproto2.Message | ProtobufMessage)
            ):
                raise TypeError(f"cannot decode into {message_type!r}")
            fn = self._decoders[message_type] = self._decoder_for(message_type)
        return fn(data)
