"""Settings layers: flags > environment > novapurge.toml > nova.conf; passwords never shown."""

import pytest

from novapurge import config, validate
from novapurge.errors import BadInput

NOVA_CONF = """[DEFAULT]
instances_path = /srv/nova/instances
memcached_servers = 10.0.0.1:11211,10.0.0.2:11211
[database]
connection = mysql+pymysql://nova:cellpw@db1/nova
[api_database]
connection = mysql+pymysql://nova:apipw@db1/nova_api
"""


def test_layers_and_masking(tmp_path):
    nova_conf = tmp_path / "nova.conf"
    nova_conf.write_text(NOVA_CONF)
    toml = tmp_path / "novapurge.toml"
    toml.write_text(f'[nova]\nconf = "{nova_conf}"\n[api_database]\n'
                    'connection = "mysql+pymysql://np:tomlpw@db2/nova_api"\n'
                    '[cells]\ncell1 = "mysql+pymysql://np:cell1pw@10.1.1.1/nova"\n'
                    '[audit]\noperator = "ops-team"\n')
    settings = config.load(config=toml, journal_url="sqlite:////tmp/j.sqlite", operator="bob")
    assert settings.cell_url == "mysql+pymysql://nova:cellpw@db1/nova"      # from nova.conf
    assert settings.api_url == "mysql+pymysql://np:tomlpw@db2/nova_api"     # toml over nova.conf
    assert settings.operator == "bob"                                        # flag over toml
    assert settings.instances_path == "/srv/nova/instances"
    assert settings.memcached_servers == ["10.0.0.1:11211", "10.0.0.2:11211"]
    shown = str(settings.describe())
    for secret in ("cellpw", "apipw", "tomlpw", "cell1pw"):
        assert secret not in shown


def test_bad_files_are_bad_input(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[database\n")
    with pytest.raises(BadInput, match="invalid TOML"):
        config.load(config=broken)
    with pytest.raises(BadInput, match="cannot read nova.conf"):
        config.load(nova_conf=tmp_path / "missing.conf")


@pytest.mark.parametrize("value", ["", "x", "6c1e7d0a-2b9f-4c38-9a51-0d3f7e8b1c2",
                                   "6c1e7d0a-2b9f-4c38-9a51-0d3f7e8b1c22; rm -rf /", "../etc"])
def test_bad_uuids_are_refused(value):
    with pytest.raises(BadInput):
        validate.vm_uuid(value)


def test_uuid_is_canonical_and_groups_are_known():
    assert validate.vm_uuid("6C1E7D0A2B9F4C389A510D3F7E8B1C22") == \
        "6c1e7d0a-2b9f-4c38-9a51-0d3f7e8b1c22"
    assert validate.skip_groups(["quota,mapping", "quota"]) == ["mapping", "quota"]
    with pytest.raises(BadInput, match="unknown step group"):
        validate.skip_groups(["nonsense"])
