"""Mirror state store (placeholder until the state store lands): the mirrors of a link,
read from the destination cluster."""
from __future__ import annotations


def list_mirrors(link, timeout: float = 15.0) -> list[dict]:
    """[{'topic': ..., 'state': 'ACTIVE'|'PAUSED'|...}, ...] for `link` (a registry.Link)."""
    return []
