"""Hostile message bodies: the plan decoder stays linear, merges like upb, keeps unknown bytes."""

from __future__ import annotations

import time

from google.protobuf import message_factory

from gen.coverage.v1 import Everything, Inner
from gen.echo.v1 import EchoRequest
from grpcstack.codec import plan


def test_ten_mib_of_unknown_fields_decodes_in_linear_time() -> None:
    """10 MiB of 1 KiB unknown fields: concatenating per field would copy ~50 GB."""
    field = b"\xfa\x01" + b"\x80\x08" + bytes(1024)  # field 31, length-delimited, 1 KiB
    body = b"\x0a\x02hi" + field * (10 * 1024 * 1024 // len(field))
    decode = plan.decoder(EchoRequest)
    start = time.perf_counter()
    message = decode(body)
    assert time.perf_counter() - start < 5  # quadratic: minutes
    assert message.message == "hi"
    assert message._unknown_fields == body[4:]
    assert bytes(message) == body  # re-emitted byte for byte


def test_many_tiny_unknown_fields_decode_in_linear_time() -> None:
    """The issue's attack shape: 1 MiB of two-byte unknown fields (half a million of them).
    Quadratic concatenation copies ~270 GB here; linear takes about a second."""
    decode = plan.decoder(EchoRequest)
    body = b"\x78\x01" * (512 * 1024)
    start = time.perf_counter()
    assert decode(body)._unknown_fields == body
    assert time.perf_counter() - start < 15


def test_non_canonical_tags_of_unknown_fields_are_kept() -> None:
    # field 15 varint with an over-long (two-byte) tag, then a canonical multi-byte tag (field 20)
    body = b"\xf8\x00\x05" + b"\xa0\x01\x07"
    message = plan.decoder(EchoRequest)(body)
    # the over-long tag is re-encoded canonically; the canonical one is kept as it came
    assert message._unknown_fields == b"\x78\x05\xa0\x01\x07"
    upb = message_factory.GetMessageClass(EchoRequest.DESCRIPTOR)()  # type: ignore[attr-defined]
    upb.ParseFromString(message._unknown_fields)
    assert upb.SerializeToString() == b"\x78\x05\xa0\x01\x07"


def test_a_singular_message_field_seen_twice_merges_as_upb_does() -> None:
    first = bytes(Everything(inner=Inner(name="a")))
    second = bytes(Everything(inner=Inner(weight=3)))
    body = first + second
    ours = plan.decoder(Everything)(body)
    upb = message_factory.GetMessageClass(Everything.DESCRIPTOR)()  # type: ignore[attr-defined]
    upb.ParseFromString(body)
    assert ours.inner == Inner(name="a", weight=3)
    assert (upb.inner.name, upb.inner.weight) == ("a", 3)
    # three occurrences, the last one wins per scalar
    third = bytes(Everything(inner=Inner(name="c")))
    assert plan.decoder(Everything)(body + third).inner == Inner(name="c", weight=3)
