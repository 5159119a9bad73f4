"""The leader's session clocks (raftsql/kv/sessions.py), on a clock the test turns."""

from __future__ import annotations

from raftsql.kv.sessions import SessionTimers


class World:
    def __init__(self) -> None:
        self.now = 0.0
        self.term: int | None = 1
        self.live = [("a", 10_000), ("b", 20_000), ("forever", 0)]
        self.expired: list[str] = []
        self.timers = SessionTimers(leading=lambda: self.term, live=self._live,
                                    expire=self._expire, clock=lambda: self.now)

    async def _live(self) -> list[tuple[str, int]]:
        return list(self.live)

    async def _expire(self, sid: str) -> None:
        self.expired.append(sid)
        self.live = [s for s in self.live if s[0] != sid]

    async def at(self, now: float) -> list[str]:
        self.now = now
        await self.timers._step()
        return self.expired


async def test_a_session_expires_when_its_ttl_runs_out_unless_renewed():
    w = World()
    assert await w.at(0.0) == []  # the clocks start: everyone gets a full TTL
    assert await w.at(9.9) == []
    w.timers.renew("b", 20_000)  # at 9.9: b's clock starts again
    assert await w.at(10.0) == ["a"]
    assert await w.at(29.8) == ["a"]
    assert await w.at(29.9) == ["a", "b"]
    assert await w.at(10_000.0) == ["a", "b"]  # no TTL: never


async def test_a_new_leader_gives_every_session_a_full_ttl():
    w = World()
    await w.at(0.0)
    w.term = None  # leadership lost at 5: this node keeps no clocks...
    assert await w.at(5.0) == []
    assert await w.at(11.0) == []  # ...and expires nothing
    w.term = 3  # leads again at 12: a's TTL counts from now, not from 0
    await w.at(12.0)
    assert await w.at(21.9) == []
    assert await w.at(22.0) == ["a"]


async def test_a_session_created_while_the_clocks_start_is_counted():
    w = World()
    w.live = []
    w.timers.renew("new", 10_000)  # created on this leader before its clocks started
    await w.at(0.0)
    assert await w.at(10.0) == ["new"]
