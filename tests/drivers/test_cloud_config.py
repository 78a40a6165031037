"""The openstacksdk driver without a cloud: configuration errors and how failures are reported.

Its API calls are tested against the real services (the `cloud` marker); here: clouds.yaml handling,
input validation before any request, and an unreachable Keystone as a transient CloudError that
names neither the password nor a token.
"""

import pytest

from novapurge.drivers.cloud import CloudApi, CloudError
from novapurge.errors import BadInput

PASSWORD = "s3cret-Pa55word-never-logged"
VM = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
CLOUDS_YAML = f"""
clouds:
  down:
    auth:
      auth_url: http://127.0.0.1:9/v3
      username: admin
      password: {PASSWORD}
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
"""


@pytest.fixture
def clouds_yaml(tmp_path, monkeypatch):
    path = tmp_path / "clouds.yaml"
    path.write_text(CLOUDS_YAML)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    for name in ("OS_CLOUD", "OS_AUTH_URL", "OS_PASSWORD", "OS_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_an_unknown_cloud_is_bad_input(clouds_yaml):
    with pytest.raises(BadInput, match="nope"):
        CloudApi.from_config("nope")
    with pytest.raises(BadInput, match="nope"):
        CloudApi.from_config("down", service_cloud="nope")


def test_ids_are_checked_before_any_request(clouds_yaml):
    api = CloudApi.from_config("down")
    try:
        for call in (lambda: api.server("../os-services"), lambda: api.port("1 OR 1"),
                     lambda: api.allocations("x"), lambda: api.delete_attachment("")):
            with pytest.raises(BadInput):
                call()
    finally:
        api.close()


def test_an_unreachable_cloud_is_a_transient_error_without_secrets(clouds_yaml, caplog):
    caplog.set_level("DEBUG")
    api = CloudApi.from_config("down", service_cloud="down")
    try:
        for service, call in (("compute", lambda: api.server(VM)),
                              ("placement", lambda: api.allocations(VM)),
                              ("volume", lambda: api.delete_attachment(VM))):
            with pytest.raises(CloudError) as error:
                call()
            assert (error.value.service, error.value.status, error.value.transient) == \
                (service, None, True)
            assert VM in str(error.value) and PASSWORD not in str(error.value)
    finally:
        api.close()
    assert PASSWORD not in caplog.text
