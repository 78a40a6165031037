"""Database rows as JSON, losslessly, so a before-state can be written back byte for byte."""

import base64
import datetime
import decimal

_TAG = "$np"


def encode_value(value):
    """A JSON-able form of one raw DB-API value (tagged where JSON has no type for it)."""
    if isinstance(value, datetime.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, datetime.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {_TAG: "timedelta", "v": value.total_seconds()}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def decode_value(value):
    """Inverse of encode_value."""
    if not (isinstance(value, dict) and _TAG in value):
        return value
    kind, raw = value[_TAG], value["v"]
    if kind == "datetime":
        return datetime.datetime.fromisoformat(raw)
    if kind == "date":
        return datetime.date.fromisoformat(raw)
    if kind == "timedelta":
        return datetime.timedelta(seconds=raw)
    if kind == "decimal":
        return decimal.Decimal(raw)
    if kind == "bytes":
        return base64.b64decode(raw)
    raise ValueError(f"unknown encoded value kind {kind!r}")


def encode_row(row: dict) -> dict:
    return {column: encode_value(value) for column, value in row.items()}


def decode_row(row: dict) -> dict:
    return {column: decode_value(value) for column, value in row.items()}
