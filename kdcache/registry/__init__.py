"""The cache registry: caches kept under one root, keyed by what determines their content.

``kdcache build`` without ``--out`` builds into (or reuses) ``ROOT/KEY/FORMAT``; ``kdcache ls`` and
``kdcache rm`` manage the root; ``kdcache train`` without ``--cache`` finds the matching cache there.
"""

from kdcache.registry.catalog import Entry, list_entries, remove_entry, resolve_key, touch
from kdcache.registry.key import cache_key, identity
from kdcache.registry.root import ENV_VAR, cache_root, default_root

__all__ = [
    "ENV_VAR",
    "Entry",
    "cache_key",
    "cache_root",
    "default_root",
    "identity",
    "list_entries",
    "remove_entry",
    "resolve_key",
    "touch",
]
