"""proto3 JSON on the HTTP listener, checked against protobuf's own ``json_format`` on the same
messages: every field shape of coverage.proto (int64 as strings, enums by name, bytes as base64,
maps, oneofs, optional presence, Timestamp/Duration/wrappers) through a served mirror method,
plus @cached responses served as JSON from the stored wire bytes, and the direct printer of
handlers' own messages against that general path."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from conftest import channel, running, settings
from google.protobuf import json_format
from grpclib.const import Cardinality, Handler
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from test_codec import CLASSES, upb_class, upb_messages

from gen.coverage.v1 import Everything
from gen.echo.v1 import EchoRequest, EchoResponse, EchoServiceBase, EchoServiceStub
from grpcstack import AsyncBaseServer
from grpcstack.cache import cached
from grpcstack.codec import plan
from grpcstack.web.jsonmap import JsonMapper
from grpcstack.web.jsonprint import printer_for

MIRROR = "/coverage.v1.Mirror/Reflect"
JSON = {"content-type": "application/json"}


class Mirror:
    """A grpclib servable answering every Everything with itself (no generated base needed)."""

    def __init__(self) -> None:
        self.seen: list[Everything] = []

    async def reflect(self, stream: Any) -> None:
        message = await stream.recv_message()
        self.seen.append(message)
        await stream.send_message(message)

    def __mapping__(self) -> dict[str, Handler]:
        return {MIRROR: Handler(self.reflect, Cardinality.UNARY_UNARY, Everything, Everything)}


class MirrorServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        self.mirror = Mirror()
        return [self.mirror]


def examples(n: int) -> list[Any]:
    """``n`` random upb Everything messages (deterministic: derandomized)."""
    return examples_of(Everything, n)


def examples_of(cls: type, n: int) -> list[Any]:
    """``n`` random upb messages of ``cls``'s type (deterministic: derandomized)."""
    out: list[Any] = []

    @hsettings(
        max_examples=n, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(upb_messages(cls))
    def collect(message: Any) -> None:
        out.append(message)

    collect()
    return out


async def test_json_matches_json_format_for_every_field_shape() -> None:
    cls = upb_class(Everything)
    messages = examples(60)
    assert len(messages) >= 30
    async with (
        running(MirrorServer(settings(GRPC_HTTP_PORT=0))) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c,
    ):
        for upb in messages:
            text = json_format.MessageToJson(upb)
            r = await c.post(MIRROR, content=text, headers=JSON)
            try:
                json_format.Parse(text, cls())
            except json_format.ParseError as exc:
                # protobuf cannot read back its own JSON here (float32 subnormals): neither
                # can the server, and it says so the same way
                assert (r.status_code, r.json()["code"]) == (400, "invalid_argument")
                assert str(exc)[:40] in r.json()["message"]
                continue
            assert r.status_code == 200, r.text
            # the server's JSON is protobuf's JSON of the same message
            assert r.json() == json.loads(json_format.MessageToJson(upb))
            # and the handler saw exactly the message the JSON described
            # (by the stack's codec: betterproto2's bytes() mis-writes negative Durations)
            seen = server.mirror.seen[-1]
            assert cls.FromString(plan.encoder(Everything)(seen)) == upb


async def test_json_details() -> None:
    async with (
        running(MirrorServer(settings(GRPC_HTTP_PORT=0))) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c,
    ):
        body = {
            "scalars": {"f_int64": "-9007199254740993", "fUint64": 18446744073709551615},
            "colors": {"a": "COLOR_GREEN", "b": 1},
            "created": "2024-02-29T12:00:00.250Z",
            "elapsed": "1.5s",
            "wrappedInt": 0,
            "maybeText": "",
            "choiceNumber": "7",
            "blobs": ["AP8="],
            "notAField": {"ignored": True},  # unknown fields (and enum names) are ignored,
            "packedEnum": ["COLOR_RED", "COLOR_PURPLE"],  # as connect-go and protojson do
        }
        r = await c.post(MIRROR, json=body)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "scalars": {"fInt64": "-9007199254740993", "fUint64": "18446744073709551615"},
            "colors": {"a": "COLOR_GREEN", "b": "COLOR_RED"},
            "created": "2024-02-29T12:00:00.250Z",
            "elapsed": "1.500s",
            "wrappedInt": 0,
            "maybeText": "",
            "choiceNumber": "7",
            "blobs": ["AP8="],
            "packedEnum": ["COLOR_RED"],
        }
        seen = server.mirror.seen[-1]
        assert seen.scalars.f_int64 == -9007199254740993
        # bad values name their field; nothing internal leaks
        for bad, field in [
            ({"scalars": {"fInt32": "x"}}, "fInt32"),
            ({"scalars": {"fBool": "yes"}}, "fBool"),
            ({"created": "yesterday"}, "created"),
            ({"blobs": [5]}, "blobs"),
        ]:
            r = await c.post(MIRROR, json=bad)
            assert r.status_code == 400, bad
            error = r.json()
            assert error["code"] == "invalid_argument"
            assert field in error["message"], (bad, error)


