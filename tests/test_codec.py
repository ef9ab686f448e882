"""Differential tests of the plan codec against betterproto2 and upb (the C protobuf runtime).

Hypothesis builds upb messages for the project's protos and a coverage proto with every field
shape; the same wire bytes then go through betterproto2, the plan and upb, both ways.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

import betterproto2
import pytest
from google.protobuf import descriptor as d
from google.protobuf import json_format, message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gen.common.v1 import Metadata
from gen.coverage.v1 import Everything, Inner, Node, Scalars, Unplanned
from gen.echo.v1 import EchoRequest, EchoResponse
from gen.google.protobuf import Duration
from gen.grpc.testing import Empty, SimpleRequest
from gen.llm.v1 import LlmResponse
from gen.ocr.v1 import OcrBatchProgress, OcrRequest, OcrResponse
from grpcstack.codec import DecodeError, PreEncoded, StackCodec, plan

CLASSES = [
    Everything,
    Node,
    OcrResponse,
    OcrRequest,
    OcrBatchProgress,
    LlmResponse,
    EchoRequest,
    EchoResponse,
    Empty,
    SimpleRequest,
]
F = d.FieldDescriptor
#: the reported cases: negative with a fraction, and just under zero
NEGATIVE_EDGES = [
    datetime.timedelta(seconds=-1.5),
    datetime.timedelta(microseconds=-1),
    datetime.timedelta(seconds=-1, microseconds=-1),
    datetime.timedelta(days=-1, microseconds=1),
    datetime.timedelta(seconds=-315_576_000_000, microseconds=1),
]

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def upb_class(cls: type) -> Any:
    return message_factory.GetMessageClass(cls.DESCRIPTOR)


def scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        return st.one_of(st.integers(lo, hi), st.sampled_from([0, lo, hi, 1, 127, 128, 16384]))
    if t == F.TYPE_BOOL:
        return st.booleans()
    # betterproto2 treats -0.0 as the default and drops it, where upb keeps it: leave it out here
    # (the NaN and -0.0 cases are compared with betterproto2 directly below)
    if t == F.TYPE_DOUBLE:
        return st.floats(allow_nan=False).map(lambda x: x + 0.0)
    if t == F.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=False).map(lambda x: x + 0.0)
    if t == F.TYPE_STRING:
        return st.text(max_size=20)
    if t == F.TYPE_BYTES:
        return st.binary(max_size=20)
    if t == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    raise AssertionError(field.type)


@st.composite
def fill(draw: Any, message: Any, depth: int = 0) -> Any:
    """Set a random subset of ``message``'s fields, recursively."""
    desc = message.DESCRIPTOR
    if desc.full_name == "google.protobuf.Timestamp":
        message.seconds = draw(st.integers(0, 4_000_000_000))
        message.nanos = draw(st.integers(0, 999_999)) * 1000  # betterproto2 keeps microseconds
        return message
    if desc.full_name == "google.protobuf.Duration":
        # valid Durations: nanos shares the sign of seconds (microseconds, as timedelta keeps)
        message.seconds = draw(st.integers(-100_000, 100_000))
        nanos = draw(st.integers(0, 999_999)) * 1000
        sign = -1 if message.seconds < 0 or (message.seconds == 0 and draw(st.booleans())) else 1
        message.nanos = sign * nanos
        return message
    for field in desc.fields:
        if not draw(st.booleans()) or (field.message_type is not None and depth > 3):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 3))):
                key = draw(scalar(key_field))
                if value_field.message_type is not None:
                    draw(fill(target[key], depth + 1))
                else:
                    target[key] = draw(scalar(value_field))
        elif field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 4))):
                if field.message_type is not None:
                    draw(fill(target.add(), depth + 1))
                else:
                    target.append(draw(scalar(field)))
        elif field.message_type is not None:
            sub = getattr(message, field.name)
            sub.SetInParent()
            draw(fill(sub, depth + 1))
        else:
            setattr(message, field.name, draw(scalar(field)))
    return message


def upb_messages(cls: type) -> st.SearchStrategy[Any]:
    return st.builds(upb_class(cls)).flatmap(lambda m: fill(m))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_plan_agrees_with_betterproto2_and_upb(cls: type, data: Any) -> None:
    upb = data.draw(upb_messages(cls))
    wire = upb.SerializeToString()
    ours = plan.decoder(cls)(wire)
    theirs = cls.parse(wire)  # type: ignore[attr-defined]
    assert ours == theirs  # parse equals betterproto2's parse
    encoded = plan.encoder(cls)(ours)
    if not negative_fraction(upb):  # there betterproto2 writes the wrong Duration, see below
        assert encoded == bytes(theirs)  # byte-identical to betterproto2
    assert type(upb).FromString(encoded) == upb  # and upb reads back what it wrote


def negative_fraction(message: Any) -> bool:
    """A Duration below zero with a fractional part anywhere in ``message``."""
    if message.DESCRIPTOR.full_name == "google.protobuf.Duration":
        return bool(message.nanos < 0)
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = value.values() if field.message_type.fields[1].message_type else []
        else:
            values = value if field.is_repeated else [value]
        if any(negative_fraction(v) for v in values):
            return True
    return False


