"""The scenarios of issue 7 and the counts this suite runs them with (full and ``--quick``).

Also the servers: ours, the baselines, the gateway of the abuse scenarios, and the
variants of ours that change one thing (a stream store, keys and metrics, the OpenAI
route), each compared with the server it varies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from benchmarks.common import API_KEY

__all__ = ["SERVERS", "VARIANTS", "Scenario", "Server", "scenarios"]

_ALL = ("sse", "ws", "grpc")


@dataclass(frozen=True)
class Server:
    """One server the suite starts: ours or a baseline, for one transport.

    ``command`` says how it starts: ``servers`` (``python -m benchmarks.servers NAME``),
    ``upstream`` (``upstream_server.py`` in upstream's virtualenv) or ``gateway``
    (``python -m llmbrick_gateway serve benchmarks.app:registry``, every transport in one
    process; ``transport`` is then the one the scenario's streams use). An ``explicit``
    server runs only in the scenarios that name it in ``Scenario.servers`` or
    ``Scenario.extra``.

    A variant of ours names its ``base`` (the server it changes one thing of, which its
    ratios and targets compare with); ``store`` says which stream store its runtime keeps
    (``redis``: run.py starts a redis-server for it) and ``api_key`` the bearer key the
    load client must send.
    """

    name: str
    transport: str
    label: str
    ours: bool
    dialect: str = "llmbrick"  # the request shape it understands: llmbrick, upstream, openai
    command: str = "servers"
    explicit: bool = False
    base: str = ""
    store: str = ""  # "", "memory" or "redis"
    api_key: str = ""


def _variant(name: str, base: str, label: str, **options: Any) -> Server:
    """A variant of our ``base`` server (``sse``, ``grpc``), run only where a scenario names it."""
    return Server(name, base, label, ours=True, explicit=True, base=base, **options)


_SSE_VARIANTS = (
    _variant(
        "sse-memstore", "sse", "llmbrick SSE, MemoryStore (every stream kept)", store="memory"
    ),
    _variant("sse-redis", "sse", "llmbrick SSE, RedisStore on a local redis-server", store="redis"),
    _variant(
        "sse-guarded", "sse", "llmbrick SSE, ApiKeyAuth + Prometheus metrics", api_key=API_KEY
    ),
    _variant(
        "openai", "sse", "llmbrick SSE server, OpenAI route /v1/chat/completions", dialect="openai"
    ),
)
_GRPC_VARIANTS = (
    _variant(
        "grpc-memstore", "grpc", "llmbrick gRPC, MemoryStore (every stream kept)", store="memory"
    ),
    _variant(
        "grpc-redis", "grpc", "llmbrick gRPC, RedisStore on a local redis-server", store="redis"
    ),
    _variant(
        "grpc-guarded", "grpc", "llmbrick gRPC, ApiKeyAuth + Prometheus metrics", api_key=API_KEY
    ),
)
#: The variants of ours, in the order of :data:`SERVERS`.
VARIANTS = tuple(server.name for server in _SSE_VARIANTS + _GRPC_VARIANTS)

SERVERS: tuple[Server, ...] = (
    Server("sse", "sse", "llmbrick SSE", ours=True),
    Server("bare-sse", "sse", "bare ASGI SSE", ours=False),
    Server(
        "upstream",
        "sse",
        "upstream llmbrick 0.2.10 SSE",
        ours=False,
        dialect="upstream",
        command="upstream",
    ),
    *_SSE_VARIANTS,
    Server("ws", "ws", "llmbrick WebSocket", ours=True),
    Server("bare-ws", "ws", "bare websockets", ours=False),
    Server("grpc", "grpc", "llmbrick gRPC", ours=True),
    Server("bare-grpc", "grpc", "bare grpc.aio, one message per event", ours=False),
    Server("bare-grpc-batch", "grpc", "bare grpc.aio, batching as ours (64 events)", ours=False),
    *_GRPC_VARIANTS,
    *(
        Server(
            f"gw-{transport}",
            transport,
            f"llmbrick gateway (llmbrick serve), streams over {label}",
            ours=True,
            command="gateway",
            explicit=True,
        )
        for transport, label in (("sse", "SSE"), ("ws", "WebSocket"), ("grpc", "gRPC"))
    ),
)

_GATEWAYS = ("gw-sse", "gw-ws", "gw-grpc")


@dataclass(frozen=True)
class Scenario:
    """One load shape; ``kind``: fast, idle, paced, capacity, greedy or slow (abuse)."""

    name: str
    kind: str
    title: str
    streams: int = 0
    events: int = 1  # per stream (fast, burst); per background stream (paced)
    note: str = ""  # how the shape relates to the issue's, when it differs
    transports: tuple[str, ...] = _ALL
    skip: tuple[str, ...] = ()  # servers left out of this scenario
    servers: tuple[str, ...] = ()  # explicit servers this scenario runs (see Server)
    extra: tuple[str, ...] = ()  # explicit servers it runs besides the usual ones (variants)
    group: str = ""  # ``--scenarios GROUP`` selects every scenario of the group
    max_reps: int = 0  # run in the first max_reps reps only (0: every rep)
    mode: str = "fast"  # fast: the flow's mode (fast or burst)
    burst: int = 1  # burst: events per loop turn
    interval: float = 0.05  # paced, capacity: seconds between events (20 events/s)
    new_streams: int = 0  # paced: streams opened while the others run
    new_events: int = 10  # paced: events of each new stream
    measure_s: float = 0.0  # paced, capacity: steady window for CPU/event and lateness
    storm_s: float = 0.0  # paced: window over which new streams are opened
    streams_per_channel: int = 0  # gRPC: 0 = every stream on one channel
    connect_limit: int = 0  # streams connecting at once (0 = all at once)
    settle_s: float = 1.0  # idle: pause before reading RSS; capacity: after each ramp
    running_s: float = 60.0  # paced: how long running streams would last (they are stopped)
    steps: tuple[int, ...] = ()  # capacity: background streams at each step
    probes: int = 0  # capacity: new streams opened during each step's window
    budget_s: float = 0.0  # capacity: no new step starts after this (per server)
    greedy_events: int = 0  # greedy: events of the greedy flow (more than it can send)
    read_s: float = 0.0  # greedy: how long the fast client reads before it leaves
    recover_s: float = 0.0  # greedy: how long to wait for health to answer normally
    poll_s: float = 0.05  # greedy: health poll period
    slow_sse: int = 0  # slow: SSE requests that are never read
    slow_ws: int = 0  # slow: WebSocket connections that are never read ...
    slow_ws_streams: int = 0  # ... each running this many streams
    slow_grpc: int = 0  # slow: gRPC streams (a channel each) that are never read
    big_events: int = 0  # slow: 64 KiB events each stream asks for
    rcvbuf: int = 64 << 10  # slow: SO_RCVBUF of the connections that never read
    plateau_s: float = 0.0  # slow: bound on waiting for RSS to stop growing
    leave_s: float = 2.0  # slow: pause between the clients leaving and the last RSS reading
    timeout: float = 120.0

    def to_json(self) -> dict[str, Any]:
        """The scenario as a JSON object (for the load client and the raw results)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scenario:
        """The inverse of :meth:`to_json`."""
        tuples = ("transports", "skip", "servers", "extra", "steps")
        return cls(**{**data, **{key: tuple(data[key]) for key in tuples}})

    @property
    def background_events(self) -> int:
        """Paced, capacity: events per running stream; they outlast the scenario and stop."""
        seconds = self.budget_s + 60.0 if self.kind == "capacity" else self.running_s
        return round(seconds / self.interval)

    def runs_on(self, server: Server) -> bool:
        """Whether ``server`` takes part in this scenario."""
        if server.transport not in self.transports or server.name in self.skip:
            return False
        if server.name in self.extra:
            return True
        return server.name in self.servers if self.servers or server.explicit else True


_REDUCED = (
    "Reduced from the issue's {} events: the slower baselines (bare gRPC, WebSocket, "
    "upstream) stream 30-60k events/s here, and 3 reps of everything must fit in 15 minutes."
)
_PER_100 = "gRPC streams go over one channel (its own connection) per 100 streams."
_NO_BATCH = " bare-grpc-batch is left out: an idle stream has nothing to batch."


def _full() -> list[Scenario]:
    return [
        Scenario(
            "single", "fast", "1 stream x 100,000 events", 1, 100_000, extra=VARIANTS, timeout=180
        ),
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
            note=_PER_100 + _NO_BATCH,
            skip=("bare-grpc-batch",),
            streams_per_channel=100,
            connect_limit=250,
        ),
        Scenario(
            "idle5000",
            "idle",
            "5,000 idle streams",
            5_000,
            note=_PER_100 + _NO_BATCH,
            skip=("bare-grpc-batch",),
            extra=("sse-memstore",),
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
            extra=VARIANTS,
        ),
        Scenario(
            "burst",
            "fast",
            "100 streams x 2,000 events, 16 events per loop turn",
            100,
            2_000,
            mode="burst",
            burst=16,
            skip=("upstream",),
            note="The flow yields 16 events per await, as a flow relaying an upstream model "
            "whose client parses many tokens per network read. Our servers may carry several "
            "events per write; the bare ones send each event on its own.",
            timeout=180,
        ),
        Scenario(
            "capacity",
            "capacity",
            "most streams at 20 events/s with new-stream TTFE p99 < 50 ms and lateness p99 "
            "< 100 ms",
            steps=(250, 500, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 6_000, 8_000),
            probes=100,
            measure_s=2.0,
            settle_s=1.0,
            budget_s=90.0,
            connect_limit=250,
            streams_per_channel=100,
            skip=("upstream",),
            max_reps=1,
            note="Background streams are added step by step (250 connecting at once); at each "
            "step, after the ramp and a settle pause, a window measures the background streams' "
            "lateness and the time to first event of 100 probe streams opened during it (each on a "
            "new connection; on gRPC a new channel). A step passes with probe TTFE p99 < 50 ms, "
            "lateness p99 < 100 ms and nothing failed. No step starts after 90 s. Runs in the "
            "first rep only. " + _PER_100,
            timeout=240,
        ),
        Scenario(
            "abuse-greedy",
            "greedy",
            "a flow that never awaits, read by a fast client, while GET /healthz is polled "
            "every 50 ms",
            group="abuse",
            servers=_GATEWAYS,
            max_reps=1,
            greedy_events=20_000_000,
            read_s=3.0,
            recover_s=20.0,
            note="Our gateway (`llmbrick serve benchmarks.app:registry`, one process on CPU 0) "
            "serves every transport; the greedy stream goes over the transport in the server's "
            "name, the health polls over HTTP on new connections. The client reads for 3 s, "
            "then drops its connection; recovery is the time from then to the first poll "
            "answered 200 in under 50 ms (waited for 20 s at most). Runs in the first rep only.",
            timeout=120,
        ),
        Scenario(
            "abuse-slow",
            "slow",
            "clients that request 64 KiB events and never read",
            group="abuse",
            servers=_GATEWAYS,
            max_reps=1,
            slow_sse=10,
            slow_ws=20,
            slow_ws_streams=16,
            slow_grpc=20,
            big_events=64,
            plateau_s=20.0,
            note="Per transport, a fresh gateway: SSE 10 requests, WebSocket 20 connections x "
            "16 streams, gRPC 20 streams (a channel each), every stream asking for 64 events of "
            "64 KiB (4 MiB). SSE and WebSocket sockets have SO_RCVBUF 64 KiB; gRPC's client "
            "reads its socket itself, so there HTTP/2 flow control (64 KiB window, BDP probing "
            "off) is what holds the server back. RSS is read before, once it plateaus with the "
            "clients connected (two samples 1 s apart within 1 MB, 20 s at most), and 2 s after "
            "they left. Runs in the first rep only.",
            timeout=120,
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
    "burst": {"streams": 50, "events": 800, "title": "50 streams x 800 events, 16 per turn"},
    "capacity": {
        "steps": (100, 300),
        "probes": 10,
        "measure_s": 0.8,
        "budget_s": 6.0,
        "title": "streams at 20 events/s: steps of 100 and 300",
        "note": "Quick: 10 probes per step, 0.8 s windows, no step after 6 s.",
    },
    "abuse-greedy": {
        "read_s": 1.0,
        "recover_s": 4.0,
        "note": "Quick: the client reads for 1 s; recovery is waited for 4 s at most.",
    },
    "abuse-slow": {
        "big_events": 16,
        "plateau_s": 5.0,
        "leave_s": 1.0,
        "note": "Quick: 16 events of 64 KiB per stream; RSS plateau waited for 5 s at most, "
        "read 1 s after the clients left.",
    },
}


def scenarios(quick: bool = False) -> list[Scenario]:
    """Every scenario, with the full counts or the small ``--quick`` ones."""
    chosen = _full()
    if quick:
        chosen = [
            replace(
                s,
                **{
                    "note": "" if s.note.startswith("Reduced") or s.name == "idle10000" else s.note,
                    "settle_s": min(s.settle_s, 0.3),
                    **_QUICK[s.name],
                },
            )
            for s in chosen
        ]
    return chosen
