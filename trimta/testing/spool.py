"""An in-memory spool with the `Spool` interface, for virtual-time tests.

The real spool commits in a worker thread, and trio's autojump clock can jump while a
thread works; this one only checkpoints, so simulated time is exactly what the engine
asked for. It keeps what a real spool would keep, so tests can assert on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import trio

from trimta.adapters.spool import RestoreResult
from trimta.core.message import Message


class MemorySpool:
    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.data: dict[str, bytes] = {}
        self.removed: list[str] = []
        self.updates = 0
        self._users: dict[str, int] = {}

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def restore(self) -> RestoreResult:
        return RestoreResult(messages=[replace(m) for m in self.messages.values()], damaged=[], reasons={})

    async def store(self, data: bytes, messages: Sequence[Message]) -> None:
        await trio.lowlevel.checkpoint()
        self.data[messages[0].data_id] = bytes(data)
        for m in messages:
            self.messages[m.id] = replace(m)
            self._users[m.data_id] = self._users.get(m.data_id, 0) + 1

    async def store_all(
        self, transactions: Sequence[tuple[bytes, Sequence[Message], Sequence[str] | None]]
    ) -> list[str | None]:
        """Several transactions at once; None for each that is stored (as the real spool).

        The encoded metadata of a transaction is ignored: messages are kept as objects.
        """
        for data, messages, _ in transactions:
            await self.store(data, messages)
        return [None] * len(transactions)

    async def update(self, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        if message.id in self.messages:
            self.messages[message.id] = replace(message)
            self.updates += 1

    async def remove(self, ids: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        for i in ids:
            m = self.messages.pop(i, None)
            if m is not None:
                self.removed.append(i)
                self._users[m.data_id] -= 1
                if not self._users[m.data_id]:
                    del self._users[m.data_id]
                    self.data.pop(m.data_id, None)

    async def load_data(self, data_id: str) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.data[data_id]

    def close(self) -> None:
        pass
