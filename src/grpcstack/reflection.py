"""Server reflection (v1 and v1alpha) over every served service, health and reflection included.

betterproto2 keeps its descriptors in a private pool and grpclib's own services live in protobuf's
default pool. Rather than mutating the process-wide default pool, the files behind the served
services (with their dependencies) are copied into one pool owned by the reflection service.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from grpclib.reflection._deprecated import ServerReflection as ServerReflectionV1Alpha
from grpclib.reflection.service import ServerReflection

REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


def service_names(service: Any) -> list[str]:
    """Fully qualified service names of a grpclib servable ("/pkg.Svc/Method" keys)."""
    names: list[str] = []
    for path in service.__mapping__():
        name = path.split("/")[1]
        if name and name not in names:
            names.append(name)
    return names


def find_service_descriptor(service: Any, name: str) -> ServiceDescriptor | None:
    """The descriptor of ``name``, looked up in the pool its messages come from."""
    for handler in service.__mapping__().values():
        if handler is None:
            continue
        descriptor = getattr(handler.request_type, "DESCRIPTOR", None)
        if descriptor is None:
            continue
        try:
            return descriptor.file.pool.FindServiceByName(name)  # type: ignore[no-any-return]
        except KeyError:
            continue
    return None


def _add_file(pool: descriptor_pool.DescriptorPool, file: FileDescriptor, seen: set[str]) -> None:
    if file.name in seen:
        return
    seen.add(file.name)
    for dep in file.dependencies:
        _add_file(pool, dep, seen)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)


def build_pool(services: Iterable[Any]) -> tuple[descriptor_pool.DescriptorPool, list[str]]:
    """A pool holding every service's file and dependencies, and the reflectable names."""
    pool = descriptor_pool.DescriptorPool()
    seen: set[str] = set()
    names: list[str] = []
    for service in services:
        for name in service_names(service):
            descriptor = find_service_descriptor(service, name)
            if descriptor is None:
                continue
            _add_file(pool, descriptor.file, seen)
            names.append(name)
    return pool, names


def reflection_services(services: Iterable[Any]) -> list[Any]:
    """The v1 and v1alpha reflection servicers describing ``services`` and themselves."""
    services = list(services)
    probe = [ServerReflection(_service_names=[]), ServerReflectionV1Alpha(_service_names=[])]
    pool, names = build_pool([*services, *probe])
    return [
        ServerReflection(_service_names=names, _pool=pool),
        ServerReflectionV1Alpha(_service_names=names, _pool=pool),
    ]
