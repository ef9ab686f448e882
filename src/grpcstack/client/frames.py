"""HTTP/2 frame layout and constants for the client connection (RFC 9113 section 4 and 6), and
the error a stream ends with when no gRPC status came."""

from __future__ import annotations

import struct

from grpclib.const import Status

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEAD = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, stream id
U32 = struct.Struct(">L")
SETTING = struct.Struct(">HL")
GOAWAY_BODY = struct.Struct(">LL")
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
DEFAULT_WINDOW = 65_535
MAX_STREAM_ID = 2**31 - 1
REFUSED_STREAM, CANCEL = 0x7, 0x8
# RST_STREAM without grpc-status, mapped as gRPC's HTTP/2 spec says
RST_STATUS = {
    0x7: Status.UNAVAILABLE,  # REFUSED_STREAM
    0x8: Status.CANCELLED,
    0xB: Status.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: Status.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return HEAD.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


class StreamError(Exception):
    """A stream ended without a gRPC status: reset, refused or its connection lost."""

    def __init__(self, status: Status, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: the server never processed the stream (REFUSED_STREAM, over a GOAWAY's last id)
        self.refused = refused
