"""The legacy console-token driver against two real memcached servers (two controllers)."""

import json
import time
import uuid

import pytest
from pymemcache.client.base import Client

from memcachelab import memcached_servers
from novapurge.drivers.memcache import ConsoleStoreError, ConsoleTokenStore, parse_server
from novapurge.errors import BadInput

VM_A = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
VM_B = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
DAY = 24 * 3600


@pytest.fixture(scope="module")
def lab():
    with memcached_servers(2) as running:
        yield running


@pytest.fixture
def raw(lab):
    """Plain pymemcache clients on each server, emptied for this test."""
    clients = [Client(parse_server(server), default_noreply=False) for server in lab.servers]
    for client in clients:
        client.flush_all()
    yield clients
    for client in clients:
        client.close()


@pytest.fixture
def store(lab, raw):
    tokens = ConsoleTokenStore(lab.servers)
    yield tokens
    tokens.close()


def authorize(client, vm, token, ttl=600, list_ttl=600):
    """What nova-consoleauth's authorize_console writes: the token, then the instance's list."""
    info = {"token": token, "instance_uuid": vm, "host": "10.0.0.5", "port": 5900,
            "console_type": "novnc", "internal_access_path": None}
    client.set(token, json.dumps(info), expire=ttl)
    listed = client.get(vm)
    tokens = json.loads(listed) if listed else []
    client.set(vm, json.dumps(tokens + [token]), expire=list_ttl)


def ttl_of(client, key):
    """The remaining TTL of a key as memcached reports it (-1: no expiry), None when absent."""
    reply = client.raw_command(f"mg {key} t").decode()
    return None if reply == "EN" else int(reply.split()[1][1:])


def seed(raw, lab):
    """VM A: two tokens on controller 0 (list with a TTL), one on controller 1 (list without
    expiry, as Kilo wrote it); VM B: one token on each."""
    tokens = {"a0": [str(uuid.uuid4()) for _ in range(2)], "a1": [str(uuid.uuid4())],
              "b": [str(uuid.uuid4()), str(uuid.uuid4())]}
    for token in tokens["a0"]:
        authorize(raw[0], VM_A, token, ttl=600, list_ttl=600)
    authorize(raw[1], VM_A, tokens["a1"][0], ttl=300, list_ttl=0)
    authorize(raw[0], VM_B, tokens["b"][0])
    authorize(raw[1], VM_B, tokens["b"][1])
    return tokens


def keys_on(client, keys):
    return {key: client.get(key) for key in keys}


def test_read_returns_values_and_remaining_ttls(lab, raw, store):
    tokens = seed(raw, lab)
    time.sleep(1.1)  # a remaining TTL, not the one it was set with

    state = store.read(VM_A)

    first, second = lab.servers
    assert set(state) == {first, second}
    assert json.loads(state[first]["list"]["value"]) == tokens["a0"]
    assert 595 <= state[first]["list"]["ttl"] < 600
    assert state[second]["list"]["ttl"] is None and state[second]["list"]["expires_at"] is None
    assert json.loads(state[second]["list"]["value"]) == tokens["a1"]
    assert set(state[first]["tokens"]) == set(tokens["a0"])
    assert set(state[second]["tokens"]) == set(tokens["a1"])
    for token in tokens["a0"]:
        entry = state[first]["tokens"][token]
        assert json.loads(entry["value"])["token"] == token
        assert 595 <= entry["ttl"] < 600
    assert 295 <= state[second]["tokens"][tokens["a1"][0]]["ttl"] < 300
    assert all(s["instance"] == VM_A for s in state.values())
    json.dumps(state)  # the state goes into the ledger as JSON


def test_read_of_an_instance_without_tokens(lab, store):
    assert store.read(VM_A) == {server: {"instance": VM_A, "list": None, "tokens": {}}
                                for server in lab.servers}


def test_delete_removes_only_that_instances_keys_on_every_server(lab, raw, store):
    tokens = seed(raw, lab)
    others = [keys_on(raw[0], [VM_B, tokens["b"][0]]), keys_on(raw[1], [VM_B, tokens["b"][1]])]

    store.delete(VM_A, store.read(VM_A))

    assert keys_on(raw[0], [VM_A, *tokens["a0"]]) == dict.fromkeys([VM_A, *tokens["a0"]])
    assert keys_on(raw[1], [VM_A, *tokens["a1"]]) == dict.fromkeys([VM_A, *tokens["a1"]])
    assert [keys_on(raw[0], [VM_B, tokens["b"][0]]),
            keys_on(raw[1], [VM_B, tokens["b"][1]])] == others
    assert all(value is not None for found in others for value in found.values())


def test_delete_twice_is_harmless(lab, raw, store):
    seed(raw, lab)
    state = store.read(VM_A)
    store.delete(VM_A, state)
    store.delete(VM_A, state)
    assert store.read(VM_A) == {server: {"instance": VM_A, "list": None, "tokens": {}}
                                for server in lab.servers}