@pytest.mark.parametrize("cls", [Everything, OcrResponse], ids=lambda c: c.__name__)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_upb_parses_plan_output_of_random_betterproto2_messages(cls: type, data: Any) -> None:
    upb = data.draw(upb_messages(cls))
    message = cls.parse(upb.SerializeToString())  # type: ignore[attr-defined]
    wire = plan.encoder(cls)(message)
    # upb (the C runtime, an independent parser) reads the plan's bytes back to the same message
    parsed = upb_class(cls).FromString(wire)
    assert parsed == upb
    assert parsed.SerializeToString(deterministic=True) == upb.SerializeToString(deterministic=True)
    assert plan.decoder(cls)(wire) == message


def test_map_order_oneof_presence_and_unknown_fields() -> None:
    a = Metadata(data={"x": "1", "y": "2"})
    assert plan.encoder(Metadata)(a) == bytes(a)
    e = Everything(choice_number=0, maybe_int=0, maybe_text="")
    wire = plan.encoder(Everything)(e)
    assert wire == bytes(e)
    back = plan.decoder(Everything)(wire)
    assert back.choice_number == 0 and back.maybe_int == 0 and back.maybe_text == ""
    assert back.choice_text is None and back.choice_inner is None
    # two oneof members on the wire: the last one wins, as in upb. betterproto2 0.10 keeps both
    # set (its issue #172); here the plan deliberately follows the protobuf spec instead.
    two = bytes(Everything(choice_text="a")) + bytes(Everything(choice_number=5))
    ours = plan.decoder(Everything)(two)
    assert (ours.choice_text, ours.choice_number) == (None, 5)
    upb = upb_class(Everything).FromString(two)
    assert upb.WhichOneof("choice") == "choice_number" and upb.choice_number == 5
    # unknown fields survive a round trip
    unknown = bytes(Inner(name="n")) + b"\xb8\x3e\x07" + b"\xc2\x3e\x02hi"  # fields 999 and 1000
    parsed = plan.decoder(Inner)(unknown)
    assert parsed == Inner.parse(unknown) and plan.encoder(Inner)(parsed) == unknown
    # negative enum values, floats as float32, NaN
    neg = Everything(packed_float=[1.5, float("nan")], scalars=None)
    assert plan.encoder(Everything)(neg) == bytes(neg)
    assert math.isnan(plan.decoder(Everything)(bytes(neg)).packed_float[1])
    zero = Scalars(f_double=-0.0, f_float=-0.0)
    assert plan.encoder(Scalars)(zero) == bytes(zero) == b""


