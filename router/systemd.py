"""systemd service notifications (``Type=notify``) without libsystemd.

The sd_notify protocol: one datagram of newline-separated ``KEY=value`` lines
sent over an ``AF_UNIX``/``SOCK_DGRAM`` socket to the path in ``$NOTIFY_SOCKET``
(a leading ``@`` means the Linux abstract namespace). Outside systemd the
variable is unset and every call here is a no-op that returns ``False``, so
callers never need to check whether they run under systemd.

- :func:`ready` once the configuration is loaded *and* the port is bound;
- :func:`reloading` before a SIGHUP reload, then :func:`ready` again after it
  (whether the new configuration was accepted or refused);
- :func:`stopping` when shutdown begins;
- :func:`watchdog_loop` as a task on the serving event loop when the unit sets
  ``WatchdogSec=``: it pings from the loop itself, so a loop that stops turning
  stops the pings and systemd restarts the service.

See ``systemd/README.md`` for the unit that uses this.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time



def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``.

    True when the datagram was sent; False when the variable is unset, names an
    unsupported address, or the send failed (never raises for that)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    elif not address.startswith("/"):
        return False  # unset, or a kind we do not speak (e.g. vsock:)
    data = message.encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # not inherited (PEP 446)
            sock.setblocking(False)  # called on the event loop: never wait (a full queue drops this one)
            return sock.sendto(data, address) == len(data)
    except OSError:  # BlockingIOError too
        return False


def _with_status(first: str, status: str | None) -> str:
    return first if status is None else f"{first}\nSTATUS={status.replace(chr(10), ' ')}"


def ready(status: str | None = None) -> bool:
    """``READY=1`` (start-up done, or a reload finished), with an optional ``STATUS=`` line."""
    return notify(_with_status("READY=1", status))


def reloading(status: str | None = None) -> bool:
    """``RELOADING=1``: a reload has begun; send :func:`ready` when it is over.

    Carries ``MONOTONIC_USEC`` as well, which ``Type=notify-reload`` (systemd 253+)
    requires and older versions ignore."""
    return notify(_with_status(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}", status))


def stopping(status: str | None = None) -> bool:
    """``STOPPING=1``: shutdown has begun (in-flight requests are draining)."""
    return notify(_with_status("STOPPING=1", status))


def watchdog_interval() -> float | None:
    """``WatchdogSec=`` in seconds, from ``$WATCHDOG_USEC``; None when no watchdog is
    set, or when ``$WATCHDOG_PID`` names another process (e.g. we are a worker
    that inherited the supervisor's environment)."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


async def watchdog_loop(interval: float | None = None) -> None:
    """Send ``WATCHDOG=1`` every ``interval / 2`` seconds until cancelled.

    ``interval`` defaults to :func:`watchdog_interval`; returns at once when there
    is no watchdog or no ``$NOTIFY_SOCKET``. Run it as a task on the loop that
    serves requests: the pings are a proof that this loop still turns."""
    if interval is None:
        interval = watchdog_interval()
    if interval is None or not os.environ.get("NOTIFY_SOCKET"):
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval / 2)
