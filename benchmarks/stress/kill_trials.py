"""SIGKILL a build at random points, rerun it, and check the final content digest every time.

    python benchmarks/stress/kill_trials.py [--trials 5] [--seed 0]

Prints one line per trial (when it was killed, how many units were complete) and exits non-zero if
any resumed build differs from an uninterrupted one. A script, not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdcache.testing.fixtures import write_dataset, write_teacher
from kdcache.testing.tiny_runs import tiny_build

REPO = Path(__file__).resolve().parents[2]  # the builds run from the repository root, as a user's would


def build_cmd(data: Path, weights: Path, out: Path) -> list[str]:
    args = tiny_build(data, weights, out, "--epochs", "3", "--unit-size", "2", "--batch-size", "2")
    return [sys.executable, "-m", "kdcache", *args]


def digest(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "kdcache", "info", str(out), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(proc.stdout)["content_digest"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_dataset(root / "data", ["ant", "bee", "cat"], per_class=8)
        weights = write_teacher(root / "t.pth", 3)
        t0 = time.monotonic()
        subprocess.run(build_cmd(data, weights, root / "ref"), check=True, cwd=REPO, capture_output=True)
        full = time.monotonic() - t0
        ref = digest(root / "ref")
        print(f"reference build: {full:.1f} s, content_digest {ref[:16]}")
        failures = 0
        for t in range(args.trials):
            out = root / f"trial{t}"
            delay = rng.uniform(0.3, 0.95) * full
            proc = subprocess.Popen(
                build_cmd(data, weights, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(delay)
            killed = proc.poll() is None
            proc.kill()
            proc.wait()
            done = len(list((out / "done").rglob("*.json"))) if (out / "done").exists() else 0
            subprocess.run(build_cmd(data, weights, out), check=True, cwd=REPO, capture_output=True)
            ok = digest(out) == ref
            failures += not ok
            print(
                f"trial {t}: killed={'yes' if killed else 'no (finished first)'} after {delay:.1f} s with "
                f"{done} unit(s) committed -> resumed digest {'matches' if ok else 'DIFFERS'}"
            )
        print(f"{args.trials - failures}/{args.trials} trials match the uninterrupted build")
        return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
