"""The gateway's listening sockets: every address a host names, and ports shared by workers.

``socket.create_server((host, port))`` binds IPv4 only, so ``--host ::1`` failed;
here a host is resolved with ``getaddrinfo`` and each of its addresses is bound
in its own family, as gRPC does for its port. ``::`` alone is bound dual-stack
(IPv4 too), like gRPC's ``[::]`` and Linux's default.

With ``--workers N`` the two ports are shared in two different ways (see
:mod:`._workers` for why): the HTTP sockets are bound once by the supervisor
and inherited by every worker, and the gRPC port is *reserved* by the supervisor
with ``SO_REUSEPORT`` so that each worker's gRPC server can bind it too.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

__all__ = ["addresses", "bind_http", "reserve_shared_port"]

#: Connections the kernel queues before a worker accepts them (uvicorn's default is 2048;
#: a burst of clients connecting at once should wait, not be refused).
BACKLOG = 4096


def addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    """The distinct ``(family, (address, port))`` pairs ``host`` resolves to, in order.

    Raises:
        socket.gaierror: the host does not resolve.
    """
    found: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
    for family, _, _, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        pair = (family, (str(address[0]), port))
        if family in (socket.AF_INET, socket.AF_INET6) and pair not in found:
            found.append(pair)
    return found


def _dual_stack(family: int, address: str, alone: bool) -> bool:
    # "::" by itself means every interface, IPv4 included; next to an IPv4 address
    # (a host naming both) the IPv6 socket must leave IPv4 to that one.
    return alone and family == socket.AF_INET6 and ipaddress.ip_address(address).is_unspecified


def _socket(
    family: int, address: tuple[str, int], *, dual_stack: bool, reuse_port: bool, listen: bool
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if listen:
            # As socket.create_server does: a restart may bind while old connections
            # are in TIME_WAIT. Not on a reservation, which must conflict with listeners.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_all(host: str, port: int, *, reuse_port: bool, listen: bool) -> list[socket.socket]:
    """A socket on each address of ``host``, all on one port (the first one's, for port 0).

    An address that cannot be bound for another reason than being in use (an IPv6
    name on a host without IPv6) is skipped, as long as one address is bound.
    """
    targets = addresses(host, port)
    bound: list[socket.socket] = []
    problems: list[OSError] = []
    try:
        for family, (address, _) in targets:
            chosen = bound[0].getsockname()[1] if bound else port
            try:
                bound.append(
                    _socket(
                        family,
                        (address, chosen),
                        dual_stack=_dual_stack(family, address, len(targets) == 1),
                        reuse_port=reuse_port,
                        listen=listen,
                    )
                )
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise
                problems.append(exc)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    if not bound:
        raise problems[0] if problems else OSError(errno.EADDRNOTAVAIL, f"no address for {host}")
    return bound


def bind_http(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for the HTTP port on every address of ``host`` (port 0: a free one).

    Raises:
        OSError: the port is in use, or no address of ``host`` can be bound.
    """
    return _bind_all(host, port, reuse_port=False, listen=True)


def reserve_shared_port(host: str, port: int) -> list[socket.socket]:
    """Hold ``port`` on every address of ``host`` for servers that bind it with ``SO_REUSEPORT``.

    The sockets are bound but do not listen, so the kernel hands them no
    connection; while they are open, a process binding the port without
    ``SO_REUSEPORT`` fails, and the workers' gRPC servers (which set it) can bind
    it one after another, also after a restart. ``SO_REUSEPORT`` would also let
    any process of the same user join, so the port is first checked to be free
    with a plain bind: a port already taken, even by an ``SO_REUSEPORT`` server,
    is an error. Port 0 picks a free port.

    Raises:
        OSError: the port is in use, or no address of ``host`` can be bound.
    """
    # A plain bind: fails if anything holds the port. For port 0, it picks the port.
    probe = _bind_all(host, port, reuse_port=False, listen=False)
    chosen = probe[0].getsockname()[1]
    for sock in probe:
        sock.close()
    return _bind_all(host, chosen, reuse_port=True, listen=False)
