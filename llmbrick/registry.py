"""``FlowRegistry``: names mapped to flows, each with its request model."""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from .bricks import Brick, Pipeline
from .errors import DuplicateFlow, FlowNotFound
from .events import Event
from .requests import ChatRequest
from .store import POLICIES

__all__ = ["FlowHandler", "FlowRegistry", "FlowSpec"]

FlowHandler = Callable[[Any], AsyncIterator[Event]]
F = TypeVar("F", bound=Callable[..., AsyncIterator[Any]])

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """A registered flow.

    Attributes:
        name: the name clients ask for.
        handler: called with the validated request; returns an async iterator of events.
        request_model: the pydantic model requests are validated against.
        description: one line for listings.
        timeout: seconds the whole stream may take, or ``None`` for the runtime's default.
        source: what was registered (a function, Pipeline or Brick), for lifecycle hooks.
        allow: principal ids and scopes that may run it (``None``: anyone the
            authenticator lets in).
        aliases: other names that reach it (an OpenAI client's ``model`` names, say).
        capabilities: what the flow can honour beyond text chat, as free-form
            names adapters check (e.g. ``"images"``, ``"logprobs"``).
        on_disconnect: what happens to the flow when its last client goes away
            while a store keeps streams: ``"cancel"``, ``"grace"`` (cancel after
            ``grace`` seconds without a client) or ``"continue"``; ``None``: the
            runtime's default.
        grace: seconds of the ``grace`` policy (``None``: the runtime's default).
        disconnect_choices: policies a client may ask for per request (the
            ``llmbrick-on-disconnect`` header or metadata); ``cancel`` always.
    """

    name: str
    handler: FlowHandler
    request_model: type[BaseModel]
    description: str
    timeout: float | None
    source: object
    allow: frozenset[str] | None = None
    aliases: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset()
    on_disconnect: str | None = None
    grace: float | None = None
    disconnect_choices: frozenset[str] = frozenset({"cancel"})

    def describe(self) -> dict[str, Any]:
        """Name, description and request JSON schema, as ``GET /flows`` shows them."""
        return {
            "name": self.name,
            "description": self.description,
            "requestSchema": self.request_model.model_json_schema(by_alias=True),
        }


def _is_flow_function(flow: object) -> bool:
    if inspect.isasyncgenfunction(flow):
        return True
    # An instance whose class defines an async-generator __call__ is a flow too.
    return not isinstance(flow, type) and inspect.isasyncgenfunction(
        inspect.getattr_static(type(flow), "__call__", None)
    )


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


