"""kdcache: run the teacher once, offline; replay the exact views for any student."""

__version__ = "0.2.0"
