"""Run as a subprocess: the official grpcio reflection client against a server.

grpcio-reflection and grpclib.reflection register the same protobuf symbols, so they cannot share
a process. Prints JSON: the services listed, each service's methods as described by reflection,
and the results of calling Health/Check and one more method built purely from reflected types.
"""

from __future__ import annotations

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(target: str, call_method: str, call_json: str) -> None:
    channel = grpc.insecure_channel(target)
    db = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(db)
    out: dict[str, object] = {"services": sorted(db.get_services()), "methods": {}}
    for name in out["services"]:  # type: ignore[attr-defined]
        service = pool.FindServiceByName(name)
        out["methods"][name] = {  # type: ignore[index]
            m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods
        }

    def call(full_method: str, body: str) -> dict[str, object]:
        service_name, method_name = full_method.strip("/").split("/")
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        rpc = channel.unary_unary(
            full_method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        response = rpc(json_format.Parse(body, request_cls()), timeout=10)
        return json_format.MessageToDict(response)

    out["health"] = call("/grpc.health.v1.Health/Check", "{}")
    out["call"] = call(call_method, call_json)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
