"""The teacher pass: ``kdcache build`` (pipeline, loop, runner, schedule) and ``kdcache verify``."""
