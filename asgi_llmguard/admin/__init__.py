"""The admin API, its CLI and the usage dashboard: operating a running gateway.

`AdminApp` answers JSON calls authorized by its own admin key (keys, budgets, rate-limit state,
cooldowns, usage queries, reload) and serves the dashboard page; `AdminMount` puts it under a
path prefix in front of the gateway. `build_stack(admin={...})` and the config file's ``[admin]``
section assemble both.
"""

from asgi_llmguard.admin.app import MIN_KEY_LENGTH, AdminApp, AdminMount, admin_key_hash

__all__ = ["MIN_KEY_LENGTH", "AdminApp", "AdminMount", "admin_key_hash"]
