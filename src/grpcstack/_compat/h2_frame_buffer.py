"""h2's frame buffer with the frames a gRPC server mostly receives built straight from bytes."""

from __future__ import annotations

import struct
from typing import Any

from h2.frame_buffer import FrameBuffer
from hyperframe.flags import Flags
from hyperframe.frame import DataFrame, HeadersFrame, WindowUpdateFrame

#: hyperframe's frame header: 24-bit length (16 + 8), type, flags, stream id (R bit included)
_HEADER = struct.Struct(">HBBBL")
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x01, 0x04, 0x08, 0x20


def _valid_names(cls: type) -> frozenset[str]:
    return frozenset(flag.name for flag in cls.defined_flags)  # type: ignore[attr-defined]


_DATA_NAMES = _valid_names(DataFrame)
_HEADERS_NAMES = _valid_names(HeadersFrame)
_WINDOW_NAMES = _valid_names(WindowUpdateFrame)
_INCREMENT = struct.Struct(">L")
_MAX_INCREMENT = 2**31 - 1


class LeanFrameBuffer(FrameBuffer):
    """h2's FrameBuffer (4.4) that builds a DATA frame without padding, a HEADERS frame that is a
    whole header block without padding or priority, and a valid WINDOW_UPDATE (gRPC clients send
    two per call) straight from their bytes: the same frame class with the same fields and flags
    hyperframe's parse gives h2, without its generic steps (~1/3 of h2's receive cost). Anything
    else, a frame h2 would refuse (too long, stream 0, a bad increment) and every frame of a
    CONTINUATION sequence go through h2's own parse."""

    def __next__(self) -> Any:
        data = self._data
        if len(data) < 9 or self._headers_buffer or self._preamble_len:
            return super().__next__()
        high, low, kind, flags, stream_id = _HEADER.unpack_from(data)
        if kind == 8:
            return self._window_update(data, high, low, stream_id)
        if kind == 0:
            if flags & _PADDED:
                return super().__next__()
            cls, names = DataFrame, _DATA_NAMES
        elif kind == 1:
            if flags & (_PADDED | _PRIORITY | _END_HEADERS) != _END_HEADERS:
                return super().__next__()
            cls, names = HeadersFrame, _HEADERS_NAMES
        else:
            return super().__next__()
        length = (high << 8) | low
        stream_id &= 0x7FFFFFFF
        if not stream_id or length > self.max_frame_size:
            return super().__next__()  # raises what h2 raises for it
        end = 9 + length
        if len(data) < end:
            raise StopIteration
        frame = cls.__new__(cls)
        frame.stream_id = stream_id
        frame_flags = Flags.__new__(Flags)
        frame_flags._valid_flags = names
        set_flags = frame_flags._flags = set()
        if flags & _END_STREAM:
            set_flags.add("END_STREAM")
        if kind:
            set_flags.add("END_HEADERS")
            frame.depends_on = 0
            frame.stream_weight = 0
            frame.exclusive = False
        frame.flags = frame_flags
        frame.pad_length = 0
        frame.body_len = length
        frame.data = bytes(data[9:end])
        del data[:end]
        return frame

    def _window_update(self, data: bytearray, high: int, low: int, stream_id: int) -> Any:
        if high or low != 4:
            return super().__next__()  # hyperframe refuses any other length
        if len(data) < 13:
            raise StopIteration
        increment = _INCREMENT.unpack_from(data, 9)[0]
        if not 1 <= increment <= _MAX_INCREMENT:
            return super().__next__()  # raises what h2 raises for it
        frame = WindowUpdateFrame.__new__(WindowUpdateFrame)
        frame.stream_id = stream_id & 0x7FFFFFFF
        frame_flags = Flags.__new__(Flags)
        frame_flags._valid_flags = _WINDOW_NAMES
        frame_flags._flags = set()
        frame.flags = frame_flags
        frame.body_len = 4
        frame.window_increment = increment
        del data[:13]
        return frame
