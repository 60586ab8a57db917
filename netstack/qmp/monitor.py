"""A QMP monitor: the chardev front end that runs one QMP session per connection.

Follows ``monitor/qmp.c``: on connect the session greets
(``{"QMP": {"version": ..., "capabilities": ["oob"]}}``) and starts in negotiation mode,
where only ``qmp_capabilities`` exists (any other command: ``CommandNotFound``, desc
``Expecting capabilities negotiation with 'qmp_capabilities'``) and no events are sent.
After negotiation every command of the table is available and events flow, each with a
wall-clock timestamp.

Flow control: in-band requests run one at a time, in order; the reader stops reading
while the in-band queue is full (1 request without OOB, 8 with OOB, QEMU's
``QMP_REQ_QUEUE_LEN_MAX``). ``exec-oob`` requests (OOB enabled) run at once and may
overtake. A JSON parse error is answered in order with the in-band requests (no ``id``).

Beyond QEMU, the agent resynchronisation commands of qemu-ga (``guest-sync``,
``guest-sync-delimited``, ``guest-ping``, ``guest-info``) work in both modes so that an
agent-style client can resynchronise a dirty stream: send 0xFF, then
``guest-sync-delimited``, skip input up to the 0xFF that prefixes its reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from netstack.chardev.base import Connection
from netstack.errors import CommandNotFound, GenericError
from netstack.qmp.dispatch import CommandTable, QmpCommand, dispatch, is_oob_request
from netstack.qmp.jsonout import qmp_line
from netstack.qmp.jsonstream import JSONParseError, JSONStreamParser

log = logging.getLogger("netstack.qmp")

QMP_REQ_QUEUE_LEN_MAX = 8
NEGOTIATION_DESC = "Expecting capabilities negotiation with 'qmp_capabilities'"
#: Commands that also work before negotiation (agent-style resynchronisation).
AGENT_COMMANDS = ("guest-sync", "guest-sync-delimited", "guest-ping", "guest-info")


class QmpMonitor:
    """Front end for a chardev in ``mode=control``."""

    multi_connection = True
    raw_socket = False

    def __init__(
        self,
        commands: CommandTable,
        *,
        version: Mapping[str, Any],
        pretty: bool = False,
        oob: bool = True,
        subscribe: Any = None,
        unsubscribe: Any = None,
    ) -> None:
        self.commands = commands
        self.version = dict(version)
        self.pretty = pretty
        self.oob_offered = oob
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self.sessions: set[QmpSession] = set()

    async def serve(self, conn: Connection) -> None:
        session = QmpSession(self, conn)
        self.sessions.add(session)
        if self._subscribe is not None:
            self._subscribe(session.on_event)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if self._unsubscribe is not None:
                self._unsubscribe(session.on_event)


class QmpSession:
    """One client's session: negotiation state, queues, and the reader loop."""

    def __init__(self, monitor: QmpMonitor, conn: Connection) -> None:
        self.monitor = monitor
        self.conn = conn
        self.negotiated = False
        self.oob_enabled = False
        self.parser = JSONStreamParser()
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=QMP_REQ_QUEUE_LEN_MAX)
        self._delimit_next = False
        self._negotiation: CommandTable | None = None

    # -- output --------------------------------------------------------------------------

    def send(self, obj: Mapping[str, Any], *, delimited: bool = False) -> None:
        data = qmp_line(obj, pretty=self.monitor.pretty)
        self.conn.write(b"\xff" + data if delimited else data)

    def on_event(self, name: str, data: Mapping[str, Any] | None) -> None:
        if not self.negotiated:
            return
        now = time.time()
        seconds = int(now)
        event: dict[str, Any] = {
            "event": name,
            "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1e6)},
        }
        if data is not None:
            event["data"] = dict(data)
        self.send(event)

    # -- input ---------------------------------------------------------------------------

    async def run(self) -> None:
        caps = ["oob"] if self.monitor.oob_offered else []
        self.send({"QMP": {"version": self.monitor.version, "capabilities": caps}})
        worker = asyncio.get_running_loop().create_task(self._worker())
        try:
            while True:
                data = await self.conn.read()
                if not data:
                    break
                for item in self.parser.feed(data):
                    if not isinstance(item, JSONParseError) and is_oob_request(item):
                        await self._run_one(item, in_band=False)
                    else:
                        await self._queue.put(item)
                        if not self.oob_enabled:
                            # Without OOB a monitor takes one request at a time.
                            await self._queue.join()
                await self.conn.drain()
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._run_one(item, in_band=True)
            except Exception as exc:  # a bug in a command must not kill the session
                log.exception("QMP command failed unexpectedly")
                reply: dict[str, Any] = {
                    "error": {"class": "GenericError", "desc": f"internal error: {exc!r}"}
                }
                if isinstance(item, dict) and "id" in item:
                    reply["id"] = item["id"]
                self.send(reply)
            finally:
                self._queue.task_done()

    async def _run_one(self, item: object, *, in_band: bool) -> None:
        if isinstance(item, JSONParseError):
            self.send({"error": {"class": "GenericError", "desc": item.desc}})
            return
        if self.negotiated:
            table = self.monitor.commands
        else:
            if self._negotiation is None:
                self._negotiation = self._negotiation_table()
            table = self._negotiation
        reply = await dispatch(table, item, self.oob_enabled, self)
        if not self.negotiated and "error" in reply:
            err = reply["error"]
            if err.get("class") == CommandNotFound.qmp_class:
                err["desc"] = NEGOTIATION_DESC
        delimited = self._delimit_next
        self._delimit_next = False
        self.send(reply, delimited=delimited)

    # -- negotiation -----------------------------------------------------------------------

    def _negotiation_table(self) -> CommandTable:
        table = CommandTable([self._capabilities_command()])
        for name in AGENT_COMMANDS:
            cmd = self.monitor.commands.get(name)
            if cmd is not None:
                table.add(cmd)
        return table

    def _capabilities_command(self) -> QmpCommand:
        base = self.monitor.commands.get("qmp_capabilities")

        async def negotiate(args: Any, session: Any) -> None:
            enable = args.enable or ()
            missing = [c for c in enable if c != "oob" or not self.monitor.oob_offered]
            if missing:
                raise GenericError(f"Capability {', '.join(missing)} not available")
            self.oob_enabled = "oob" in enable
            self.negotiated = True

        assert base is not None
        return QmpCommand("qmp_capabilities", negotiate, base.visit_args, arg_type=base.arg_type)

    def request_delimited_reply(self) -> None:
        """``guest-sync-delimited``: prefix the reply about to be sent with 0xFF."""
        self._delimit_next = True
