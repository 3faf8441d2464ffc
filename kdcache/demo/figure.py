"""The demo's picture (``OUT/demo.png``): the students' training curves and the views the teacher labelled.

Left, per epoch of seed 0's main student: validation top-1 and validation cross-entropy of the runs
``--kd none``, ``cached`` and ``online`` (from each run's metrics.jsonl), with the teacher's top-1 for
reference. Right: the first views of the cache's epoch 0, rendered as ``kdcache preview`` renders them
(the view engine with the cache's recipe and seed), captioned with the slot, the digit, the mixing
weight lam with the partner's digit, and the teacher's top class from the cache.

matplotlib is optional (``pip install 'kdcache[demo]'``): without it the demo says so and draws nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

PICTURE = "demo.png"
VIEWS = 8  # four mixing pairs: each pair sits in two adjacent columns
COLOURS = {"none": "#888888", "cached": "#1f77b4", "online": "#d62728"}


def curves(run_dir: Path) -> dict[str, list[float]]:
    """Per finished epoch of a run: epoch, val top-1 (model and EMA) and val loss, from metrics.jsonl."""
    out: dict[str, list[float]] = {"epoch": [], "top1": [], "top1_ema": [], "val_loss": []}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        entry = json.loads(line) if line.strip() else {}
        if "val" not in entry or "epoch" not in entry:
            continue
        out["epoch"].append(entry["epoch"])
        out["top1"].append(entry["val"]["top1"])
        out["top1_ema"].append(entry.get("val_ema", entry["val"])["top1"])
        out["val_loss"].append(entry["val"].get("loss", float("nan")))
    return out


def preview_views(cache: str, data: str, n: int = VIEWS) -> list[dict[str, Any]]:
    """The first ``n`` views of the cache's epoch 0 as the teacher saw them, with what a caption needs."""
    from kdcache.data.wds_source import open_source
    from kdcache.recipe import Recipe
    from kdcache.teacher_cache.store import open_cache
    from kdcache.views import ViewEngine

    reader = open_cache(cache)
    m = reader.manifest
    source = open_source(data)
    engine = ViewEngine(source, Recipe.from_dict(m.recipe).augment, m.seed)
    units: dict[int, Any] = {}
    views = []
    for pair in range(n // 2):
        r = engine.render_pair(0, pair)
        for k, slot in enumerate(r.slots):
            u, i = divmod(int(slot), m.unit_size)
            if u not in units:
                units[u] = reader.read_unit(0, u)
            rows = units[u]
            p = np.exp(rows.topk_logprob[i].astype(np.float64))
            top = int(np.argmax(p))
            views.append(
                {
                    "slot": int(slot),
                    "image": r.images[k],
                    "digit": source.classes[int(r.labels[k])],
                    "partner": source.classes[int(r.labels[1 - k])],
                    "lam": float(r.params[k].mix.lam),
                    "teacher": (m.class_names[int(rows.topk_class[i][top])], float(p[top])),
                }
            )
    return views


def write_figure(out: Path, summary: Mapping[str, Any], echo=print) -> Path | None:
    """Draw ``out/demo.png`` from a finished demo's summary (``DemoSummary.to_dict()``); None without matplotlib."""
    try:
        from matplotlib.figure import Figure  # Figure, not pyplot: no global state, no display needed
    except ImportError:
        echo("      (no picture: matplotlib is not installed; pip install 'kdcache[demo]' draws OUT/demo.png)")
        return None
    cfg = summary["config"]
    runs = {
        r["kd"]: Path(r["out_dir"])
        for r in summary["students"]
        if r["seed"] == 0 and r["student"] == cfg["student"] and not r.get("teachers")
    }
    fig = Figure(figsize=(13, 4.6), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, 6, width_ratios=[3, 3, 1, 1, 1, 1])
    acc, loss = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[:, 1])
    for kd in ("none", "cached", "online"):
        if kd not in runs:
            continue
        c = curves(runs[kd])
        style = {"color": COLOURS[kd], "marker": "o", "markersize": 3, "label": f"--kd {kd}"}
        acc.plot(c["epoch"], c["top1"], **style)
        loss.plot(c["epoch"], c["val_loss"], **style)
    teacher = summary["teacher"]
    acc.axhline(teacher["top1"], color="black", linestyle="--", linewidth=1, label=f"teacher {teacher['model']}")
    acc.set(title=f"{cfg['student']}, seed 0: val top-1", xlabel="epoch", ylabel="top-1 (%) on 300 val digits")
    acc.set_ylim(max(0.0, min(acc.get_ylim()[0], 80.0)), 100.5)
    acc.legend(loc="lower right", fontsize=8)
    loss.set(title="val cross-entropy", xlabel="epoch", ylabel="nats")
    loss.legend(loc="upper right", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    views = preview_views(summary["build"]["cache"], summary["data"]["train"])
    for i, v in enumerate(views):
        ax = fig.add_subplot(grid[i // 4, 2 + i % 4])
        ax.imshow(v["image"], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        name, p = v["teacher"]
        mix = f"λ {v['lam']:.2f}" + (f" + {v['partner']}" if v["lam"] < 1 else "")
        ax.set_title(f"slot {v['slot']}: {v['digit']}, {mix}\nteacher: {name} {p:.2f}", fontsize=8)
    fig.suptitle(
        f"kdcache demo, seed 0: {cfg['student']} without a teacher (grey), from the cache (blue), with the teacher "
        "online (red); right: the first views of the cache's epoch 0, each mixing pair in two adjacent columns",
        fontsize=9,
    )
    path = out / PICTURE
    fig.savefig(path)
    return path