class FlowRegistry:
    """Flows by name. Build one, register flows, and hand it to a ``FlowRuntime``.

    A flow is an async generator function taking the validated request and
    yielding event dicts, a :class:`Pipeline`, or a single :class:`Brick`.
    """

    def __init__(self) -> None:
        self._flows: dict[str, FlowSpec] = {}
        self._aliases: dict[str, str] = {}
        # The runtime servers share when handed this registry (see as_runtime).
        self._runtime: Any = None

    def __contains__(self, name: object) -> bool:
        return name in self._flows

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[FlowSpec]:
        return iter(list(self._flows.values()))

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._flows)

    def get(self, name: str) -> FlowSpec:
        """The flow called ``name`` (or having it as an alias).

        Raises:
            FlowNotFound: no such flow; the message lists the known names.
        """
        try:
            return self._flows[self._aliases.get(name, name)]
        except (KeyError, TypeError):
            # The name comes from a client: quote a bounded part of it, list a few flows.
            shown = str(name)[:64] + ("..." if len(str(name)) > 64 else "")
            names = list(self._flows)
            known = ", ".join(repr(n) for n in names[:10]) or "none"
            if len(names) > 10:
                known += f" and {len(names) - 10} more"
            raise FlowNotFound(
                f"no flow named {shown!r}; known flows: {known}", details={"flow": shown}
            ) from None

    def register(
        self,
        name: str,
        flow: object,
        *,
        request_model: type[BaseModel] | None = None,
        description: str | None = None,
        timeout: float | None = None,
        allow: Iterable[str] | None = None,
        aliases: Iterable[str] = (),
        capabilities: Iterable[str] = (),
        on_disconnect: str | None = None,
        grace: float | None = None,
        disconnect_choices: Iterable[str] = (),
    ) -> FlowSpec:
        """Register ``flow`` under ``name``.

        Args:
            name: what clients ask for.
            flow: an async generator function, a Pipeline or a Brick.
            request_model: the request's pydantic model (default: the pipeline's,
                or ``ChatRequest`` for a function).
            description: one line for listings (default: the docstring's first line).
            timeout: seconds a stream of this flow may run.
            allow: principal ids or scopes allowed to run it; others get
                ``PERMISSION_DENIED`` (with no authenticator, nobody may).
            aliases: more names for it (each unique among names and aliases).
            capabilities: what it honours beyond text chat (see :class:`FlowSpec`).
            on_disconnect, grace, disconnect_choices: the disconnect policy (see
                :class:`FlowSpec`); it matters when the runtime has a store.

        Raises:
            DuplicateFlow: ``name`` is taken.
            TypeError: ``flow`` is not a flow, or ``name`` is malformed.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise TypeError(f"flow name {name!r} must be 1-128 letters, digits, '_', '.' or '-'")
        if isinstance(aliases, str):
            raise TypeError("aliases= takes a list of names, not one string")
        aliases = tuple(aliases)
        names = (name, *aliases)
        for each in names:
            if not isinstance(each, str) or not _NAME.match(each):
                raise TypeError(
                    f"flow name {each!r} must be 1-128 letters, digits, '_', '.' or '-'"
                )
            if each in self._flows or each in self._aliases or names.count(each) > 1:
                raise DuplicateFlow(f"a flow named {each!r} is already registered")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        handler: FlowHandler
        if isinstance(flow, Brick):
            flow = Pipeline().add_brick(flow)
        if isinstance(flow, Pipeline):
            handler = flow
            model = request_model or flow.request_model
            text = description if description is not None else flow.description
        elif _is_flow_function(flow):
            handler = flow  # type: ignore[assignment]
            model = request_model or ChatRequest
            text = description if description is not None else _first_line(inspect.getdoc(flow))
        else:
            raise TypeError(
                f"flow {name!r} must be an async generator function ('async def' with "
                f"'yield'), a Pipeline or a Brick; got {flow!r}"
            )
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"request_model for {name!r} must be a pydantic model class")
        if on_disconnect is not None and on_disconnect not in POLICIES:
            raise ValueError(
                f"on_disconnect must be one of {', '.join(POLICIES)}; got {on_disconnect!r}"
            )
        if isinstance(disconnect_choices, str):
            raise TypeError("disconnect_choices= takes a list of policies, not one string")
        choices = frozenset({"cancel", *disconnect_choices})
        if on_disconnect is not None:
            choices |= {on_disconnect}
        if not choices <= set(POLICIES):
            raise ValueError(f"disconnect_choices must be among {', '.join(POLICIES)}")
        if grace is not None and not grace > 0:
            raise ValueError(f"grace must be positive, got {grace!r}")
        if isinstance(allow, str):
            raise TypeError("allow= takes a list of principal ids or scopes, not one string")
        allowed = frozenset(allow) if allow is not None else None
        spec = FlowSpec(
            name,
            handler,
            model,
            text,
            timeout,
            flow,
            allowed,
            aliases,
            frozenset(capabilities),
            on_disconnect,
            grace,
            choices,
        )
        self._flows[name] = spec
        for alias in spec.aliases:
            self._aliases[alias] = name
        return spec

    def flow(
        self,
        name: str | None = None,
        *,
        request_model: type[BaseModel] | None = None,
        description: str | None = None,
        timeout: float | None = None,
        allow: Iterable[str] | None = None,
        aliases: Iterable[str] = (),
        capabilities: Iterable[str] = (),
        on_disconnect: str | None = None,
        grace: float | None = None,
        disconnect_choices: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register`; the name defaults to the function's."""

        def decorate(fn: F) -> F:
            self.register(
                name or fn.__name__,
                fn,
                request_model=request_model,
                description=description,
                timeout=timeout,
                allow=allow,
                aliases=aliases,
                capabilities=capabilities,
                on_disconnect=on_disconnect,
                grace=grace,
                disconnect_choices=disconnect_choices,
            )
            return fn

        return decorate

    def describe(self) -> list[dict[str, Any]]:
        """Every flow's :meth:`FlowSpec.describe`."""
        return [spec.describe() for spec in self._flows.values()]
