"""Host memory of a build rank's work schedule, which ``run_units`` builds up front.

Measures, with tracemalloc, what ``unit_batches`` allocates for one rank's share of ``--epochs``
epochs of ``--samples`` samples (the (epoch, pair) item array plus the per-batch index lists), and
reports bytes per view of the share. docs/scale.md multiplies it out for the seed recipe.

    python benchmarks/performance/schedule_memory.py                        # ImageNet-1k, 2 epochs, 1 rank
    python benchmarks/performance/schedule_memory.py --epochs 4 --world 8 --batch-size 512
"""

from __future__ import annotations

import argparse
import tracemalloc

from kdcache.teacher_cache.teacher_pass.schedule import all_units, assign, unit_batches
from kdcache.views.plan import num_slots_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_281_167)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--world", type=int, default=1, help="ranks; the figure is for rank 0's share")
    ap.add_argument("--unit-size", type=int, default=10240)
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args()
    slots = num_slots_for(args.samples)
    units = assign(all_units(args.epochs, slots, min(args.unit_size, slots)), 0, args.world)
    views = sum(u.size for u in units)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    schedule = unit_batches(units, args.batch_size)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    used = after - before
    print(
        f"{args.samples:,} samples, {args.epochs} epoch(s), rank 0 of {args.world}: {views:,} views, "
        f"{len(schedule[1]):,} batches of up to {args.batch_size} views"
    )
    print(f"schedule: {used / 1e6:.1f} MB = {used / views:.1f} B/view ({2 * used / views:.1f} B/pair)")


if __name__ == "__main__":
    main()