class CachedEcho(EchoServiceBase):
    def __init__(self) -> None:
        self.loads = 0

    @cached(ttl=60)
    async def echo(self, message: EchoRequest) -> EchoResponse:
        self.loads += 1
        return EchoResponse(message=message.message.upper(), payload_size=self.loads)


class CachedServer(AsyncBaseServer):
    def services(self) -> list[Any]:
        self.svc = CachedEcho()
        return [self.svc]


@pytest.mark.parametrize("first", ["grpc", "json"])
async def test_cached_responses_are_shared_across_protocols(first: str) -> None:
    async with (
        running(CachedServer(settings(GRPC_HTTP_PORT=0))) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c,
        channel(server) as ch,
    ):
        path = "/echo.v1.EchoService/Echo"
        if first == "grpc":
            reply = await EchoServiceStub(ch).echo(EchoRequest(message="k"))
            assert reply == EchoResponse(message="K", payload_size=1)
        for _ in range(2):  # the stored wire bytes, rendered as JSON
            r = await c.post(path, json={"message": "k"})
            assert r.json() == {"message": "K", "payloadSize": 1}
            r = await c.post(
                path,
                content=bytes(EchoRequest(message="k")),
                headers={"content-type": "application/proto"},
            )
            assert EchoResponse.parse(r.content) == EchoResponse(message="K", payload_size=1)
        assert (await EchoServiceStub(ch).echo(EchoRequest(message="k"))).payload_size == 1
        assert server.svc.loads == 1
        hits = sum(
            sample.value
            for family in server.metrics_registry.collect()
            if family.name == "grpcstack_cache_lookups"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("result") == "hit"
        )
        assert hits == (5 if first == "grpc" else 4)


async def test_negative_durations_round_trip_as_json_format_prints_them() -> None:
    """Negative Durations with a fraction (reported: -1.5s came back as a sign-mismatched
    Duration the JSON printer refused): JSON in, the handler's timedelta, JSON out, each
    compared with protobuf's own reading and printing of the same text."""
    cls = upb_class(Everything)
    texts = ["-1.5s", "-0.000001s", "-1.000001s", "-86399.999999s", "-315576000000s", "2.25s"]
    async with (
        running(MirrorServer(settings(GRPC_HTTP_PORT=0))) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as c,
    ):
        for text in texts:
            expected = json_format.Parse(json.dumps({"elapsed": text}), cls())
            r = await c.post(MIRROR, json={"elapsed": text})
            assert r.status_code == 200, (text, r.text)
            assert r.json() == json_format.MessageToDict(expected), text
            assert server.mirror.seen[-1].elapsed == expected.elapsed.ToTimedelta(), text


