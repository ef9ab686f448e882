"""The hpack internals the client hooks (src/grpcstack/_compat.py, client side) are still where
it expects them: fails loudly on an upgrade that moves one."""

from __future__ import annotations

from hpack import Encoder

from grpcstack._compat import CachedHeaderDecoder, ClientHeaderEncoder


def test_hpack_encoder_internals() -> None:
    encoder = ClientHeaderEncoder()
    assert encoder.header_table._current_size == 0
    assert len(encoder.header_table.dynamic_entries) == 0
    prefix = [(b":method", b"POST"), (b":path", b"/a.B/C")]
    first = encoder.encode([*prefix, (b"grpc-timeout", b"1S")])
    encoder.prefix_len = 2
    cached = encoder.encode([*prefix, (b"grpc-timeout", b"2S")])
    encoder.prefix_len = 2
    again = encoder.encode([*prefix, (b"grpc-timeout", b"2S")])
    assert cached == again and first != cached


def test_cached_decoder_follows_the_dynamic_table() -> None:
    """A block that indexes new entries is decoded again each time; once the server's encoder
    refers to the table only, the same bytes come from the cache, with the same headers."""
    server = Encoder()
    decoder = CachedHeaderDecoder()
    headers = [(":status", "200"), ("content-type", "application/grpc"), ("x-a", "1")]
    block = server.encode(headers)
    assert decoder.decode(block) == headers
    indexed = server.encode(headers)  # now fully indexed: changes nothing in the table
    assert indexed != block
    assert decoder.decode(indexed) == headers
    assert decoder.decode(indexed) is decoder.decode(indexed)  # cached
    other = server.encode([(":status", "200"), ("x-b", "2")])  # adds x-b: a new table version
    assert decoder.decode(other) == [(":status", "200"), ("x-b", "2")]
    assert decoder.decode(server.encode(headers)) == headers
