"""Start-up at ImageNet size: how long each command takes before it does useful work, and its memory.

An ImageFolder with ImageNet-1k's train layout (1,281,167 tiny valid JPEGs in 1,000 WordNet-id folders,
hard links of one JPEG per class: ``kdcache.testing.imagenet_tree``) is made once under ``--root`` and
kept. Then each stage runs as a whole process (``kdcache.testing.process_probe``: wall seconds and the
process's peak RSS from ``os.wait4``, launched from a small process):

- scan: ``kdcache.data`` opens the folder as a source and computes its fingerprint (paths + sizes);
- dry run: ``kdcache build --dry-run --assume-rate 1000`` (the recipe's 610 epochs);
- build: ``kdcache build`` (610 epochs, a ``test_resnet`` teacher at random init saved with
  ``kdcache.testing.fixtures.write_teacher``, ``--image-size 32``, format 1 top-10) until its first teacher batch: the
  build prints ``build: 1/N batches; teacher: ... views/s`` after it (``--no-progress``), and is killed
  there with its workers;
- train: ``kdcache train`` until its first optimiser step, from a registry cache of 1 complete epoch of
  the folder built with the same teacher (built once, kept under ``--root``, its build time reported);
  the first step is seen by a hook that wraps ``Trainer._step`` and prints a line after it (``python -c``
  around ``python -m kdcache``; nothing in kdcache changes);
- ``kdcache info``, ``kdcache ls``, ``kdcache verify --views 64`` on that cache.

    python benchmarks/performance/startup.py                                  # ImageNet size; all stages
    python benchmarks/performance/startup.py --stages scan,dry-run,build      # without the one-epoch cache
    python benchmarks/performance/startup.py --samples 2000 --classes 10 --root /tmp/kdcache-startup-small  # smoke test
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

IMAGENET = 1_281_167
STAGES = ("scan", "dry-run", "build", "train", "info", "ls", "verify")
GB, MB = 1e9, 1e6

# Goals on the 2-core machine (seconds, bytes); None: no goal.
GOALS: dict[str, tuple[float | None, float | None]] = {
    "scan": (None, None),
    "dry-run": (None, None),
    "build": (30.0, 1.5 * GB),
    "train": (30.0, None),
    "info": (5.0, None),
    "ls": (5.0, None),
    "verify": (None, None),
}

# The scan as its own process: kdcache.data's source, then its fingerprint.
SCAN = """
import sys, time
t0 = time.perf_counter()
from kdcache.data.wds_source import open_source
t1 = time.perf_counter()
source = open_source(sys.argv[1])
t2 = time.perf_counter()
fingerprint = source.fingerprint
t3 = time.perf_counter()
print(f"{len(source)} samples, fingerprint {fingerprint[:16]}; import {t1 - t0:.2f} s, scan {t2 - t1:.2f} s, "
      f"fingerprint {t3 - t2:.2f} s")
"""

# kdcache train with a line printed after the first optimiser step (Trainer._step ends with it).
FIRST_STEP = """
import runpy, sys
from kdcache.student.trainer import Trainer
real = Trainer._step
def step(self, *args, **kwargs):
    out = real(self, *args, **kwargs)
    print("startup-bench: first optimiser step done", file=sys.stderr, flush=True)
    return out
