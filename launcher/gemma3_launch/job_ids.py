"""Job ids: the one place they are made (submit, and render_k8s's check of the names the operator derives)."""

from __future__ import annotations

import secrets
import time


def new_job_id(name: str) -> str:
    """`<name>-<UTC yyyymmdd-hhmmss>-<4 hex>`: sortable, unique, a valid k8s name (<= 63 chars)."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
