"""The one error tree of raftsql. Callers catch these, never bare exceptions."""

from __future__ import annotations


class RaftSQLError(Exception):
    """Base of every error raftsql raises on purpose."""


class NotLeaderError(RaftSQLError):
    """This node is not the leader. `leader_id`/`leader_url` name the leader when known."""

    def __init__(self, leader_id: str | None = None, leader_url: str | None = None):
        super().__init__("not leader" if leader_id else "leader not found")
        self.leader_id = leader_id
        self.leader_url = leader_url


class LeadershipLostError(RaftSQLError):
    """Leadership was lost while a proposal was in flight: its outcome is unknown."""

    def __init__(self, message: str = "leadership lost while committing log"):
        super().__init__(message)


class StaleReadError(RaftSQLError):
    def __init__(self) -> None:
        super().__init__("stale read")


class StorageError(RaftSQLError):
    """The durable log is unusable. Fatal: the node must stop, never retry."""


class ClusterError(RaftSQLError):
    """A membership or transfer request was refused (message says why). `status`: 400 when
    the request itself is wrong, 503 when it may succeed if tried again later."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class TransportError(RaftSQLError):
    """A peer could not be reached or refused a request; `status` is its HTTP status if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