def test_compiled_printer_matches_json_format() -> None:
    """The listener's printer against json_format directly, on many more messages than go over
    HTTP above, plus the float and enum edge cases the random strategy leaves out."""
    from grpcstack.web.jsonmap import _Printer

    cls = upb_class(Everything)
    printer = _Printer()
    special = cls()
    special.scalars.f_float = float("nan")
    special.scalars.f_double = float("-inf")
    special.scalars.f_enum = 99  # unknown value of an open enum: printed as the number
    special.packed_float.extend([-0.0, 0.0, -0.0, float("inf"), 0.1, 3.4e38, 1e-45])
    special.packed_double.extend([-0.0, 0.0, 1e308, 5e-324])
    special.colors["k"] = 7
    special.blob_by_id[2**64 - 1] = b"\x00"
    special.inner_by_id[-5].name = "neg"
    for message in [*examples(150), special, cls()]:
        assert printer.message(message) == json_format.MessageToDict(message)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_direct_printer_matches_the_wire_path(cls: type) -> None:
    """A handler's betterproto2 message printed straight to JSON (jsonprint) gives what the
    general path gives: the stack's codec, then protobuf's json_format on the wire bytes."""
    printer = printer_for(cls)
    assert printer is not None
    upb_cls = upb_class(cls)
    mapper = JsonMapper()
    for upb in examples_of(cls, 120):
        message = plan.decoder(cls)(upb.SerializeToString())
        wire = plan.encoder(cls)(message)
        expected = json_format.MessageToDict(upb_cls.FromString(wire))
        assert json.loads(printer(message)) == expected
        assert json.loads(printer(message)) == json.loads(mapper.wire_to_json(wire, cls))


def test_direct_printer_edge_cases() -> None:
    from gen.coverage.v1 import Color, Inner, Scalars

    special = Everything(
        scalars=Scalars(
            f_float=float("nan"),
            f_double=float("-inf"),
            f_enum=99,  # unknown value of an open enum: printed as the number
            f_string='quote " backslash \\ newline \n ünïcödé \u2028',
            f_bytes=b"\x00\xff",
            f_int64=-(2**63),
            f_uint64=2**64 - 1,
        ),
        packed_float=[-0.0, 0.0, float("inf"), 0.1, 3.4e38, 1e-45, 16777217.0],
        packed_double=[-0.0, 0.0, 1e308, 5e-324, 0.1],
        colors={"k": 7, "é": Color.GREEN, "z": Color.NEGATIVE},  # type: ignore[dict-item]
        blob_by_id={2**64 - 1: b"\x00"},
        inner_by_id={-5: Inner(name="neg"), 0: Inner()},
        maybe_int=0,  # optional: set to the default is still written
        maybe_text="",
        choice_number=0,  # a oneof member set to its default too
        inner=Inner(),  # a set, empty message: {}
    )
    for message in (special, Everything(), Everything(scalars=Scalars(f_double=-0.0))):
        wire = plan.encoder(Everything)(message)
        expected = json_format.MessageToDict(upb_class(Everything).FromString(wire))
        assert json.loads(printer_for(Everything)(message)) == expected  # type: ignore[misc]


def test_direct_printer_leaves_unsupported_classes_to_the_wire_path() -> None:
    from gen.coverage.v1 import Unplanned

    assert printer_for(Unplanned) is None  # repeated Timestamp, map of Int32Value
    assert JsonMapper().direct_json(Unplanned()) is None


async def test_send_limit_applies_to_the_json_body() -> None:
    """GRPC_MAX_SEND_MESSAGE_LENGTH over HTTP/JSON measures the JSON text as sent (the direct
    printer's and the wire path's alike): 1000 strings "\\x01" are 3 KB of protobuf but 9 KB of
    JSON ("\\u0001" each)."""
    strings = ["\x01"] * 1000
    async with (
        running(MirrorServer(settings(GRPC_HTTP_PORT=0, GRPC_MAX_SEND_MESSAGE_LENGTH=5000))) as srv,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}", timeout=30) as c,
    ):
        assert len(plan.encoder(Everything)(Everything(strings=strings))) < 5000
        r = await c.post(MIRROR, json={"strings": strings})
        assert (r.status_code, r.json()["code"]) == (429, "resource_exhausted")
        assert "Sent message larger than max (9013 vs. 5000)" in r.json()["message"]
        r = await c.post(MIRROR, json={"strings": strings[:500]})
        assert r.status_code == 200
