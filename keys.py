"""Names of the values kept in a purge flow's TaskFlow store (one place, no scattered literals)."""

VM_UUID = "vm_uuid"        # injected per VM
PURGE_ID = "purge_id"      # injected per VM: the logbook uuid
FACTS = "facts"            # provided by DiscoverInstance: everything the later steps act on
GUARDED = "guarded"        # provided by GuardInstance: the facts passed the guards
PASSED_NO_RETURN = "passed_point_of_no_return"
