"""Mistakes in a server's definition, reported in one line at start instead of a deep traceback.

The usual ones: ``services()`` not implemented, returning the service class instead of an
instance (grpclib then fails with "__mapping__() missing 1 required positional argument"),
returning one instance instead of a list, or something that is not a gRPC service at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ServerDefinitionError(TypeError):
    """The server class is defined wrongly; the message names the mistake and the fix."""


def _is_service(obj: object) -> bool:
    return callable(getattr(obj, "__mapping__", None))


def check_services(owner: str, result: object) -> list[Any]:
    """The list ``owner.services()`` returned, or ServerDefinitionError naming the mistake."""
    where = f"{owner}.services()"
    if isinstance(result, type):
        name = result.__name__
        raise ServerDefinitionError(
            f"{where} returned the class {name}, not a list of instances: return [{name}(...)]"
        )
    if _is_service(result):
        name = type(result).__name__
        raise ServerDefinitionError(
            f"{where} returned a single {name}, not a list: return [{name}(...)]"
        )
    if (
        result is None
        or isinstance(result, str | bytes | Mapping)
        or not isinstance(result, Iterable)
    ):
        raise ServerDefinitionError(
            f"{where} must return a list of service instances, got {type(result).__name__}"
        )
    services = list(result)
    if not services:
        raise ServerDefinitionError(f"{where} returned no services")
    for item in services:
        if isinstance(item, type):
            name = item.__name__
            raise ServerDefinitionError(
                f"{where} returned the class {name}, not an instance: put {name}(...) in the list"
            )
        if not _is_service(item):
            raise ServerDefinitionError(
                f"{where} returned a {type(item).__name__}, which is not a gRPC service "
                "(an instance of a generated *Base class, or anything with __mapping__())"
            )
    return services


class ServicesNotImplemented(ServerDefinitionError, NotImplementedError):
    """services() was not implemented (still a NotImplementedError, as before)."""


def not_implemented(owner: str) -> ServerDefinitionError:
    return ServicesNotImplemented(
        f"{owner} must implement services(): return a list of service instances, "
        "e.g. [ShopService()]"
    )
