"""The error kdcache raises for a user's mistake (a bad option value, an input that cannot work).

It is a ValueError, so library callers can keep catching ValueError; the CLI reports its message
without a traceback (kdcache.cli.common.fail_cleanly). Messages name the option or the thing and say
what to do.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A user error: the CLI prints its message and exits 1; ``kdcache --debug`` shows the traceback."""
