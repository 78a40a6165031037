"""Audit exports of the change ledger (JSONL, CSV, JSON): who, when, where, before, after.

The protected column (whole before-states holding secrets, for revert) is never exported.
"""

import csv
import io
import json

EXPORTED = ("id", "ts", "purge_id", "vm_uuid", "atom", "resource", "phase", "outcome", "before",
            "after", "operator", "ticket", "os_user", "machine", "pid", "target", "argv",
            "prev_hash", "hash")
_JSON_COLUMNS = ("before", "after", "argv")


def exported_row(row: dict) -> dict:
    """One ledger row as exported: JSON columns parsed, protected copies left out."""
    result = {k: row.get(k) for k in EXPORTED}
    for column in _JSON_COLUMNS:
        if result[column] is not None:
            result[column] = json.loads(result[column])
    return result


def render(rows, export_format: str) -> str:
    entries = [exported_row(r) for r in rows]
    if export_format == "json":
        return json.dumps(entries, indent=2, sort_keys=True) + "\n"
    if export_format == "jsonl":
        return "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORTED)
    writer.writeheader()
    for entry in entries:
        writer.writerow({k: (json.dumps(v, sort_keys=True) if k in _JSON_COLUMNS and v is not None
                             else v) for k, v in entry.items()})
    return buffer.getvalue()
