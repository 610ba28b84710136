"""The thin layer over the Kubernetes client: the only module that talks to the API server and reads
its error codes.

Objects are plain dicts both ways (lightkube *generic* resources: the builders' dicts are applied as
they are and responses go straight into the cache). Every failure becomes an :class:`ApiFailure` with
a kind the rest of the operator can act on (retry with backoff, report in the status, ignore), so no
other module inspects HTTP status codes. Every successful round trip is reported to ``on_contact``:
the liveness endpoint uses it to tell whether the operator can still reach the API server.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.core import resource as res
from lightkube.generic_resource import GenericNamespacedResource, GenericNamespacedStatus, create_api_info
from lightkube.types import OnErrorAction, OnErrorResult, PatchType

from aperag_operator.builders.common import FIELD_MANAGER, Obj
from aperag_operator.cache import ALL, resource_version
from aperag_operator.kinds import Kind, kind_of

log = logging.getLogger("aperag_operator")


class Failure(Enum):
    NOT_FOUND = "NotFound"
    CONFLICT = "Conflict"
    INVALID = "Invalid"
    FORBIDDEN = "Forbidden"
    UNAUTHORIZED = "Unauthorized"
    GONE = "Gone"  # a watch's resourceVersion is too old: re-list
    THROTTLED = "TooManyRequests"
    SERVER_ERROR = "ServerError"
    UNAVAILABLE = "Unavailable"  # no answer at all (connection refused, timeout)
    OTHER = "Other"


_BY_CODE = {
    404: Failure.NOT_FOUND,
    409: Failure.CONFLICT,
    422: Failure.INVALID,
    400: Failure.INVALID,
    403: Failure.FORBIDDEN,
    401: Failure.UNAUTHORIZED,
    410: Failure.GONE,
    429: Failure.THROTTLED,
}


@dataclass
class ApiFailure(Exception):
    """A request the API server refused or never answered."""

    kind: Failure
    code: int
    message: str
    #: (field path, message) pairs from the Status details, e.g. ("spec.ports[1].name", "Duplicate value").
    causes: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        """Worth retrying unchanged after a backoff: the server or the network failed, not the request."""
        return self.kind in (Failure.SERVER_ERROR, Failure.UNAVAILABLE, Failure.THROTTLED, Failure.CONFLICT)


def _failure(err: Exception) -> ApiFailure:
    if isinstance(err, ApiError):
        status = err.status
        code = int(status.code or 0)
        kind = _BY_CODE.get(code, Failure.SERVER_ERROR if code >= 500 else Failure.OTHER)
        causes: tuple[tuple[str, str], ...] = ()
        details = status.details
        if details is not None and details.causes:
            causes = tuple((c.field or "", c.message or "") for c in details.causes)
        return ApiFailure(kind, code, str(status.message or status.reason or err), causes)
    if isinstance(err, httpx.HTTPStatusError):  # an answer without a Status body ("404 page not found")
        code = err.response.status_code
        kind = _BY_CODE.get(code, Failure.SERVER_ERROR if code >= 500 else Failure.OTHER)
        return ApiFailure(kind, code, f"{code} {err.response.reason_phrase} for {err.request.url.path}")
    return ApiFailure(Failure.UNAVAILABLE, 0, f"{type(err).__name__}: {err}")


# --- lightkube resource classes ----------------------------------------------------------------------

_CLASSES: dict[str, type[GenericNamespacedResource]] = {}


def resource_class(kind: Kind) -> type[GenericNamespacedResource]:
    """A namespaced generic resource class for a kind (kept out of lightkube's global registry)."""
    cls = _CLASSES.get(kind.type_path)
    if cls is not None:
        return cls
    info = create_api_info(kind.group, kind.version, kind.kind, kind.plural)

    class Status(GenericNamespacedStatus):
        _api_info = res.ApiInfo(
            resource=info.resource, parent=info.resource, plural=info.plural, verbs=["get", "patch"], action="status"
        )

    class Resource(GenericNamespacedResource):
        _api_info = info

    Resource.Status = Status
    Resource.__name__ = Resource.__qualname__ = kind.kind
    _CLASSES[kind.type_path] = Resource
    return Resource


def to_dict(obj: Any) -> Obj:
    if isinstance(obj, dict):
        return obj
    result: Obj = obj.to_dict()
    return result


def _raise_on_error(_err: Exception, _count: int) -> OnErrorResult:
    return OnErrorResult(OnErrorAction.RAISE)


class KubeApi:
    def __init__(self, client: AsyncClient, *, on_contact: Callable[[], None] | None = None) -> None:
        self.client = client
        self._on_contact = on_contact or (lambda: None)

    def _contact(self) -> None:
        self._on_contact()

    async def list(self, kind: Kind, namespace: str) -> tuple[list[Obj], int]:
        """Every object of ``kind`` in ``namespace`` (or ALL), and the list's resourceVersion."""
        cls = resource_class(kind)
        try:
            listing = self.client.list(cls, namespace=namespace, labels=_selector(kind.selector), chunk_size=500)
            items = [to_dict(obj) async for obj in listing]
            try:
                list_rv = int(listing.resourceVersion)
            except Exception:  # an empty list in some versions carries no iteration: take the newest item
                list_rv = max((resource_version(o) for o in items), default=0)
        except (ApiError, httpx.HTTPError) as err:
            raise _failure(err) from err
        self._contact()
        for obj in items:  # generic lists leave the type out of the items
            obj.setdefault("apiVersion", kind.api_version)
            obj.setdefault("kind", kind.kind)
        return items, list_rv

    async def probe(self, kind: Kind, namespace: str) -> None:
        """One small read (a list of at most one object): proves the API server answers and the
        credentials still work, without a write."""
        try:
            async for _obj in self.client.list(resource_class(kind), namespace=namespace, chunk_size=1):
                break
        except (ApiError, httpx.HTTPError) as err:
            raise _failure(err) from err
        self._contact()

    async def watch(
        self, kind: Kind, namespace: str, since: int, *, server_timeout: int
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Events after resourceVersion ``since`` until the stream fails (raises ApiFailure; GONE when
        ``since`` is too old). The server closes each request after ``server_timeout`` seconds and the
        stream resumes from the last event seen."""
        cls = resource_class(kind)
        stream = self.client.watch(
            cls,
            namespace=namespace,
            labels=_selector(kind.selector),
            resource_version=str(since),
            server_timeout=server_timeout,
            on_error=_raise_on_error,
        )
        try:
            async for event_type, obj in stream:
                self._contact()
                body = to_dict(obj)
                body.setdefault("apiVersion", kind.api_version)
                body.setdefault("kind", kind.kind)
                yield event_type, body
        except (ApiError, httpx.HTTPError) as err:
            raise _failure(err) from err

    async def apply(self, obj: Obj, *, field_manager: str = FIELD_MANAGER, force: bool = True) -> Obj:
        """Server-side apply under the operator's field manager, taking over conflicting fields (another
        manager, without ``force``, gets a CONFLICT failure where another manager holds a field)."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        try:
            result = await self.client.patch(
                resource_class(kind),
                meta["name"],
                copy.deepcopy(obj),
                namespace=meta["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=field_manager,
                force=force,
            )
        except (ApiError, httpx.HTTPError) as err:
            raise _failure(err) from err
        self._contact()
        return to_dict(result)

    async def apply_status(self, obj: Obj) -> Obj | None:
        """Server-side apply of ``obj['status']`` on the status subresource; None when the object is gone."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        try:
            result = await self.client.patch(
                resource_class(kind).Status,
                meta["name"],
                obj,
                namespace=meta["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        except (ApiError, httpx.HTTPError) as err:
            failure = _failure(err)
            if failure.kind is Failure.NOT_FOUND:
                return None
            raise failure from err
        self._contact()
        return to_dict(result)

    async def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Obj) -> Obj:
        """A JSON merge patch (lists in it replace the object's lists wholesale)."""
        try:
            result = await self.client.patch(
                resource_class(kind),
                name,
                patch,
                namespace=namespace,
                patch_type=PatchType.MERGE,
                field_manager=FIELD_MANAGER,
            )
        except (ApiError, httpx.HTTPError) as err:
            raise _failure(err) from err
        self._contact()
        return to_dict(result)

    async def delete(self, kind: Kind, namespace: str, name: str) -> None:
        """Deletes an object (its dependents in the background); an object already gone is fine."""
        from lightkube.types import CascadeType

        try:
            await self.client.delete(resource_class(kind), name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        except (ApiError, httpx.HTTPError) as err:
            failure = _failure(err)
            if failure.kind is Failure.NOT_FOUND:
                return
            raise failure from err
        self._contact()

    async def create(self, obj: Obj) -> Obj:
        kind = kind_of(obj)
        try:
            result = await self.client.create(resource_class(kind).from_dict(obj))
        except (ApiError, httpx.HTTPError) as err:
            raise _failure(err) from err
        self._contact()
        return to_dict(result)

    async def close(self) -> None:
        await self.client.close()


def _selector(selector: str) -> dict[str, Any] | None:
    """``a=b,c=d`` as lightkube's label dict."""
    if not selector:
        return None
    return dict(part.split("=", 1) for part in selector.split(","))


__all__ = ["ALL", "ApiFailure", "Failure", "KubeApi", "resource_class", "to_dict"]
