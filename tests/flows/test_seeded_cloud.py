"""The `nova` fixture holds what the other tests rely on (a guard against a silently thin seed)."""

import json

from novapurge.sandbox import novadb


def test_seeded_cloud_has_what_the_tests_claim(nova, helpers):
    target = nova.uuids["target"]
    instance, = nova.rows("cell", "instances", uuid=target)
    assert (instance["vm_state"], instance["task_state"], instance["deleted"]) == ("error", None, 0)
    assert nova.rows("cell", "instance_faults", instance_uuid=target)
    assert len(nova.rows("cell", "console_auth_tokens", instance_uuid=target)) == 2
    volumes = [json.loads(r["connection_info"]) for r in
               nova.rows("cell", "block_device_mapping", instance_uuid=target)
               if r["connection_info"]]
    assert [v["driver_volume_type"] for v in volumes] == ["iscsi"]
    assert volumes[0]["data"]["auth_method"] == "CHAP"
    cache, = nova.rows("cell", "instance_info_caches", instance_uuid=target)
    vif, = json.loads(cache["network_info"])
    assert vif["type"] == "ovs" and vif["details"]["ovs_hybrid_plug"] is True
    assert nova.rows("api", "build_requests", instance_uuid=target)
    usage = {r["resource"]: r["in_use"] for r in nova.rows("api", "quota_usages")
             if r["project_id"] == helpers.PROJECT}
    assert usage == {"instances": 5, "cores": 6, "ram": 12288}

    states = {role: nova.rows("cell", "instances", uuid=uuid)[0]
              for role, uuid in nova.uuids.items()}
    assert (states["deleting"]["vm_state"], states["deleting"]["task_state"]) == \
        ("active", "deleting")
    assert states["shelved"]["vm_state"] == "shelved_offloaded"
    assert states["shelved"]["host"] is None
    assert {states[r]["vm_state"] for r in helpers.HEALTHY} == {"active", "stopped"}
    assert all(states[r]["project_id"] == helpers.PROJECT for r in helpers.INSTANCES)
    assert states["gone"]["deleted"] == states["gone"]["id"]
    # The copy points its cell mapping at itself, not at the template it was copied from.
    cell, = nova.rows("api", "cell_mappings")
    assert cell["database_connection"] == nova.cell_url


def test_copies_are_identical(nova, templates, tmp_path, helpers):
    other = templates.new_cloud(nova.backend, tmp_path / "other")
    try:
        helpers.assert_same(other.normalized(), nova.normalized())
    finally:
        other.dispose()
        for name in other.mysql_names:
            novadb.drop_mysql_database(helpers.SERVER, name)
