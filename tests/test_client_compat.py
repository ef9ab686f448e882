"""The hpack internals the client hooks (src/grpcstack/_compat/hpack_tables.py, client side) are
still where it expects them: fails loudly on an upgrade that moves one."""

from __future__ import annotations

from hpack import Decoder, Encoder

from grpcstack._compat import CachedHeaderDecoder, ClientHeaderEncoder


def test_request_prefix_cache_keeps_the_peers_table_in_step() -> None:
    """Calls of two methods interleaved: the peer's decoder reads every request right (a block
    that added table entries is never replayed), and a method's block, once fully indexed, is
    reused as is."""
    encoder = ClientHeaderEncoder()
    assert encoder.header_table._current_size == 0
    peer = Decoder()
    common = ((b":method", b"POST"), (b":authority", b"h:1"), (b"user-agent", b"ua"))
    a = (*common[:1], (b":path", b"/a.A/X"), *common[1:])
    b = (*common[:1], (b":path", b"/b.B/Y"), *common[1:])
    blocks: dict[str, list[bytes]] = {"a": [], "b": []}
    for name, prefix in [("a", a), ("a", a), ("a", a), ("b", b), ("a", a), ("b", b), ("b", b)]:
        rest = [(b"grpc-timeout", b"1S")]
        block = encoder.encode_request(prefix, rest)
        blocks[name].append(block)
        assert peer.decode(block) == [(k.decode(), v.decode()) for k, v in (*prefix, *rest)]
    assert blocks["a"][1] == blocks["a"][2]  # indexed from the second call on
    assert blocks["a"][0] != blocks["a"][1]
    assert len(peer.header_table.dynamic_entries) == len(encoder.header_table.dynamic_entries)


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
