"""Documents and services shared by the CLI and the web layer.

The store returns typed rows; this package turns them into the JSON documents both front ends show (the usage
document of docs/contract.md#usage, account and key views), so the CLI prints exactly what ``/api/v2/usage`` serves.
"""

from sttgate.admin.documents import account_view, isoformat, key_view, new_key_view, session_view, usage_document
from sttgate.admin.service import Admin

__all__ = ["Admin", "account_view", "isoformat", "key_view", "new_key_view", "session_view", "usage_document"]
