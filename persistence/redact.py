"""Secrets kept out of the ledger's exported columns (passwords, tokens, user data).

A before-state is stored twice when it holds a secret: redacted (exported, hashed) and whole in a
protected column that revert reads and no export ever shows.
"""

import functools
import json
import re

MASK = "***"
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|credential|private_key|^token$|token_hash|console_tokens|auth_key|"
    r"user_data|^admin_pass$)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


@functools.lru_cache(maxsize=4096)   # the keys are column and field names: few, seen often
def is_secret_key(key) -> bool:
    return bool(_SECRET_KEY.search(str(key)))


def redact(value):
    """A copy of `value` with secrets masked; JSON held in strings (connection_info) is walked too."""
    if isinstance(value, dict):
        cleaned = {k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v))
                   for k, v in value.items()}
        key = value.get("key")
        if isinstance(key, str) and is_secret_key(key) and value.get("value") not in (None, ""):
            cleaned["value"] = MASK  # a metadata row such as {"key": "password_0", "value": ...}
        return cleaned
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_string(value)
    return value


def _redact_string(text: str) -> str:
    head = text[:1]
    if head in ("{", "[") or (head.isspace() and text.lstrip()[:1] in ("{", "[")):
        try:
            inner = json.loads(text)
        except ValueError:
            pass
        else:
            cleaned = redact(inner)
            return text if cleaned == inner else json.dumps(cleaned, sort_keys=True)
    if "://" not in text:   # most strings: no URL, nothing to mask (the regex costs more)
        return text
    return _URL_PASSWORD.sub(r"\1" + MASK + r"\3", text)
