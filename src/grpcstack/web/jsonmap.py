"""proto3 JSON for betterproto2 messages, by protobuf's own ``json_format``.

A handler's messages go to and from JSON through their wire bytes and the upb message class of
the same descriptor: JSON -> upb (``json_format.Parse``) -> wire bytes -> the stack codec's
betterproto2 message, and back the same way. So camelCase names, int64 as strings, enums by
name, bytes as base64, maps, oneofs and the well-known types (Timestamp, Duration, Struct,
wrappers, Any, FieldMask) follow the protobuf reference implementation exactly, and a cached
response (``PreEncoded`` bytes) becomes JSON without ever being a dataclass.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from typing import Any

import betterproto2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.type_checkers import ToShortestFloat
from google.protobuf.message import DecodeError as UpbDecodeError
from google.protobuf.message import Message as ProtobufMessage

from .jsonprint import printer_for


class JsonError(ValueError):
    """A JSON request body that is not valid proto3 JSON for its message type (the text names
    the field)."""


class JsonMapper:
    """Per message type: JSON text <-> wire bytes."""

    def __init__(self) -> None:
        self._classes: dict[type, type[ProtobufMessage]] = {}
        self._printer = _Printer()

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
        try:
            body = self._printer.message(message)
        except _Unsupported:
            body = json_format.MessageToDict(message, preserving_proto_field_name=False)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def direct_json(self, message: Any) -> bytes | None:
        """JSON of a betterproto2 message printed straight from it (jsonprint), or None when
        its class is not compiled there (or it is not a betterproto2 message): use the wire."""
        if not isinstance(message, betterproto2.Message):
            return None
        printer = printer_for(type(message))
        return None if printer is None else printer(message).encode()

    def details_to_debug(self, detail: Any) -> Any:
        return json_format.MessageToDict(detail)


def _clean(text: str) -> str:
    # json_format's messages are precise ("Failed to parse count field: ...") but may quote
    # the whole input back; keep them short
    return text if len(text) <= 300 else text[:297] + "..."


# --- printing: json_format's output, without its per-field interpretation -------------------------

_F = FieldDescriptor
_INT64 = frozenset({_F.CPPTYPE_INT64, _F.CPPTYPE_UINT64})
_FLOAT32_CACHE: dict[float, Any] = {}
_FLOAT32_CACHE_MAX = 65_536

Converter = Callable[[Any], Any]


class _Unsupported(Exception):
    """A shape the printer leaves to json_format (extensions, enum json_name options)."""


class _Printer:
    """proto3 JSON of upb messages, identical to ``json_format.MessageToDict`` (the tests compare
    them over every field shape) but compiled once per message type: json_format re-inspects
    every field's descriptor on every message, which made it ~7 ms for a 50-box OCR response.
    Well-known types (google.protobuf.*) are printed by json_format itself."""

    def __init__(self) -> None:
        self._plans: dict[Descriptor, Converter] = {}

    def message(self, message: Any) -> Any:
        descriptor = message.DESCRIPTOR
        plan = self._plans.get(descriptor)
        if plan is None:
            plan = self._plans[descriptor] = self._compile(descriptor)
        return plan(message)

    def _compile(self, descriptor: Descriptor) -> Converter:
        if descriptor.full_name.startswith("google.protobuf."):
            pool = descriptor.file.pool

            def well_known(message: Any) -> Any:
                return json_format.MessageToDict(message, descriptor_pool=pool)

            return well_known
        fields: dict[int, tuple[str, Converter]] = {}

        def regular(message: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for field, value in message.ListFields():
                entry = fields.get(field.number)
                if entry is None or field.is_extension:
                    entry = fields[field.number] = self._field(field)
                name, convert = entry
                out[name] = convert(value)
            return out

        return regular

    def _field(self, field: FieldDescriptor) -> tuple[str, Converter]:
        if field.is_extension:
            raise _Unsupported("extension")
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            key_field = message_type.fields_by_name["key"]
            key: Converter = _bool_key if key_field.cpp_type == _F.CPPTYPE_BOOL else str
            value = self._value(message_type.fields_by_name["value"])

            def map_field(entries: Any) -> dict[str, Any]:
                return {key(k): value(v) for k, v in entries.items()}

            return field.json_name, map_field
        value = self._value(field)
        if field.is_repeated:

            def repeated(items: Any) -> list[Any]:
                return [value(item) for item in items]

            return field.json_name, repeated
        return field.json_name, value

    def _value(self, field: FieldDescriptor) -> Converter:
        cpp = field.cpp_type
        if cpp == _F.CPPTYPE_MESSAGE:
            return self.message
        if cpp == _F.CPPTYPE_ENUM:
            return _enum(field)
        if cpp == _F.CPPTYPE_STRING:
            return _bytes if field.type == _F.TYPE_BYTES else _same
        if cpp == _F.CPPTYPE_BOOL:
            return bool
        if cpp in _INT64:
            return str
        if cpp == _F.CPPTYPE_FLOAT:
            return _float32
        if cpp == _F.CPPTYPE_DOUBLE:
            return _double
        return _same


def _same(value: Any) -> Any:
    return value


def _bool_key(value: bool) -> str:
    return "true" if value else "false"


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _non_finite(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    return None


def _double(value: float) -> Any:
    special = _non_finite(value)
    return value if special is None else special


def _float32(value: float) -> Any:
    out = _FLOAT32_CACHE.get(value)
    if out is None:
        special = _non_finite(value)
        out = ToShortestFloat(value) if special is None else special
        # 0.0 and -0.0 are equal keys: never cache them
        if value != 0.0 and len(_FLOAT32_CACHE) < _FLOAT32_CACHE_MAX:
            _FLOAT32_CACHE[value] = out
    return out


def _enum(field: FieldDescriptor) -> Converter:
    enum_type = field.enum_type
    if enum_type.full_name == "google.protobuf.NullValue":
        return lambda value: None
    if any(v.GetOptions().ListFields() for v in enum_type.values):
        raise _Unsupported("enum value options")  # json_name options: json_format knows them
    names = {v.number: v.name for v in enum_type.values}
    closed = enum_type.is_closed

    def enum(value: int) -> Any:
        name = names.get(value)
        if name is not None:
            return name
        if closed:
            raise json_format.SerializeToJsonError(
                "Enum field contains an integer value which can not mapped to an enum value."
            )
        return value

    return enum
