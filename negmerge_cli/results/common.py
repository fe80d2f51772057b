"""What every result's ``to_json`` shares."""

from __future__ import annotations


def without_none(values: dict) -> dict:
    """``values`` without the keys whose value is None (optional fields left out of the JSON)."""
    return {k: v for k, v in values.items() if v is not None}
