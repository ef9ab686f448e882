"""proto3 JSON for betterproto2 messages, by protobuf's own ``json_format``.

A handler's messages go to and from JSON through their wire bytes and the upb message class of
the same descriptor: JSON -> upb (``json_format.Parse``) -> wire bytes -> the stack codec's
betterproto2 message, and back the same way. So camelCase names, int64 as strings, enums by
name, bytes as base64, maps, oneofs and the well-known types (Timestamp, Duration, Struct,
wrappers, Any, FieldMask) follow the protobuf reference implementation exactly, and a cached
response (``PreEncoded`` bytes) becomes JSON without ever being a dataclass.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError as UpbDecodeError
from google.protobuf.message import Message as ProtobufMessage


class JsonError(ValueError):
    """A JSON request body that is not valid proto3 JSON for its message type (the text names
    the field)."""


class JsonMapper:
    """Per message type: JSON text <-> wire bytes."""

    def __init__(self) -> None:
        self._classes: dict[type, type[ProtobufMessage]] = {}

    def upb_class(self, message_type: type) -> type[ProtobufMessage]:
        cls = self._classes.get(message_type)
        if cls is None:
            if issubclass(message_type, ProtobufMessage):
                cls = message_type
            else:
                descriptor = getattr(message_type, "DESCRIPTOR", None)
                if descriptor is None:
                    raise TypeError(
                        f"{message_type.__name__} has no descriptor: regenerate with "
                        "--python_betterproto2_opt=google_protobuf_descriptors"
                    )
                cls = message_factory.GetMessageClass(descriptor)
            self._classes[message_type] = cls
        return cls

    def json_to_wire(self, text: bytes | str, message_type: type) -> bytes:
        """Wire bytes of the JSON body; unknown fields are ignored (as connect-go does)."""
        cls = self.upb_class(message_type)
        message = cls()
        try:
            if not text or not text.strip():
                return b""  # an empty body is the empty message
            json_format.Parse(text, message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise JsonError(_clean(str(exc))) from None
        except (UnicodeDecodeError, RecursionError) as exc:
            raise JsonError(f"invalid JSON body: {type(exc).__name__}") from None
        return message.SerializeToString()

    def wire_to_json(self, data: bytes, message_type: type) -> bytes:
        cls = self.upb_class(message_type)
        message = cls()
        try:
            message.ParseFromString(data)
        except UpbDecodeError as exc:  # our own codec wrote it: a bug, not bad input
            raise RuntimeError(f"could not re-read {cls.__name__} for JSON: {exc}") from None
        body = json_format.MessageToDict(message, preserving_proto_field_name=False)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def details_to_debug(self, detail: Any) -> Any:
        return json_format.MessageToDict(detail)


def _clean(text: str) -> str:
    # json_format's messages are precise ("Failed to parse count field: ...") but may quote
    # the whole input back; keep them short
    return text if len(text) <= 300 else text[:297] + "..."
