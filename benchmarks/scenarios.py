"""The scenarios of issue 7 and the counts this suite runs them with (full and ``--quick``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["SERVERS", "Scenario", "Server", "scenarios"]

_ALL = ("sse", "ws", "grpc")


@dataclass(frozen=True)
class Server:
    """One server the suite starts: ours or a baseline, for one transport."""

    name: str  # the kind passed to servers.py ("upstream" runs upstream_server.py)
    transport: str
    label: str
    ours: bool
    dialect: str = "llmbrick"  # the request shape it understands


SERVERS: tuple[Server, ...] = (
    Server("sse", "sse", "llmbrick SSE", ours=True),
    Server("bare-sse", "sse", "bare ASGI SSE", ours=False),
    Server("upstream", "sse", "upstream llmbrick 0.2.10 SSE", ours=False, dialect="upstream"),
    Server("ws", "ws", "llmbrick WebSocket", ours=True),
    Server("bare-ws", "ws", "bare websockets", ours=False),
    Server("grpc", "grpc", "llmbrick gRPC", ours=True),
    Server("bare-grpc", "grpc", "bare grpc.aio", ours=False),
)


@dataclass(frozen=True)
class Scenario:
    """One load shape. ``kind`` is ``fast``, ``idle`` or ``paced``."""

    name: str
    kind: str
    title: str
    streams: int
    events: int = 1  # per stream (fast); per background stream (paced)
    note: str = ""  # how the shape relates to the issue's, when it differs
    transports: tuple[str, ...] = _ALL
    skip: tuple[str, ...] = ()  # servers left out of this scenario
    interval: float = 0.05  # paced: seconds between events (20 events/s)
    new_streams: int = 0  # paced: streams opened while the others run
    new_events: int = 10  # paced: events of each new stream
    measure_s: float = 0.0  # paced: steady window for CPU/event
    storm_s: float = 0.0  # paced: window over which new streams are opened
    streams_per_channel: int = 0  # gRPC: 0 = every stream on one channel
    connect_limit: int = 0  # streams connecting at once (0 = all at once)
    settle_s: float = 1.0  # idle: pause before reading RSS
    running_s: float = 60.0  # paced: how long running streams would last (they are stopped)
    timeout: float = 120.0

    def to_json(self) -> dict[str, Any]:
        """The scenario as a JSON object (for the load client and the raw results)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scenario:
        """The inverse of :meth:`to_json`."""
        return cls(**{**data, "transports": tuple(data["transports"]), "skip": tuple(data["skip"])})

    @property
    def background_events(self) -> int:
        """Paced: events per running stream; they outlast the scenario and are stopped."""
        return round(self.running_s / self.interval)


_REDUCED = (
    "Reduced from the issue's {} events: the slower baselines (bare gRPC, WebSocket, "
    "upstream) stream 30-60k events/s here, and 3 reps of everything must fit in 15 minutes."
)
_PER_100 = "gRPC streams go over one channel (its own connection) per 100 streams."


def _full() -> list[Scenario]:
    return [
        Scenario("single", "fast", "1 stream x 100,000 events", 1, 100_000, timeout=180),
        Scenario("c200", "fast", "200 streams x 1,000 events", 200, 1_000, timeout=180),
        Scenario(
            "c1000",
            "fast",
            "1,000 streams x 500 events",
            1_000,
            500,
            note=_REDUCED.format("1,000 x 1,000"),
            timeout=180,
        ),
        Scenario(
            "c1000-conns",
            "fast",
            "1,000 streams x 100 events, one gRPC channel (connection) per stream",
            1_000,
            100,
            note="Not one of the issue's scenarios: it checks the issue's remark that a bare "
            "grpc.aio server fails most of 1,000 streams with a channel per stream.",
            transports=("grpc",),
            streams_per_channel=1,
            timeout=180,
        ),
        Scenario(
            "idle1000",
            "idle",
            "1,000 idle streams",
            1_000,
            note=_PER_100,
            streams_per_channel=100,
            connect_limit=250,
        ),
        Scenario(
            "idle5000",
            "idle",
            "5,000 idle streams",
            5_000,
            note=_PER_100,
            streams_per_channel=100,
            connect_limit=250,
        ),
        Scenario(
            "idle10000",
            "idle",
            "10,000 idle SSE streams",
            10_000,
            note="Upstream is left out here to save time; idle1000 and idle5000 compare with it.",
            transports=("sse",),
            skip=("upstream",),
            connect_limit=250,
        ),
        Scenario(
            "paced",
            "paced",
            "1,000 streams at 20 events/s, then 200 new streams over 2 s",
            1_000,
            new_streams=200,
            measure_s=2.0,
            storm_s=2.0,
            timeout=60,
            note="Each new stream opens its own connection on SSE and WebSocket; " + _PER_100,
            streams_per_channel=100,
        ),
    ]


_QUICK: dict[str, dict[str, Any]] = {
    "single": {"events": 10_000, "title": "1 stream x 10,000 events"},
    "c200": {"events": 100, "title": "200 streams x 100 events"},
    "c1000": {"events": 30, "title": "1,000 streams x 30 events"},
    "c1000-conns": {"events": 30, "title": "1,000 streams x 30 events, a channel each"},
    "idle1000": {"streams": 500, "title": "500 idle streams"},
    "idle5000": {"streams": 1_000, "title": "1,000 idle streams"},
    "idle10000": {"streams": 2_000, "title": "2,000 idle SSE streams"},
    "paced": {
        "streams": 200,
        "new_streams": 40,
        "measure_s": 1.0,
        "storm_s": 1.0,
        "title": "200 streams at 20 events/s, then 40 new streams over 1 s",
    },
}


def scenarios(quick: bool = False) -> list[Scenario]:
    """Every scenario, with the full counts or the small ``--quick`` ones."""
    chosen = _full()
    if quick:
        chosen = [
            replace(
                s,
                settle_s=0.3,
                note="" if s.note.startswith("Reduced") or s.name == "idle10000" else s.note,
                **_QUICK[s.name],
            )
            for s in chosen
        ]
    return chosen