MALFORMED = [
    (b"\x08", "truncated varint"),
    (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint longer than 10 bytes"),
    (b"\x0a\x05ab", "length past the end"),
    (b"\x0f", "wire type 7"),
    (b"\x0b", "group start (wire type 3)"),
    (b"\x00\x01", "field number 0"),
    (b"\x0a\x02\xff\xfe", "invalid UTF-8"),
    (b"\x15\x00\x00", "truncated fixed32"),
]


@pytest.mark.parametrize(("wire", "what"), MALFORMED, ids=[w for _, w in MALFORMED])
def test_malformed_input_is_a_decode_error(wire: bytes, what: str) -> None:
    with pytest.raises(DecodeError):
        plan.decoder(Inner if what != "truncated fixed32" else OcrResponse)(wire)


def test_nesting_depth_is_limited() -> None:
    wire = b""
    for _ in range(150):
        wire = b"\x0a" + _len(wire) + wire
    with pytest.raises(DecodeError, match="too deep"):
        plan.decoder(Node)(wire)
    shallow = b""
    for _ in range(50):
        shallow = b"\x0a" + _len(shallow) + shallow
    assert plan.decoder(Node)(shallow) == Node.parse(shallow)


def _len(b: bytes) -> bytes:
    return plan._uvarint(len(b))


def test_codec_passthrough_fallback_and_type_errors() -> None:
    codec = StackCodec()
    reply = EchoResponse(message="x")
    assert codec.encode(PreEncoded(bytes(reply)), EchoResponse) == bytes(reply)
    with pytest.raises(TypeError, match="PreEncoded"):
        codec.encode(b"raw", EchoResponse)
    with pytest.raises(
        TypeError, match=r"gen\.echo\.v1\.EchoResponse, not gen\.echo\.v1\.EchoRequest"
    ):
        codec.encode(EchoRequest(), EchoResponse)
    # a shape the plan does not cover is served by betterproto2, and counted
    from datetime import UTC, datetime

    un = Unplanned(stamps=[datetime(2026, 1, 1, tzinfo=UTC)])
    assert codec.encode(un, Unplanned) == bytes(un)
    assert codec.decode(bytes(un), Unplanned) == un
    assert Unplanned in codec.fallbacks
    assert codec.fallback_counter.labels("encode", "Unplanned")._value.get() == 1
    assert codec.fallback_counter.labels("decode", "Unplanned")._value.get() == 1
    # grpclib's own protobuf messages (health, reflection) still work
    from grpclib.health.v1.health_pb2 import HealthCheckResponse

    hc = HealthCheckResponse(status=1)
    assert codec.decode(codec.encode(hc, HealthCheckResponse), HealthCheckResponse) == hc
    plain = StackCodec("betterproto2")
    assert plain.decode(plain.encode(reply, EchoResponse), EchoResponse) == reply


# --- google.protobuf.Duration against protobuf's own conversions -----------------------------

DURATIONS = st.timedeltas(
    min_value=datetime.timedelta(seconds=-315_576_000_000),
    max_value=datetime.timedelta(seconds=315_576_000_000),
)


@settings(max_examples=300, deadline=None)
@given(delta=st.one_of(DURATIONS, st.sampled_from(NEGATIVE_EDGES)))
def test_duration_encodes_as_protobuf_from_timedelta(delta: datetime.timedelta) -> None:
    """betterproto2 wrote -1.5 s as seconds=-1, nanos=+500000000 (-0.5 s, and a sign mismatch
    protobuf's JSON printer refuses); the plan writes what ``Duration.FromTimedelta`` does."""
    expected = upb_class(Everything)()
    expected.elapsed.FromTimedelta(delta)
    wire = plan.encoder(Everything)(Everything(elapsed=delta))
    assert wire == expected.SerializeToString()
    assert json_format.MessageToJson(type(expected).FromString(wire)) == json_format.MessageToJson(
        expected
    )
    assert plan.decoder(Everything)(wire).elapsed == delta


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.integers(-315_576_000_000, 315_576_000_000),
    nanos=st.integers(0, 999_999_999),
    negative=st.booleans(),
)
def test_duration_decodes_as_protobuf_to_timedelta(
    seconds: int, nanos: int, negative: bool
) -> None:
    """Any valid Duration (sub-microsecond nanos too: truncated toward zero like protobuf's
    ``ToTimedelta``; betterproto2 rounded 1500 ns to 2 us)."""
    if seconds < 0 or (seconds == 0 and negative):
        nanos = -nanos
    elif seconds > 0:
        nanos = abs(nanos)
    upb = upb_class(Everything)()
    upb.elapsed.seconds, upb.elapsed.nanos = seconds, nanos
    assert plan.decoder(Everything)(upb.SerializeToString()).elapsed == upb.elapsed.ToTimedelta()


def test_duration_through_the_stack_codec() -> None:
    codec = StackCodec()
    for delta in NEGATIVE_EDGES:
        wire = codec.encode(Everything(elapsed=delta), Everything)
        upb = upb_class(Everything).FromString(wire)
        assert upb.elapsed.ToTimedelta() == delta
        assert codec.decode(wire, Everything).elapsed == delta


@dataclass(eq=False, repr=False)
class Spans(betterproto2.Message):
    """Repeated and optional Durations (no project proto has them): betterproto2 wrote
    -0.25 s as seconds=0, nanos=+750000000 here too."""

    # (betterproto2's own field declarations, as its generated code writes them)
    spans: list[datetime.timedelta] = betterproto2.field(  # noqa: RUF009
        1, betterproto2.TYPE_MESSAGE, repeated=True, unwrap=lambda: Duration
    )
    one: datetime.timedelta | None = betterproto2.field(  # noqa: RUF009
        2, betterproto2.TYPE_MESSAGE, optional=True, unwrap=lambda: Duration
    )


def upb_spans() -> Any:
    """The upb class of Spans' schema, built in a pool of its own."""
    from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(duration_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="spans.proto",
        package="spans",
        syntax="proto3",
        dependency=["google/protobuf/duration.proto"],
    )
    message = proto.message_type.add(name="Spans")
    repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    duration = ".google.protobuf.Duration"
    message.field.add(
        name="spans", number=1, label=repeated, type=F.TYPE_MESSAGE, type_name=duration
    )
    message.field.add(name="one", number=2, label=optional, type=F.TYPE_MESSAGE, type_name=duration)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("spans.Spans"))


@settings(max_examples=200, deadline=None)
@given(
    spans=st.lists(st.one_of(DURATIONS, st.sampled_from(NEGATIVE_EDGES)), max_size=5),
    one=st.none() | DURATIONS,
)
def test_repeated_durations_are_planned_and_match_protobuf(
    spans: list[datetime.timedelta], one: datetime.timedelta | None
) -> None:
    upb_cls = upb_spans()
    expected = upb_cls()
    for delta in spans:
        expected.spans.add().FromTimedelta(delta)
    if one is not None:
        expected.one.FromTimedelta(one)
    wire = plan.encoder(Spans)(Spans(spans=spans, one=one))  # compiled: no fallback
    assert upb_cls.FromString(wire) == expected
    back = plan.decoder(Spans)(expected.SerializeToString())
    assert (back.spans, back.one) == (spans, one)
