"""A Cinder volume driver for the test cloud: Cinder's fake driver with real iSCSI connection info.

`cinder.tests.fake_driver.FakeLoggingVolumeDriver` stores nothing (no LVM), but its
connection_info is `{"driver_volume_type": "iscsi", "data": {"access_mode": "rw"}}`: no target at
all, which no real iSCSI backend returns. This one answers like the LVM driver with tgtd does
(target per volume, portal, LUN, CHAP credentials), so Nova's BDMs look like a real cloud's.
"""

import hashlib

from cinder.tests.fake_driver import FakeLoggingVolumeDriver

IQN_PREFIX = "iqn.2010-10.org.openstack:volume-"
PORTAL = "127.0.0.1:3260"


class IscsiFakeVolumeDriver(FakeLoggingVolumeDriver):
    """FakeLoggingVolumeDriver whose connections carry a target, portal, LUN and CHAP secret."""

    def initialize_connection(self, volume, connector):
        info = super().initialize_connection(volume, connector)
        volume_id = volume["id"]
        secret = hashlib.sha256(f"cloudlab-chap-{volume_id}".encode()).hexdigest()[:20]
        info["data"].update({
            "target_discovered": False,
            "target_iqn": f"{IQN_PREFIX}{volume_id}",
            "target_portal": PORTAL,
            "target_lun": 1,
            "volume_id": volume_id,
            "auth_method": "CHAP",
            "auth_username": f"chap-{volume_id[:8]}",
            "auth_password": secret,
        })
        return info