def test_restore_brings_values_back_with_the_remaining_ttl(lab, raw, store):
    tokens = seed(raw, lab)
    before = {server: keys_on(raw[i], [VM_A, *tokens["a0" if i == 0 else "a1"]])
              for i, server in enumerate(lab.servers)}
    time.sleep(1.1)
    state = store.read(VM_A)
    store.delete(VM_A, state)

    store.restore(state)

    after = {server: keys_on(raw[i], [VM_A, *tokens["a0" if i == 0 else "a1"]])
             for i, server in enumerate(lab.servers)}
    assert after == before
    assert 594 <= ttl_of(raw[0], VM_A) < 600       # what was left, not a fresh TTL
    assert 294 <= ttl_of(raw[1], tokens["a1"][0]) < 300
    assert ttl_of(raw[1], VM_A) == -1            # no expiry stays no expiry
    again = store.read(VM_A)
    assert {s: {k: e["value"] for k, e in again[s]["tokens"].items()} for s in again} == \
           {s: {k: e["value"] for k, e in state[s]["tokens"].items()} for s in state}


def test_restore_leaves_out_a_token_that_has_expired_since(lab, raw, store):
    tokens = seed(raw, lab)
    state = store.read(VM_A)
    store.delete(VM_A, state)
    expired = tokens["a0"][0]
    state[lab.servers[0]]["tokens"][expired]["expires_at"] = time.time() - 1

    store.restore(state)

    assert raw[0].get(expired) is None
    assert raw[0].get(tokens["a0"][1]) is not None and raw[0].get(VM_A) is not None


def test_values_with_crlf_large_values_and_long_ttls_round_trip(lab, raw, store):
    odd, large, far = (str(uuid.uuid4()) for _ in range(3))
    raw[0].set(odd, "x\r\nEN\r\nVA 3 t1\r\n", expire=600)
    raw[0].set(large, "y" * 200_000, expire=600)
    raw[0].set(far, "z", expire=int(time.time()) + 40 * DAY)  # beyond 30 days: absolute time
    raw[0].set(VM_A, json.dumps([odd, large, far]))
    state = store.read(VM_A)
    found = state[lab.servers[0]]["tokens"]
    assert found[odd]["value"] == "x\r\nEN\r\nVA 3 t1\r\n"
    assert found[large]["value"] == "y" * 200_000
    assert 40 * DAY - 5 <= found[far]["ttl"] <= 40 * DAY + 2  # memcached: ±1 s

    store.delete(VM_A, state)
    store.restore(state)

    assert raw[0].get(odd) == b"x\r\nEN\r\nVA 3 t1\r\n" and raw[0].get(large) == b"y" * 200_000
    assert 40 * DAY - 5 <= ttl_of(raw[0], far) <= 40 * DAY + 2


@pytest.mark.parametrize("hostile", ["bad token", "tok\r\nflush_all", "x" * 201, "", 7,
                                     "../etc"])
def test_a_hostile_token_in_a_list_is_refused_and_nothing_deleted(lab, raw, store, hostile):
    good = str(uuid.uuid4())
    authorize(raw[0], VM_A, good)
    raw[0].set(VM_A, json.dumps([good, hostile]))
    before = keys_on(raw[0], [VM_A, good])

    with pytest.raises(ConsoleStoreError) as error:
        store.read(VM_A)

    assert error.value.server == lab.servers[0]
    assert keys_on(raw[0], [VM_A, good]) == before


def test_a_recorded_state_with_a_hostile_key_is_refused_before_any_delete(lab, raw, store):
    tokens = seed(raw, lab)
    state = store.read(VM_A)
    state[lab.servers[1]]["tokens"]["flush_all\r\n"] = {"value": "x", "ttl": None, "flags": 0,
                                                         "expires_at": None}
    with pytest.raises(ConsoleStoreError):
        store.delete(VM_A, state)
    with pytest.raises(ConsoleStoreError):
        store.restore(state)
    assert all(v is not None for v in keys_on(raw[0], [VM_A, *tokens["a0"]]).values())


def test_a_list_that_is_not_json_is_refused(lab, raw, store):
    raw[1].set(VM_A, "not json")
    with pytest.raises(ConsoleStoreError) as error:
        store.read(VM_A)
    assert error.value.server == lab.servers[1]


def test_state_of_another_instance_is_refused(lab, raw, store):
    seed(raw, lab)
    with pytest.raises(ConsoleStoreError):
        store.delete(VM_B, store.read(VM_A))
    assert raw[0].get(VM_A) is not None


def test_bad_input_never_reaches_the_wire(store):
    with pytest.raises(BadInput):
        store.read("not-a-uuid\r\nflush_all")
    for server in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "a b:11211", "::1:11211"):
        with pytest.raises(BadInput):
            ConsoleTokenStore([server])
    assert parse_server("[::1]:11211") == ("::1", 11211)


def test_a_server_that_is_down_is_a_console_store_error():
    with memcached_servers(2) as lab:
        store = ConsoleTokenStore(lab.servers)
        try:
            store.read(VM_A)
            lab.stop(1)
            with pytest.raises(ConsoleStoreError) as error:
                store.read(VM_A)
            assert error.value.server == lab.servers[1]
            with pytest.raises(ConsoleStoreError) as error:
                store.restore({lab.servers[1]: {"instance": VM_A, "tokens": {}, "list": {
                    "value": "[]", "ttl": None, "flags": 0, "expires_at": None}}})
            assert error.value.server == lab.servers[1]
        finally:
            store.close()
