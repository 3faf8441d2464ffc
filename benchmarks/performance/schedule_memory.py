"""Host memory of a build rank's work schedule at 2 and at 610 ImageNet epochs.

Each figure comes from a fresh process that imports the build's loop (torch included, as a build
process does), then lays out the schedule exactly as ``run_build`` and ``run_units`` do — every unit of
``--epochs`` epochs (``all_units``), this rank's share (``assign``), its pending units, the lazy
``BatchSchedule`` over them — and walks every batch as the DataLoader asks for it (``schedule[i]``, the
unit of batch i). It reports the process's peak RSS (``ru_maxrss``), its RSS after the imports, and
what tracemalloc counts for the schedule's own structures. ``--eager`` adds the schedule the build
laid out before it was lazy (``unit_batches`` and what ``run_units`` derived from it), for comparison.

    python benchmarks/performance/schedule_memory.py                         # ImageNet-1k, 2 and 610 epochs, 1 rank
    python benchmarks/performance/schedule_memory.py --epochs 2,610 --world 8 --batch-size 512
    python benchmarks/performance/schedule_memory.py --epochs 2 --eager      # the eager schedule, for comparison
    python benchmarks/performance/schedule_memory.py --samples 10000 --epochs 1,3 --no-walk  # smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

IMAGENET = 1_281_167


def _ru_maxrss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _traced(build) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = build()
        used = tracemalloc.get_traced_memory()[0] - before
        del held
    finally:
        tracemalloc.stop()
    return used


def child(args: argparse.Namespace, epochs: int) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np

    import kdcache.teacher_cache.teacher_pass.loop  # noqa: F401  (what a build process has imported)
    from kdcache.teacher_cache.teacher_pass.schedule import BatchSchedule, all_units, assign, unit_batches
    from kdcache.views.plan import num_slots_for

    baseline = _ru_maxrss_bytes()
    slots = num_slots_for(args.samples)
    unit_size = min(args.unit_size, slots)
    t0 = time.perf_counter()

    def lay_out():
        # run_build: every unit, this rank's share, less the committed ones (none here)
        mine = assign(all_units(epochs, slots, unit_size), 0, args.world)
        completed: set[tuple[int, int]] = set()
        pending = [u for u in mine if (u.epoch, u.index) not in completed]
        if args.eager:  # run_units before the schedule was lazy
            items, batches = unit_batches(pending, args.batch_size)
            work = [(int(items[b[0], 0]), items[b, 1]) for b in batches]
            unit_of_item = np.repeat(np.arange(len(pending)), [u.size // 2 for u in pending])
            return pending, (items, batches, work, unit_of_item)
        return pending, BatchSchedule(pending, args.batch_size)

    pending, schedule = lay_out()
    views = sum(u.size for u in pending)
    if args.eager:
        num_batches = len(schedule[1])
    else:
        num_batches = len(schedule)
        if args.walk:  # what the DataLoader's sampler, its workers and the main loop ask for, batch by batch
            for i in range(num_batches):
                schedule[i]
                schedule.unit_position(i)
    seconds = time.perf_counter() - t0
    peak = _ru_maxrss_bytes()
    del pending, schedule
    traced = _traced(lay_out)
    return {
        "epochs": epochs,
        "views": views,
        "batches": num_batches,
        "units": -(-slots // unit_size) * epochs,
        "baseline": baseline,
        "peak": peak,
        "traced": traced,
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=IMAGENET, help="dataset size [ImageNet-1k train]")
    ap.add_argument("--epochs", default="2,610", help="comma-separated epoch counts, one process each")
    ap.add_argument("--world", type=int, default=1, help="ranks; the figures are rank 0's")
    ap.add_argument("--unit-size", type=int, default=10240)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--eager", action="store_true", help="the eager schedule of before (unit_batches) instead")
    ap.add_argument(
        "--walk", action=argparse.BooleanOptionalAction, default=True, help="ask for every batch, as a build does"
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: measure this many epochs here
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args, args.child)))
        return

    from kdcache.testing.machine import machine_info

    print("\n".join(machine_info()))
    kind = "eager unit_batches" if args.eager else "lazy BatchSchedule"
    print(
        f"{args.samples:,} samples, unit size {args.unit_size:,}, batch {args.batch_size}, rank 0 of {args.world}, "
        f"{kind}{', every batch asked for' if args.walk and not args.eager else ''}; one fresh process per row"
    )
    rows = []
    for epochs in [int(x) for x in args.epochs.split(",") if x]:
        cmd = [sys.executable, __file__, *_without_epochs(sys.argv[1:]), "--child", str(epochs)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    mb = 1e6
    print(
        f"{'epochs':>7} {'views (rank 0)':>15} {'batches':>10} {'units':>7} {'schedule traced':>16} "
        f"{'RSS after imports':>18} {'peak RSS':>9} {'walk s':>7}"
    )
    for r in rows:
        print(
            f"{r['epochs']:>7,} {r['views']:>15,} {r['batches']:>10,} {r['units']:>7,} {r['traced'] / mb:>12.2f} MB "
            f"{r['baseline'] / mb:>15.1f} MB {r['peak'] / mb:>6.1f} MB {r['seconds']:>7.1f}"
        )
    for r in rows:
        print(
            f"schedule at {r['epochs']} epoch(s): {r['traced'] / mb:.2f} MB traced = {r['traced'] / r['views']:.4f} "
            f"B/view = {r['traced'] / max(r['units'] // args.world, 1):.0f} B per unit of the rank"
        )
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        change = (hi["peak"] - lo["peak"]) / lo["peak"]
        print(
            f"peak RSS, {hi['epochs']} vs {lo['epochs']} epochs: {hi['peak'] / mb:.1f} vs {lo['peak'] / mb:.1f} MB, "
            f"{change:+.1%} (goal: within 10%)"
        )


def _without_epochs(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--epochs":
            skip = True
            continue
        if a.startswith("--epochs="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    main()
