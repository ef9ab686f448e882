"""The server's HPACK decoder remembers repeated header blocks: it must decode exactly as hpack's
own decoder does, block after block, while the dynamic table fills, evicts and resizes."""

from __future__ import annotations

import random

from hpack import Decoder, Encoder
from hpack.struct import NeverIndexedHeaderTuple

from grpcstack._compat import CappedDecoder


def _lists(rng: random.Random) -> list[list[tuple[bytes, bytes]]]:
    base = [(b":method", b"POST"), (b":path", b"/echo.v1.EchoService/Echo"), (b"te", b"trailers")]
    out = []
    for _ in range(600):
        headers = list(base)
        kind = rng.random()
        if kind < 0.5:
            headers.append((b"user-id", b"bench"))  # repeats: indexed after the first time
        elif kind < 0.8:
            headers.append((b"x-n", str(rng.randrange(40)).encode()))  # inserts, evicts
        else:
            headers.append((b"x-big", b"v" * rng.randrange(10, 300)))
        out.append(headers)
    return out


def test_decodes_as_hpack_does_through_inserts_evictions_and_resizes() -> None:
    rng = random.Random(17)
    encoder = Encoder()
    reference = Decoder()
    cached = CappedDecoder(64 * 1024)
    hits = 0
    for i, headers in enumerate(_lists(rng)):
        if i % 97 == 0:  # a table size change, signalled in the next block
            size = rng.choice([256, 1024, 4096])
            encoder.header_table_size = size
            reference.max_allowed_table_size = cached.max_allowed_table_size = 4096
        sensitive = i % 13 == 0
        block = encoder.encode(
            [NeverIndexedHeaderTuple(*h) if sensitive else h for h in headers], huffman=i % 2 == 0
        )
        kept = (block, True) in cached._blocks
        got = cached.decode(block, raw=True)
        want = reference.decode(block, raw=True)
        assert got == want, i
        assert [type(h) for h in got] == [type(h) for h in want]
        assert list(cached.header_table.dynamic_entries) == list(
            reference.header_table.dynamic_entries
        )
        hits += kept
    assert hits > 50  # the cache was actually used


def test_never_indexed_blocks_are_not_kept() -> None:
    encoder = Encoder()
    decoder = CappedDecoder(64 * 1024)
    block = encoder.encode([NeverIndexedHeaderTuple(b"authorization", b"Bearer secret")])
    for _ in range(2):
        assert decoder.decode(block, raw=True) == [(b"authorization", b"Bearer secret")]
    assert not decoder._blocks


def test_a_kept_block_is_forgotten_when_the_table_changes() -> None:
    encoder = Encoder()
    decoder = CappedDecoder(64 * 1024)
    decoder.decode(encoder.encode([(b"a", b"1")]), raw=True)  # inserted
    indexed = encoder.encode([(b"a", b"1")])  # now one byte: dynamic index 62
    assert decoder.decode(indexed, raw=True) == [(b"a", b"1")]
    assert decoder._blocks
    decoder.decode(encoder.encode([(b"b", b"2")]), raw=True)  # inserted: index 62 is now b
    assert decoder.decode(indexed, raw=True) == [(b"b", b"2")]


def test_encoder_writes_what_hpack_writes_through_inserts_evictions_and_resizes() -> None:
    """StackEncoder reuses a field's encoding while the table stands still: byte for byte what
    hpack's encoder writes (x-correlation-id aside: a never-indexed literal by design)."""
    from grpcstack._compat import StackEncoder

    rng = random.Random(18)
    ours, theirs = StackEncoder(), Encoder()
    decoder = Decoder()
    kept = blocks_kept = 0
    for i, headers in enumerate(_lists(rng)):
        if i % 97 == 0:
            ours.header_table_size = theirs.header_table_size = rng.choice([256, 1024, 4096])
        response = [(b":status", b"200"), (b"content-type", b"application/grpc"), *headers[3:]]
        if i % 13 == 0:
            response.append(NeverIndexedHeaderTuple(b"authorization", b"secret"))
        huffman = i % 5 != 0
        kept += sum((n, v, huffman) in ours._fields for n, v in response[:2])
        block = ours.encode(response, huffman=huffman)
        assert block == theirs.encode(response, huffman=huffman), i
        assert decoder.decode(block, raw=True) == response
        # the same list again, as ServerH2Connection passes it (a tuple: whole blocks kept)
        for _ in range(2):
            block = ours.encode(tuple(response), huffman=huffman)
            assert block == theirs.encode(response, huffman=huffman), i
            assert decoder.decode(block, raw=True) == response
        blocks_kept += bool(ours._blocks)
    assert kept > 300  # the cache was actually used
    assert blocks_kept > 300


def test_unique_values_are_the_literal_hpack_writes() -> None:
    """The correlation id's never-indexed literal, written directly: hpack's bytes at every
    length around the 7-bit prefix's end, and decoded back as never-indexed."""
    from hpack.hpack import INDEX_NEVER

    from grpcstack._compat import StackEncoder

    encoder = StackEncoder()
    for size in (0, 1, 32, 126, 127, 128, 300):
        value = bytes(65 + i % 26 for i in range(size))
        for name in (b"x-correlation-id", b"n" * 126, b"n" * 127):
            ours = encoder._unique_literal(name, value)
            assert ours == encoder._encode_literal(name, value, INDEX_NEVER, False)
        block = encoder.encode([(b":status", b"200"), (b"x-correlation-id", value)])
        (_, (name, got)) = Decoder().decode(block, raw=True)
        assert (name, got) == (b"x-correlation-id", value)
        assert isinstance(Decoder().decode(block, raw=True)[1], NeverIndexedHeaderTuple)
