"""``kdcache demo``: teacher, cache and three students on scikit-learn's digits, offline, on a CPU."""
