"""The live ready queues, by name: the one place that knows which exist.

The egress creates and reaps them here; operator rules look them up to suspend one
or to take messages back out; inspection and metrics read them. It holds no policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from trimta.core.message import Message
from trimta.core.queues import canonical_ready_queue_name
from trimta.services.ready_queue import ReadyQueue


class ReadyQueues:
    """Every ready queue that is running, by name (``source->site@smtp_client``)."""

    def __init__(self) -> None:
        self._queues: dict[str, ReadyQueue] = {}

    def get(self, name: str) -> ReadyQueue | None:
        """The running queue called `name` (either form, `canonical_ready_queue_name`)."""
        return self._queues.get(canonical_ready_queue_name(name))

    def register(self, queue: ReadyQueue) -> None:
        self._queues[queue.name] = queue

    def unregister(self, queue: ReadyQueue) -> bool:
        """Forget `queue` if it is still the one under its name; True if it was."""
        if self._queues.get(queue.name) is queue:
            del self._queues[queue.name]
            return True
        return False

    def __iter__(self) -> Iterator[ReadyQueue]:
        return iter(list(self._queues.values()))

    def __len__(self) -> int:
        return len(self._queues)

    def take_matching(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Take matching messages out of every ready queue (in-flight ones finish)."""
        taken: list[Message] = []
        for queue in self:
            taken.extend(queue.remove_matching(predicate))
        return taken

    def find(self, message_id: str) -> tuple[Message, str] | None:
        for queue in self:
            found = queue.find(message_id)
            if found is not None:
                return found
        return None
