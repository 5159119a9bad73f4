"""The one error tree of raftsql. Callers catch these, never bare exceptions.

    RaftSQLError
    ├── NotLeaderError        this node does not lead (the leader, when known, is named)
    ├── LeadershipLostError   leadership was lost while a proposal was in flight: outcome unknown
    ├── RequestTimeoutError   the request's time ran out (also a TimeoutError): outcome unknown
    ├── NodeStoppedError      the node stopped, or failed, while the request waited
    ├── StaleReadError        a read at level none is older than its freshness allows
    ├── ClusterError          a membership or transfer request was refused
    ├── StorageError          the durable log or the state machine is unusable: fatal
    ├── TransportError        a peer could not be reached, or refused a request
    └── RequestError          the client's request is malformed (4xx, with a message)
        ├── ParamError        a query-string option
        └── BadStatementError a statement's shape or parameters

The HTTP layer turns each into a response in one table (raftsql/http/app.py).
"""

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


class RequestTimeoutError(RaftSQLError, TimeoutError):
    """The request's timeout passed before it completed: for a write, the outcome is unknown."""

    def __init__(self, message: str = "timeout") -> None:
        super().__init__(message)


class NodeStoppedError(RaftSQLError):
    def __init__(self, message: str = "node stopped") -> None:
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


class RequestError(RaftSQLError):
    """The client's request is refused: HTTP `status` with `message` (rqlite's words where
    rqlite has them; no body when message is None)."""

    def __init__(self, status: int, message: str | None = None):
        super().__init__(message or str(status))
        self.status = status
        self.message = message


class ParamError(RequestError):
    """A query-string option rqlite would refuse with 400; the message is rqlite's."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class BadStatementError(RequestError):
    """A request body element rqlite refuses with HTTP 400; the message is rqlite's text."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)
