"""Secrets (API keys, tokens, passwords) kept out of every run file, logged config and recorded command line."""

from __future__ import annotations

import re
from typing import Any

SECRET = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.IGNORECASE)


def is_secret(key: str) -> bool:
    """A key named like a credential (``api_key``, ``*token*``, ``*secret*``, ``*password*``): its value is
    written to no run file, logged config or recorded command line."""
    return bool(SECRET.search(str(key)))


def without_secrets(value: Any) -> Any:
    """``value`` with every mapping entry whose key :func:`is_secret` removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items() if not is_secret(k)}
    if isinstance(value, (list, tuple)):
        return [without_secrets(v) for v in value]
    return value


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a flat config without keys that look like secrets (API keys, tokens, passwords), also inside
    values (``trainer.logger.settings: {api_key: ...}``)."""
    return {k: without_secrets(v) for k, v in config.items() if not is_secret(k)}


REDACTED = "<redacted>"


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the value of every secret replaced by :data:`REDACTED`: ``--x.api_key=K``, ``--x.api_key
    K`` and any argument whose text names a secret (``--trainer.logger.init_args.settings={api_key: K}``)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif is_secret(arg):
            option, equals, _ = arg.partition("=")
            if equals and option.startswith("-"):
                out.append(f"{option}={REDACTED}")
            elif arg.startswith("-"):
                out.append(arg)
                hide_next = True  # --x.api_key K
            else:
                out.append(REDACTED)
        else:
            out.append(arg)
    return out
