"""Kept streams in Redis, shared by every llmbrick instance pointed at the same database.

``RedisStore.from_url("redis://host:6379/0")`` is a ``StreamStore`` for
``FlowRuntime(store=...)``; ``llmbrick serve --store redis://...`` builds one.
"""

from __future__ import annotations

try:
    import orjson  # noqa: F401
    import redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"llmbrick_redis needs the 'redis' extra ({exc.name} is missing): "
        "pip install '.[redis]' from a checkout of llmbrick, "
        "or pip install 'llmbrick[redis] @ <wheel or git URL>'"
    ) from exc

from .store import RedisStore

__all__ = ["RedisStore"]
