"""Well-known types the plan encodes itself instead of through betterproto2's wrappers.

google.protobuf.Duration: betterproto2 0.10's ``Duration.from_timedelta`` splits a negative
timedelta with a fractional part into seconds rounded toward zero and a *positive* remainder
(-1.5 s became seconds=-1, nanos=+500000000, i.e. -0.5 s, and a value protobuf rejects: the
spec wants nanos with the sign of seconds). Here the split is exact integer arithmetic on the
timedelta's microseconds, truncating toward zero with both parts carrying the sign, as
protobuf's own ``Duration.FromTimedelta`` does; decoding truncates sub-microsecond nanos toward
zero as ``Duration.ToTimedelta`` does.
"""

from __future__ import annotations

import datetime
from typing import Any

_US = 1_000_000
_NS_PER_US = 1_000


def duration_parts(delta: datetime.timedelta) -> tuple[int, int]:
    """(seconds, nanos) of ``delta``: same sign, |nanos| < 1e9."""
    us = (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds
    seconds, rest = divmod(abs(us), _US)
    if us < 0:
        return -seconds, -rest * _NS_PER_US
    return seconds, rest * _NS_PER_US


def duration_timedelta(message: Any) -> datetime.timedelta:
    """The timedelta of a parsed Duration message; sub-microsecond nanos truncated toward zero,
    as protobuf's ``ToTimedelta`` (betterproto2 rounds them half-to-even: 1500 ns gave 2 us)."""
    nanos: int = message.nanos
    us = -(-nanos // _NS_PER_US) if nanos < 0 else nanos // _NS_PER_US
    return datetime.timedelta(seconds=message.seconds, microseconds=us)


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64/int32: two's complement, 10 bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def duration_bytes(delta: datetime.timedelta) -> bytes:
    """The wire bytes of a google.protobuf.Duration message for ``delta`` (fields 1 and 2,
    zero values omitted, as proto3 does)."""
    seconds, nanos = duration_parts(delta)
    out = b""
    if seconds:
        out += b"\x08" + _varint(seconds)
    if nanos:
        out += b"\x10" + _varint(nanos)
    return out


def is_duration(message_class: Any) -> bool:
    """True for betterproto2's google.protobuf.Duration class (the one with from_timedelta)."""
    return callable(getattr(message_class, "from_timedelta", None)) and callable(
        getattr(message_class, "to_timedelta", None)
    )
