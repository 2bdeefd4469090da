"""HTML report of `resilio demo` (placeholder)."""

from __future__ import annotations

from typing import Any


def render(options: Any, bare: Any, resilient: Any, sb: Any, sr: Any) -> str:
    return "<html><svg></svg></html>"
