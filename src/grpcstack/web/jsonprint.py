"""proto3 JSON text straight from a handler's betterproto2 message, compiled per class.

The general path (jsonmap.py) turns a response into JSON through its wire bytes: the stack
codec's encode, a upb parse, a walk of the upb message into a dict, then ``json.dumps``. For a
50-box OCR response that was ~1 ms of a Connect JSON call's CPU, most of what made JSON calls
slower than the FastAPI service they replace. Here each message class gets a function, generated
once from betterproto2's field metadata and the class's descriptor (JSON names, enum names),
that writes the JSON text directly: no encode, no parse, no intermediate dict.

Output is what the general path gives for the same message (tests compare them): proto3 JSON as
protobuf's ``json_format`` prints the message's wire bytes: fields in number order, camelCase
names, int64 as strings, enums by name (an unknown number as the number), bytes as base64,
float fields at float32 precision (shortest round-trip form), NaN/Infinity as strings, defaults
omitted exactly where the stack's codec omits them on the wire; a singular well-known type field
goes through json_format. Classes with shapes it does not compile (repeated or map values of
well-known types, closed enums, enum value options, no descriptor) raise ``Unsupported`` once
and keep the general path.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import threading
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

from betterproto2 import (
    TYPE_BOOL,
    TYPE_BYTES,
    TYPE_DOUBLE,
    TYPE_ENUM,
    TYPE_FIXED64,
    TYPE_FLOAT,
    TYPE_INT64,
    TYPE_MAP,
    TYPE_MESSAGE,
    TYPE_SFIXED64,
    TYPE_SINT64,
    TYPE_STRING,
    TYPE_UINT64,
)
from google.protobuf import json_format, message_factory
from google.protobuf.internal.type_checkers import ToShortestFloat

from ..codec.wkt import duration_bytes, is_duration

_INT64 = {TYPE_INT64, TYPE_UINT64, TYPE_SINT64, TYPE_FIXED64, TYPE_SFIXED64}
_F32 = struct.Struct("<f")
_FLOAT32_TEXT: dict[float, str] = {}
_FLOAT32_TEXT_MAX = 65_536

Printer = Callable[[Any], str]


class Unsupported(Exception):
    """A class (or a class it contains) this printer does not compile."""


def _special(value: float) -> str | None:
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"-Infinity"' if value < 0 else '"Infinity"'
    return None


def _f64(value: float) -> str:
    text = _special(value)
    return repr(float(value)) if text is None else text


def _f32(value: float) -> str:
    text = _FLOAT32_TEXT.get(value)
    if text is None:
        (wire,) = _F32.unpack(_F32.pack(value))  # what the wire carries
        text = _special(wire) or repr(ToShortestFloat(wire))
        # 0.0 and -0.0 are equal keys: never cache them
        if value != 0.0 and len(_FLOAT32_TEXT) < _FLOAT32_TEXT_MAX:
            _FLOAT32_TEXT[value] = text
    return text


def _bytes(value: bytes) -> str:
    return '"' + base64.b64encode(value).decode() + '"'


def _enum(enum_type: Any) -> Callable[[int], str]:
    if enum_type.is_closed:
        raise Unsupported(f"closed enum {enum_type.full_name}")
    if any(v.GetOptions().ListFields() for v in enum_type.values):
        raise Unsupported(f"enum value options in {enum_type.full_name}")
    names = {v.number: f'"{v.name}"' for v in enum_type.values}

    def enum(value: int) -> str:
        number = int(value)
        text = names.get(number)
        return text if text is not None else str(number)

    return enum


def _well_known(wkt_class: Any) -> Callable[[Any], str]:
    """A singular well-known-type field (Timestamp, Duration, wrappers): its Python value is
    written as the codec writes it and printed by json_format, the rare case kept general."""
    upb_class = message_factory.GetMessageClass(wkt_class.DESCRIPTOR)
    to_wire: Callable[[Any], bytes] = (
        duration_bytes if is_duration(wkt_class) else lambda v: bytes(wkt_class.from_wrapped(v))
    )

    def well_known(value: Any) -> str:
        message = upb_class.FromString(to_wire(value))
        return json.dumps(
            json_format.MessageToDict(message), separators=(",", ":"), ensure_ascii=False
        )

    return well_known


class _Compiler:
    def __init__(self) -> None:
        self.ns: dict[str, Any] = {
            "_esc": encode_basestring,
            "_f32": _f32,
            "_F32T": _FLOAT32_TEXT,
            "_f64": _f64,
            "_bytes": _bytes,
        }
        self.names: dict[type, str] = {}
        self.pending: list[str] = []
        self.counter = 0

    def const(self, value: Any, prefix: str) -> str:
        self.counter += 1
        name = f"_{prefix}{self.counter}"
        self.ns[name] = value
        return name

    def value(self, proto_type: str, x: str, cls: Any, field: Any) -> str:
        """An expression giving the JSON text of ``x``, a value of this field."""
        if proto_type == TYPE_STRING:
            return f"_esc({x})"
        if proto_type == TYPE_BYTES:
            return f"_bytes({x})"
        if proto_type == TYPE_BOOL:
            return f"('true' if {x} else 'false')"
        if proto_type in _INT64:
            return f"('\"%d\"' % {x})"
        if proto_type == TYPE_FLOAT:  # the cache's hit inline: no call for a seen value
            return f"(_F32T.get({x}) or _f32({x}))"
        if proto_type == TYPE_DOUBLE:
            return f"_f64({x})"
        if proto_type == TYPE_ENUM:
            return f"{self.const(_enum(field.enum_type), 'enum')}({x})"
        if proto_type == TYPE_MESSAGE:
            return f"{self.function(cls)}({x})"
        return f"('%d' % {x})"  # 32-bit integers

    def function(self, cls: type) -> str:
        if cls in self.names:
            return self.names[cls]
        descriptor = getattr(cls, "DESCRIPTOR", None)
        meta = getattr(cls, "_betterproto", None)
        if descriptor is None or meta is None:
            raise Unsupported(f"{cls.__name__}: no descriptor")
        name = self.names[cls] = f"_json_{cls.__name__}_{len(self.names)}"
        lines = [f"def {name}(m):", "    o = []"]
        fields = sorted(meta.meta_by_field_name.items(), key=lambda item: item[1].number)
        for fname, fm in fields:
            field = descriptor.fields_by_number[fm.number]
            key = self.const(encode_basestring(field.json_name) + ":", "key")
            pt = fm.proto_type
            lines.append(f"    v = m.{fname}")
            if fm.unwrap is not None:
                if fm.repeated or pt != TYPE_MESSAGE:
                    raise Unsupported(f"{cls.__name__}.{fname}: repeated well-known type")
                wkt = self.const(_well_known(fm.unwrap()), "wkt")
                lines += ["    if v is not None:", f"        o.append({key} + {wkt}(v))"]
            elif pt == TYPE_MAP:
                kmeta, vmeta = fm.map_meta
                if vmeta.unwrap is not None:
                    raise Unsupported(f"{cls.__name__}.{fname}: map of a well-known type")
                entry = field.message_type
                if kmeta.proto_type == TYPE_STRING:
                    k = "_esc(k)"
                elif kmeta.proto_type == TYPE_BOOL:
                    k = "('\"true\"' if k else '\"false\"')"
                else:
                    k = "('\"%d\"' % k)"
                value_cls = meta.cls_by_field.get(f"{fname}.value")
                x = self.value(vmeta.proto_type, "x", value_cls, entry.fields_by_name["value"])
                lines += [
                    "    if v:",
                    f"        o.append({key} + '{{' + ','.join([{k} + ':' + {x} "
                    "for k, x in v.items()]) + '}')",
                ]
            elif fm.repeated:
                x = self.value(pt, "x", meta.cls_by_field.get(fname), field)
                lines += [
                    "    if v:",
                    f"        o.append({key} + '[' + ','.join([{x} for x in v]) + ']')",
                ]
            else:
                # as the codec writes them: messages, optional and oneof members when set,
                # other scalars when not the default (so -0.0 is left out, as on the wire)
                present = (
                    "v is not None" if (fm.optional or fm.group or pt == TYPE_MESSAGE) else "v"
                )
                x = self.value(pt, "v", meta.cls_by_field.get(fname), field)
                lines += [f"    if {present}:", f"        o.append({key} + {x})"]
        lines.append("    return '{' + ','.join(o) + '}'")
        self.pending.append("\n".join(lines))
        return name

    def build(self, cls: type) -> Printer:
        known = dict(self.names)
        try:
            name = self.function(cls)
        except Unsupported:
            self.names, self.pending = known, []  # drop what this attempt half-compiled
            raise
        code = "\n\n".join(self.pending)
        self.pending = []
        exec(compile(code, "<grpcstack.web.jsonprint>", "exec"), self.ns)
        printer: Printer = self.ns[name]
        return printer


_lock = threading.Lock()
_compiler = _Compiler()
_printers: dict[type, Printer | None] = {}


def printer_for(cls: type) -> Printer | None:
    """The compiled printer of ``cls``, or None when it keeps the general path."""
    try:
        return _printers[cls]
    except KeyError:
        pass
    with _lock:
        if cls not in _printers:
            try:
                _printers[cls] = _compiler.build(cls)
            except Unsupported:
                _printers[cls] = None
        return _printers[cls]
