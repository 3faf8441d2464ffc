"""Shared CLI helpers: turning library errors into clear click errors, option parsing."""

from __future__ import annotations

import os

import click

DEBUG_ENV = "KDCACHE_DEBUG"


def debug_enabled() -> bool:
    """``kdcache --debug`` or KDCACHE_DEBUG=1: show tracebacks for user errors too."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def parse_slots(text: str) -> tuple[int, int]:
    """'A:B' -> (A, B), half-open like Python slices."""
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError as e:
        raise click.BadParameter(f"expected A:B with integers A < B, got {text!r}", param_hint="--slots") from e
    if a < 0 or b <= a:
        raise click.BadParameter(f"expected 0 <= A < B, got {text!r}", param_hint="--slots")
    return a, b


def is_user_error(e: BaseException) -> bool:
    """kdcache's own exception types carry messages meant for the user; OS errors (missing file,
    full disk, permissions) are the user's environment. Anything else is a bug: keep its traceback."""
    return type(e).__module__.startswith("kdcache") or isinstance(e, OSError)


def user_message(e: BaseException) -> str:
    msg = str(e)
    if "Original Traceback" in msg:
        # Re-raised from a DataLoader worker: the last line is "module.Error: message".
        last = [line for line in msg.splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return msg if type(e).__module__.startswith("kdcache") else f"{type(e).__name__}: {msg}"


def fail_cleanly(fn):
    """Report user errors as one clean line with exit status 1 instead of a traceback (unless
    :func:`debug_enabled`); anything else is a bug and keeps its traceback.

    In a job of several processes (torchrun) the line names the rank, and the rank exits at once
    (kdcache.distributed.exit_failed_rank): torchrun then stops the other ranks instead of leaving them
    waiting in a collective for this one."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException as e:
            _end_failed_rank(e.format_message(), e)
            raise
        except Exception as e:
            if not is_user_error(e) or debug_enabled():
                _end_failed_rank(user_message(e), e, traceback=True)
                raise
            _end_failed_rank(user_message(e), e)
            raise click.ClickException(user_message(e)) from e

    return wrapper


def _end_failed_rank(message: str, error: BaseException, traceback: bool = False) -> None:
    """In a job of several processes: print the traceback if asked, then end this rank naming it (never
    returns). In a single process: nothing (the caller reports the error as usual)."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "0", "1"):
        return  # one process (checked before importing torch: most commands never load it)
    from kdcache.distributed import exit_failed_rank, launched_rank, peer_lost

    if launched_rank() is None:
        return
    peer = peer_lost(error)
    if traceback and not peer:  # a lost peer is not this rank's bug: the failing rank tells its story
        import traceback as tb

        tb.print_exception(error)
    exit_failed_rank(message, peer=peer)
