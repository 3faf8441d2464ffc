"""The teacher pass: ``kdcache build`` (pipeline, loop, runner, schedule, dry run) and ``kdcache verify``."""