Trainer._step = step
sys.argv = ["kdcache", *sys.argv[1:]]
runpy.run_module("kdcache", run_name="__main__")
"""
FIRST_STEP_LINE = r"startup-bench: first optimiser step done"
FIRST_BATCH_LINE = r"^build: 1/\d[\d,]* batches"


@dataclass(frozen=True)
class Row:
    stage: str
    seconds: float
    cpu_seconds: float
    peak_rss: int
    ok: bool
    note: str = ""

    def goal_text(self) -> str:
        secs, rss = GOALS[self.stage]
        parts = ([f"<= {secs:g} s"] if secs else []) + ([f"RSS <= {rss / GB:g} GB"] if rss else [])
        return ", ".join(parts) or "-"

    def met(self) -> str:
        secs, rss = GOALS[self.stage]
        if not self.ok:
            return "failed"
        if secs is None and rss is None:
            return "-"
        good = (secs is None or self.seconds <= secs) and (rss is None or self.peak_rss <= rss)
        return "yes" if good else "no"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--root",
        type=Path,
        default=Path(tempfile.gettempdir()) / "kdcache-startup",
        help="where the image folder, teacher and one-epoch cache are kept between runs [%(default)s]",
    )
    ap.add_argument("--samples", type=int, default=IMAGENET, help="images [ImageNet-1k train: %(default)s]")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of: " + ", ".join(STAGES))
    ap.add_argument("--image-size", type=int, default=32, help="view size of the builds and the cache")
    ap.add_argument("--batch-size", type=int, default=128, help="build batch (the default of kdcache build)")
    ap.add_argument("--train-batch-size", type=int, default=128)
    ap.add_argument("--cache-batch-size", type=int, default=512, help="batch of the one-epoch cache's build")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per stage")
    ap.add_argument("--cache-timeout", type=float, default=4 * 3600.0, help="seconds for the one-epoch build")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")

    from kdcache.testing.fixtures import write_teacher
    from kdcache.testing.imagenet_tree import make_linked_imagefolder
    from kdcache.testing.machine import machine_info

    print("\n".join(machine_info()))
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, created = make_linked_imagefolder(
        root / f"imagefolder-{args.samples}-{args.classes}", args.samples, args.classes
    )
    print(
        f"data    : {data}: {args.samples:,} JPEGs in {args.classes:,} class folders "
        f"({'made' if created else 'kept from an earlier run'} in {time.perf_counter() - t0:.1f} s)"
    )
    weights = root / f"test_resnet-{args.classes}.pth"
    if not weights.exists():
        write_teacher(weights, args.classes, "test_resnet")
    registry = root / "registry"
    env = {**os.environ, "KDCACHE_HOME": str(registry), "PYTHONUNBUFFERED": "1"}
    kdcache = [sys.executable, "-m", "kdcache"]
    common = ["--teacher", "test_resnet", "--teacher-weights", str(weights), "--data", str(data)]
    common += ["--image-size", str(args.image_size), "--workers", str(args.workers)]
    # The label scheme spelled out: the kept one-epoch cache is found again by its registry key only if
    # the scheme is the same, whatever the default for a 1000-class teacher becomes.
    common += ["--format-version", "1", "--topk", "10"]

    from kdcache.testing.process_probe import probe

    rows: list[Row] = []

    def record(stage: str, run, note: str = "") -> None:
        rows.append(Row(stage, run.seconds, run.cpu_seconds, run.peak_rss, run.reached, note))
        state = "ok" if run.reached else ("TIMED OUT" if run.timed_out else f"FAILED (exit {run.returncode})")
        print(
            f"--- {stage}: {run.seconds:.1f} s ({run.cpu_seconds:.1f} CPU-s), peak RSS {run.peak_rss / MB:,.0f} MB, "
            f"{state}; load avg {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if not run.reached:
            print(run.tail(30), flush=True)

    if "scan" in stages:
        run = probe([sys.executable, "-c", SCAN, str(data)], env=env, timeout=args.timeout)
        record("scan", run, run.output.strip().splitlines()[-1] if run.reached else "")
    if "dry-run" in stages:
        out = root / "dry-run-cache"  # the dry run writes nothing there
        run = probe(
            [*kdcache, "build", *common, "--out", str(out), "--dry-run", "--assume-rate", "1000"],
            env=env,
            timeout=args.timeout,
        )
        record("dry-run", run, next((x.strip() for x in run.output.splitlines() if "RAM per rank" in x), ""))
    if "build" in stages:
        out = root / "first-batch-cache"
        shutil.rmtree(out, ignore_errors=True)  # a new build every time, not a resume
        run = probe(
            [*kdcache, "build", *common, "--out", str(out), "--batch-size", str(args.batch_size), "--no-progress"],
            marker=FIRST_BATCH_LINE,
            env=env,
            timeout=args.timeout,
        )
        first = next((x.strip() for x in run.output.splitlines() if x.startswith("build: 1/")), "")
        record("build", run, first)
        shutil.rmtree(out, ignore_errors=True)
    needs_cache = [s for s in ("train", "info", "ls", "verify") if s in stages]
    if needs_cache:
        cache = one_epoch_cache(kdcache, common, args, env, registry)
        if "train" in stages:
            run_dir = root / "first-step-run"
            shutil.rmtree(run_dir, ignore_errors=True)
            train = ["train", "--student", "test_resnet", "--cache", str(cache), "--out", str(run_dir)]
            train += ["--epochs", "1", "--batch-size", str(args.train_batch_size), "--workers", str(args.workers)]
            run = probe(
                [sys.executable, "-c", FIRST_STEP, *train, "--no-progress"],
                marker=FIRST_STEP_LINE,
                env=env,
                timeout=args.timeout,
            )
            record("train", run)
            shutil.rmtree(run_dir, ignore_errors=True)
        if "info" in stages:
            record("info", probe([*kdcache, "info", str(cache)], env=env, timeout=args.timeout))
        if "ls" in stages:
            record("ls", probe([*kdcache, "ls"], env=env, timeout=args.timeout))
        if "verify" in stages:
            verify = [*kdcache, "verify", str(cache), "--views", "64", "--teacher-weights", str(weights)]
            record("verify", probe(verify, env=env, timeout=args.timeout))

    print()
    print("| stage | seconds | CPU-s | peak RSS | goal | met? |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.stage} | {r.seconds:.1f} | {r.cpu_seconds:.1f} | {r.peak_rss / GB:.2f} GB | {r.goal_text()} | "
            f"{r.met()} |"
        )
    print(
        "seconds: wall, to the marker line or the exit; CPU-s: user + system of the main process (a stopped "
        "build's or run's DataLoader workers not included); peak RSS: the main process's"
    )
    for r in rows:
        if r.note:
            print(f"{r.stage}: {r.note}")


def one_epoch_cache(kdcache: list[str], common: list[str], args: argparse.Namespace, env: dict, registry: Path) -> Path:
    """The registry cache of 1 epoch of the folder (built once; the same command again is a reuse)."""
    from kdcache.testing.process_probe import probe

    cmd = [*kdcache, "build", *common, "--epochs", "1", "--batch-size", str(args.cache_batch_size), "--no-progress"]
    run = probe(cmd, env=env, timeout=args.cache_timeout)
    if not run.reached:
        raise SystemExit(f"the one-epoch cache's build failed:\n{run.tail(30)}")
    reused = "reused" in run.output
    where = next((line.split("finished: ", 1)[1] for line in run.output.splitlines() if "finished: " in line), None)
    if where is None:
        where = next(line.split("reused ", 1)[1] for line in run.output.splitlines() if "kdcache build: reused" in line)
    cache = Path(where.split(" (", 1)[0].strip())
    what = "reused from an earlier run" if reused else "built"
    print(f"cache   : {cache}: 1 epoch {what} in {run.seconds:,.0f} s (peak RSS {run.peak_rss / MB:,.0f} MB)")
    return cache


if __name__ == "__main__":
    main()
