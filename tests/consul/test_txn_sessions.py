"""Consul's /v1/txn (every verb, rollbacks, limits) and /v1/session (create, renew,
destroy, info, list, node; locks and their delays)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.consul.helpers import (
    MAX_OPS,
    ROLLBACKS,
    Api,
    b64,
    info,
    kv,
    txn,
)


async def test_txn_set(api: Api) -> None:
    out = await txn(api, [kv("set", "a", Value=b64("1"), Flags=3), kv("set", "b", Value=b64("2"))])
    assert out["Errors"] is None
    (ra, rb) = [r["KV"] for r in out["Results"]]
    assert ra["Key"] == "a" and ra["Flags"] == 3 and ra["Value"] is None  # no values, as Consul
    assert ra["ModifyIndex"] == rb["ModifyIndex"]  # one entry
    assert (await api.entry("a"))["Value"] == b64("1")
    assert (await api.entry("b"))["Value"] == b64("2")


async def test_txn_cas(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/a", b"old")
    out = await txn(api, [kv("cas", "a", Index=index, Value=b64("new")),
                          kv("cas", "fresh", Index=0, Value=b64("made"))])
    assert [r["KV"]["Key"] for r in out["Results"]] == ["a", "fresh"]
    assert (await api.entry("a"))["Value"] == b64("new")
    assert (await api.entry("fresh"))["Value"] == b64("made")


async def test_txn_lock_and_unlock(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    out = await txn(api, [kv("lock", "l", Session=sid, Value=b64("held"))])
    assert out["Results"][0]["KV"]["LockIndex"] == 1
    e = await api.entry("l")
    assert (e["Session"], e["LockIndex"], e["Value"]) == (sid, 1, b64("held"))
    out = await txn(api, [kv("unlock", "l", Session=sid, Value=b64("free"))])
    assert "Session" not in out["Results"][0]["KV"]
    e = await api.entry("l")
    assert (e.get("Session"), e["LockIndex"], e["Value"]) == (None, 1, b64("free"))


async def test_txn_get_and_get_tree_answer_values(api: Api) -> None:
    for key in ("app/a", "app/b", "apple"):
        await api.put(key, key)
    out = await txn(api, [kv("get", "apple"), kv("get-tree", "app/")])
    assert [(r["KV"]["Key"], r["KV"]["Value"]) for r in out["Results"]] == [
        ("apple", b64("apple")), ("app/a", b64("app/a")), ("app/b", b64("app/b"))]


async def test_txn_check_index(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/a", b"v")
    out = await txn(api, [kv("check-index", "a", Index=index), kv("set", "b", Value=b64("x"))])
    assert out["Results"][0]["KV"]["ModifyIndex"] == index
    assert await api.entry("b") is not None


async def test_txn_check_session(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    await api.put("l", b"v", f"?acquire={sid}")
    out = await txn(api, [kv("check-session", "l", Session=sid), kv("set", "b")])
    assert out["Results"][0]["KV"]["Session"] == sid
    assert await api.entry("b") is not None


async def test_txn_check_not_exists(api: Api) -> None:
    out = await txn(api, [kv("check-not-exists", "nothing"), kv("set", "b")])
    assert out["Errors"] is None and [r["KV"]["Key"] for r in out["Results"]] == ["b"]


async def test_txn_delete(api: Api) -> None:
    await api.put("a")
    out = await txn(api, [kv("delete", "a"), kv("delete", "never")])
    assert out == {"Results": [], "Errors": None}
    assert await api.entry("a") is None


async def test_txn_delete_tree(api: Api) -> None:
    for key in ("app/a", "app/b/c", "apple"):
        await api.put(key)
    await txn(api, [kv("delete-tree", "app/")])
    assert await api.get("", "?keys") == ["apple"]


async def test_txn_delete_cas(api: Api) -> None:
    index = await api.index_of("PUT", "/v1/kv/a", b"v")
    await txn(api, [kv("delete-cas", "a", Index=index)])
    assert await api.entry("a") is None


@pytest.mark.parametrize("failing,what", ROLLBACKS)
async def test_txn_rolls_back_at_the_first_failure(api: Api, failing: dict, what: str) -> None:
    await api.put("a", b"before")
    before = await api.get("", "?recurse")
    status, _, body = await api.call("PUT", "/v1/txn", [
        kv("set", "a", Value=b64("changed")), kv("set", "new", Value=b64("x")), failing,
        kv("set", "after", Value=b64("y"))])
    assert status == 409
    out = json.loads(body)
    assert out["Results"] is None
    (error,) = out["Errors"]
    assert error["OpIndex"] == 2 and what in error["What"]
    assert await api.get("", "?recurse") == before


async def test_txn_lock_held_by_another_rolls_back(api: Api) -> None:
    s1, s2 = await api.session(LockDelay="0s"), await api.session(LockDelay="0s")
    await api.put("l", b"v", f"?acquire={s1}")
    before = await api.get("", "?recurse")
    out = await txn(api, [kv("set", "x"), kv("lock", "l", Session=s2)], status=409)
    assert out["Errors"][0]["OpIndex"] == 1 and "held" in out["Errors"][0]["What"]
    out = await txn(api, [kv("set", "x"), kv("check-session", "l", Session=s2)], status=409)
    assert out["Errors"][0]["OpIndex"] == 1
    assert await api.get("", "?recurse") == before


async def test_txn_over_the_op_limit_is_413_and_proposes_nothing(api: Api) -> None:
    out = await txn(api, [kv("set", f"k{i}") for i in range(MAX_OPS)])
    assert len(out["Results"]) == MAX_OPS
    before = api.last_index()
    status, _, body = await api.call("PUT", "/v1/txn", [kv("set", f"x{i}")
                                                        for i in range(MAX_OPS + 1)])
    assert status == 413 and b"too many operations" in body
    assert api.last_index() == before and await api.entry("x0") is None


@pytest.mark.parametrize("body", [
    b"", b"not json", b"{}", b'{"KV": {"Verb": "set", "Key": "a"}}', b"[1]", b'["set"]',
    b'[{"KV": {"Verb": "frob", "Key": "a"}}]', b'[{"KV": {"Key": "a"}}]',
    b'[{"Node": {"Verb": "set", "Node": {"Node": "n1"}}}]',
    b'[{"Service": {"Verb": "get", "Node": "n1"}}]',
    b'[{"KV": {"Verb": "set", "Key": "a"}, "Check": {}}]',
    b'[{"KV": {"Verb": "set", "Key": ""}}]',
    b'[{"KV": {"Verb": "set", "Key": "a", "Value": "%%%"}}]',
    b'[{"KV": {"Verb": "set", "Key": "a", "Flags": -1}}]',
    b'[{"KV": {"Verb": "cas", "Key": "a", "Index": "3"}}]',
    b'[{"KV": {"Verb": "lock", "Key": "a"}}]',
    b'[{"KV": {"Verb": "set", "Key": "ok"}}, {"KV": {"Verb": "nope", "Key": "a"}}]',
])
async def test_txn_bad_body_is_400_and_proposes_nothing(api: Api, body: bytes) -> None:
    await api.put("a")
    before = api.last_index()
    status, _, answer = await api.call("PUT", "/v1/txn", body)
    assert status == 400 and answer.strip(), answer
    assert api.last_index() == before and await api.entry("ok") is None


async def test_txn_field_names_are_matched_without_regard_to_case(api: Api) -> None:
    out = await txn(api, [{"kv": {"verb": "set", "key": "a", "value": b64("v"), "flags": 2}}])
    assert out["Results"][0]["KV"]["Flags"] == 2
    assert (await api.entry("a"))["Value"] == b64("v")


async def test_session_create_keeps_its_fields(api: Api) -> None:
    status, headers, body = await api.call("PUT", "/v1/session/create", {
        "Name": "web-leader", "TTL": "15s", "Behavior": "delete", "LockDelay": "2s"})
    assert status == 200
    sid = json.loads(body)["ID"]
    (s,) = await info(api, sid)
    assert (s["ID"], s["Name"], s["TTL"], s["Behavior"], s["LockDelay"], s["Node"]) == (
        sid, "web-leader", "15s", "delete", 2_000_000_000, "n1")
    assert s["CreateIndex"] == int(headers["X-Consul-Index"])


async def test_session_create_defaults(api: Api) -> None:
    status, _, body = await api.call("PUT", "/v1/session/create", b"")
    assert status == 200
    (s,) = await info(api, json.loads(body)["ID"])
    assert (s["Name"], s["TTL"], s["Behavior"], s["LockDelay"], s["NodeChecks"]) == (
        "", "", "release", 15_000_000_000, ["serfHealth"])


@pytest.mark.parametrize("ttl,ok", [("10s", True), ("86400s", True), ("24h", True),
                                    ("1m30s", True), ("9s", False), ("9999ms", False),
                                    ("86401s", False), ("25h", False), ("soon", False),
                                    ("-10s", False)])
async def test_session_ttl_is_10s_to_24h(api: Api, ttl: str, ok: bool) -> None:
    before = api.last_index()
    status, _, body = await api.call("PUT", "/v1/session/create", {"TTL": ttl})
    if ok:
        assert status == 200
        (s,) = await info(api, json.loads(body)["ID"])
        assert s["TTL"] != ""
    else:
        assert status == 400 and body.strip(), body
        assert api.last_index() == before
        assert await api.json("GET", "/v1/session/list") == []


@pytest.mark.parametrize("behavior,ok", [("release", True), ("delete", True), ("", True),
                                         ("destroy", False), ("Release!", False)])
async def test_session_behavior(api: Api, behavior: str, ok: bool) -> None:
    status, _, body = await api.call("PUT", "/v1/session/create", {"Behavior": behavior})
    assert status == (200 if ok else 400), body
    if ok:
        (s,) = await info(api, json.loads(body)["ID"])
        assert s["Behavior"] == (behavior or "release")
    else:
        assert await api.json("GET", "/v1/session/list") == []


@pytest.mark.parametrize("delay,ns", [("1s", 10**9), ("250ms", 250 * 10**6), (5, 5 * 10**9),
                                      (0, 0), ("0s", 0), (2_000_000_000, 2 * 10**9)])
async def test_session_lock_delay(api: Api, delay: Any, ns: int) -> None:
    (s,) = await info(api, await api.session(LockDelay=delay))
    assert s["LockDelay"] == ns


async def test_session_fields_are_matched_without_regard_to_case(api: Api) -> None:
    sid = await api.session(name="x", ttl="20s", behavior="delete", lockdelay="1s", NODE="n1")
    (s,) = await info(api, sid)
    assert (s["Name"], s["TTL"], s["Behavior"], s["LockDelay"]) == ("x", "20s", "delete", 10**9)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"Name": 3}',
                                  b'{"Checks": ["service:web"]}', b'{"LockDelay": "x"}',
                                  b'{"LockDelay": -1}'])
async def test_session_create_with_a_bad_body_is_400(api: Api, body: bytes) -> None:
    before = api.last_index()
    status, _, answer = await api.call("PUT", "/v1/session/create", body)
    assert status == 400 and answer.strip()
    assert api.last_index() == before


async def test_session_renew(api: Api) -> None:
    sid = await api.session(TTL="30s")
    (s,) = await api.json("PUT", f"/v1/session/renew/{sid}")
    assert s["ID"] == sid and s["TTL"] == "30s"
    status, _, body = await api.call("PUT", "/v1/session/renew/no-such-session")
    assert status == 404 and b"not found" in body


async def test_session_destroy(api: Api) -> None:
    sid = await api.session()
    assert await api.json("PUT", f"/v1/session/destroy/{sid}") is True
    assert await info(api, sid) == []
    assert await api.json("GET", "/v1/session/list") == []
    status, _, _ = await api.call("PUT", f"/v1/session/renew/{sid}")
    assert status == 404


async def test_session_info_of_an_unknown_session_is_empty(api: Api) -> None:
    status, headers, body = await api.call("GET", "/v1/session/info/no-such-session")
    assert status == 200 and json.loads(body) == [] and "X-Consul-Index" in headers


async def test_session_list(api: Api) -> None:
    assert await api.json("GET", "/v1/session/list") == []
    a, b = await api.session(Name="a"), await api.session(Name="b")
    listed = await api.json("GET", "/v1/session/list")
    assert sorted((s["ID"], s["Name"]) for s in listed) == sorted([(a, "a"), (b, "b")])


async def test_session_node(api: Api) -> None:
    a = await api.session(Name="a")
    b = await api.session(Name="b", Node="elsewhere")
    assert [s["ID"] for s in await api.json("GET", "/v1/session/node/n1")] == [a]
    assert [s["ID"] for s in await api.json("GET", "/v1/session/node/elsewhere")] == [b]
    assert await api.json("GET", "/v1/session/node/nobody") == []


@pytest.mark.parametrize("verb", ["acquire", "release"])
async def test_an_unknown_session_in_acquire_or_release_is_refused(api: Api, verb: str) -> None:
    await api.put("k", b"before")
    status, _, body = await api.call("PUT", f"/v1/kv/k?{verb}=no-such-session", b"after")
    assert (status == 200 and json.loads(body) is False) or (400 <= status < 500 and body)
    e = await api.entry("k")
    assert e["Value"] == b64("before") and "Session" not in e
    status, _, body = await api.call("PUT", f"/v1/kv/fresh?{verb}=no-such-session", b"x")
    assert await api.entry("fresh") is None


async def test_a_destroyed_session_cannot_acquire(api: Api) -> None:
    sid = await api.session()
    await api.json("PUT", f"/v1/session/destroy/{sid}")
    status, _, body = await api.call("PUT", f"/v1/kv/k?acquire={sid}", b"x")
    assert (status == 200 and json.loads(body) is False) or (400 <= status < 500 and body)
    assert await api.entry("k") is None


async def test_behavior_delete_deletes_the_held_keys(api: Api) -> None:
    sid = await api.session(Behavior="delete", LockDelay="0s")
    for key in ("a", "b"):
        assert await api.put(key, b"v", f"?acquire={sid}") is True
    await api.put("c")
    await api.json("PUT", f"/v1/session/destroy/{sid}")
    assert await api.get("", "?keys") == ["c"]


async def test_behavior_release_releases_the_held_keys(api: Api) -> None:
    sid = await api.session(LockDelay="0s")
    assert await api.put("a", b"v", f"?acquire={sid}") is True
    before = await api.entry("a")
    index = await api.index_of("PUT", f"/v1/session/destroy/{sid}")
    e = await api.entry("a")
    assert "Session" not in e and e["Value"] == b64("v")
    assert e["LockIndex"] == before["LockIndex"] and e["ModifyIndex"] == index

