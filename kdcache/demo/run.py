"""``kdcache demo`` end to end: digits -> teacher -> one cache -> students (none, cached, online) -> table.

Output directory (``--out``)::

    data/{train,val}/<digit>/<row>.png   the digits ImageFolder (data-quick/ for --quick)
    teacher/<model>.pth                  the teacher's weights (timm key layout)
    cache/                               the cache, built once with the `digits` preset
    runs/seed<S>/<student>-<kd>/         kdcache train runs: metrics.jsonl, tb/, final.pt
    stages/*.json                        what each finished stage measured (reused on a rerun)
    summary.json, summary.md             the table below, as data and as text; summary.md also holds the
                                         per-seed table of docs/parity.md
    demo.png                             training curves of none / cached / online and the first views
                                         with captions (kdcache/demo/figure.py; needs matplotlib)

A rerun with the same options reuses every finished stage (and says so); a stage whose options
changed is redone. Every student of every seed reads the same cache: the views and the teacher's
soft labels are built once; a seed changes the student's initialisation (``train.seed``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from kdcache.demo.data import IMAGE_SIZE, VAL_EVERY, write_digits
from kdcache.demo.teacher import TeacherSpec, train_teacher
from kdcache.errors import UsageError
from kdcache.recipe import load_recipe
from kdcache.storage.atomic import write_atomic

PRESET = "digits"
MODES = ("none", "cached", "online")


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo-out")
    seeds: int = 1
    quick: bool = False
    teacher: str = "resnet10t"
    teacher_epochs: int = 6
    teacher2: str = "resnet14t"  # a second teacher, added to the same cache as a layer
    student: str = "test_resnet"
    student2: str = "test_efficientnet"
    epochs: int | None = None  # student epochs and cached epochs; None: the preset's
    topk: int = 10
    threads: int = 1
    workers: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file: give a directory for the demo's data, caches and runs")
        if self.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {self.seeds}")

    # quick: a smoke run (tiny data, one epoch each); its accuracies mean nothing
    @property
    def limit_train(self) -> int | None:
        return 256 if self.quick else None

    @property
    def data_dir(self) -> Path:
        return self.out / ("data-quick" if self.quick else "data")

    @property
    def student_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return 1 if self.quick else load_recipe(PRESET).train.epochs

    @property
    def teacher_spec(self) -> TeacherSpec:
        return TeacherSpec(model=self.teacher, epochs=1 if self.quick else self.teacher_epochs)

    @property
    def teacher2_spec(self) -> TeacherSpec:
        return TeacherSpec(model=self.teacher2, epochs=1 if self.quick else self.teacher_epochs, seed=1)

    @property
    def ensemble(self) -> str:
        """The `--teacher` of the student trained from both layers."""
        return f"{self.teacher},{self.teacher2}"


@dataclass
class StudentRow:
    seed: int
    student: str
    kd: str
    top1_model: float  # last epoch, the trained weights
    top1_ema: float  # last epoch, the EMA
    top1_final: float  # final.pt: uniform average of the best EMA checkpoints
    wall_s: float
    teacher_s: float  # teacher forwards inside this run (online only)
    out_dir: str
    reused: bool = False
    teachers: str = ""  # --teacher of a run from several layers ("" for the cache's own teacher)


@dataclass
class DemoSummary:
    config: dict[str, Any]
    data: dict[str, Any]
    teacher: dict[str, Any]
    build: dict[str, Any]
    teacher2: dict[str, Any] = field(default_factory=dict)
    add_teacher: dict[str, Any] = field(default_factory=dict)
    students: list[StudentRow] = field(default_factory=list)
    total_s: float = 0.0
    picture: str = ""  # OUT/demo.png, where matplotlib drew it

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["parity"] = parity(self.students, self.config["student"])
        return d


# ---- stage bookkeeping ---------------------------------------------------------------------------
def _stage_path(out: Path, key: str) -> Path:
    return out / "stages" / f"{key}.json"


def _load_stage(out: Path, key: str, config: dict[str, Any]) -> dict[str, Any] | None:
    path = _stage_path(out, key)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("config") == config else None


def _save_stage(out: Path, key: str, config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    path = _stage_path(out, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": config, **result}
    write_atomic(path, json.dumps(record, indent=1, default=str).encode())
    return record


def _forget_stage(out: Path, key: str) -> None:
    _stage_path(out, key).unlink(missing_ok=True)


# ---- the stages ----------------------------------------------------------------------------------
def stage_data(cfg: DemoConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    folders = write_digits(cfg.data_dir, IMAGE_SIZE, cfg.limit_train)
    return {
        "train": str(folders.train),
        "val": str(folders.val),
        "num_train": folders.num_train,
        "num_val": folders.num_val,
        "seconds": time.perf_counter() - t0,
    }


def stage_teacher(
    cfg: DemoConfig, data: dict[str, Any], echo: Callable[[str], None], second: bool = False
) -> dict[str, Any]:
    spec = cfg.teacher2_spec if second else cfg.teacher_spec
    key = "teacher2" if second else "teacher"
    weights = cfg.out / "teacher" / f"{spec.model}.pth"
    recipe = load_recipe(PRESET).train
    config = {
        "spec": dataclasses.asdict(spec),
        "data": data["train"],
        "num_train": data["num_train"],
        "eval_crop_pct": recipe.eval_crop_pct,
        "eval_interpolation": recipe.eval_interpolation,
    }
    saved = _load_stage(cfg.out, key, config)
    if saved is not None and weights.is_file():
        return {**saved, "reused": True}
    if second:  # a new second teacher means a new layer
        _forget_stage(cfg.out, "add_teacher")
        shutil.rmtree(cfg.out / "cache" / "layers", ignore_errors=True)
    else:  # a new teacher means a new cache
        _forget_stage(cfg.out, "build")
        shutil.rmtree(cfg.out / "cache", ignore_errors=True)
    r = train_teacher(
        data["train"],
        data["val"],
        weights,
        spec,
        eval_crop_pct=recipe.eval_crop_pct,
        eval_interpolation=recipe.eval_interpolation,
        log=echo if cfg.progress else (lambda _: None),
    )
    result = {"weights": str(r.weights), "model": r.model, "top1": r.top1, "top5": r.top5, "seconds": r.seconds}
    return {**_save_stage(cfg.out, key, config, result), "reused": False}


def _build_config(cfg: DemoConfig, data: dict[str, Any], teacher: str, weights: str, out: str, epochs: int):
    """`kdcache build --recipe digits` of one teacher into the demo's cache (its own store or a layer)."""
    from kdcache.teacher_cache.teacher_pass.config import BuildConfig

    return BuildConfig(
        teacher=teacher,
        data=data["train"],
        out=out,
        epochs=epochs,
        topk=cfg.topk,
        seed=0,
        recipe=PRESET,
        teacher_weights=weights,
        batch_size=128,
        workers=cfg.workers,
        progress=cfg.progress,
    )


def stage_build(cfg: DemoConfig, data: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    from kdcache.teacher_cache.teacher_pass.pipeline import prepare_build, run_build

    epochs = cfg.student_epochs  # one cached epoch per student epoch: no view is shown twice
    bc = _build_config(cfg, data, cfg.teacher, teacher["weights"], str(cfg.out / "cache"), epochs)
    config = {**dataclasses.asdict(bc), "progress": None, "teacher_top1": teacher["top1"]}
    saved = _load_stage(cfg.out, "build", config)
    if saved is not None and (cfg.out / "cache").is_dir():
        return {**saved, "reused": True}
    shutil.rmtree(cfg.out / "cache", ignore_errors=True)  # the demo's own cache, from other options
    t0 = time.perf_counter()
    built = run_build(bc, prepare_build(bc), bc.out)
    wall = time.perf_counter() - t0
    assert built is not None  # the demo runs in one process
    result = {
        "cache": bc.out,
        "epochs": epochs,
        "views": built.stats.views,
        "seconds": wall,
        "teacher_s": built.stats.teacher_seconds,
        "summary": built.summary(bc.teacher),
    }
    return {**_save_stage(cfg.out, "build", config, result), "reused": False}


def stage_add_teacher(
    cfg: DemoConfig, data: dict[str, Any], teacher2: dict[str, Any], build: dict[str, Any]
) -> dict[str, Any]:
    """`kdcache build --teacher T2 --out CACHE`: the second teacher's soft labels on the cache's views."""
    from kdcache.teacher_cache.teacher_pass.pipeline import prepare_build, run_build

    bc = _build_config(cfg, data, cfg.teacher2, teacher2["weights"], build["cache"], build["epochs"])
    config = {**dataclasses.asdict(bc), "progress": None, "teacher_top1": teacher2["top1"], "cache": build["seconds"]}
    saved = _load_stage(cfg.out, "add_teacher", config)
    if saved is not None and (Path(build["cache"]) / "layers" / saved.get("layer", "?")).is_dir():
        return {**saved, "reused": True}
    t0 = time.perf_counter()
    built = run_build(bc, prepare_build(bc), bc.out)
    wall = time.perf_counter() - t0
    assert built is not None and built.layer is not None  # one process; the cache holds another teacher
    result = {
        "layer": built.layer,
        "views": built.stats.views,
        "seconds": wall,
        "teacher_s": built.stats.teacher_seconds,
        "summary": built.summary(bc.teacher),
    }
    return {**_save_stage(cfg.out, "add_teacher", config, result), "reused": False}


def _recipe_file(cfg: DemoConfig, seed: int) -> Path:
    """The digits preset with the student's seed: `kdcache train` has no --seed, only --config."""
    recipe = load_recipe(PRESET)
    recipe = recipe.replace_train(seed=seed)
    path = cfg.out / "runs" / f"seed{seed}" / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe.dump_yaml())
    return path


def read_metrics(run_dir: Path) -> tuple[float, float, float]:
    """(last epoch's model top-1, last epoch's EMA top-1, final averaged top-1) from metrics.jsonl."""
    model = ema = final = math.nan
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if "val" in entry:
            model, ema = entry["val"]["top1"], entry["val_ema"]["top1"]
        if entry.get("event") == "final" and "val_avg" in entry:
            final = entry["val_avg"]["top1"]
    return model, ema, final


def stage_student(
    cfg: DemoConfig,
    data: dict[str, Any],
    teacher: dict[str, Any],
    build: dict[str, Any],
    seed: int,
    student: str,
    kd: str,
    teachers: str = "",
    echo: Callable[[str], None] = print,
) -> StudentRow:
    from kdcache.student.args import TrainArgs
    from kdcache.student.run import run_train

    name = f"{student}-{kd}" + ("-ensemble" if teachers else "")
    run_dir = cfg.out / "runs" / f"seed{seed}" / name
    args = TrainArgs(
        student=student,
        cache=build["cache"],
        out=str(run_dir),
        val_data=data["val"],
        kd=kd,
        teacher=teachers or None,
        teacher_weights=teacher["weights"] if kd == "online" else None,
        config=str(_recipe_file(cfg, seed)),
        epochs=cfg.student_epochs,
        workers=cfg.workers,
        replay_check=16,
        progress=cfg.progress,
    )
    key = f"seed{seed}-{name}"
    config = {**dataclasses.asdict(args), "progress": None, "cache_built": build.get("seconds")}
    saved = _load_stage(cfg.out, key, config)
    if saved is not None and (run_dir / "final.pt").is_file():
        return StudentRow(**{**saved["row"], "reused": True})
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished or outdated run of the demo's own
    t0 = time.perf_counter()
    # The run's start lines and epoch lines go under the stage's heading, so each block says which run it is.
    result = run_train(
        args,
        on_start=lambda lines: echo("\n".join("      " + line for line in lines)),
        on_epoch=lambda line: echo("      " + line),
    ).result
    wall = time.perf_counter() - t0
    if result is None or not result.completed:
        raise RuntimeError(f"student run {run_dir} did not complete")
    m, e, f = read_metrics(run_dir)
    row = StudentRow(seed, student, kd, m, e, f, wall, result.teacher_seconds, str(run_dir), teachers=teachers)
    _save_stage(cfg.out, key, config, {"row": dataclasses.asdict(row)})
    return row


# ---- orchestration -------------------------------------------------------------------------------
def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoSummary:
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        n_stages = 6 + cfg.seeds * 5
        stage = 0

        def head(text: str) -> None:
            nonlocal stage
            stage += 1
            echo(f"[{stage}/{n_stages}] {text}")

        head(f"data: scikit-learn digits -> {cfg.data_dir}")
        data = stage_data(cfg)
        echo(
            f"      {data['num_train']} train / {data['num_val']} val images (every {VAL_EVERY}th row to val), "
            f"RGB PNG {IMAGE_SIZE} px ({data['seconds']:.1f} s)"
        )
        spec = cfg.teacher_spec
        head(f"teacher: {spec.model} from scratch, {spec.epochs} epoch(s), plain CE, light affine augmentation")
        teacher = stage_teacher(cfg, data, echo)
        echo(f"      val top-1 {teacher['top1']:.2f}% ({teacher['seconds']:.0f} s){_reused(teacher)}")
        head(
            f"build: `kdcache build --recipe {PRESET}` with the teacher, {cfg.student_epochs} epoch(s) of views "
            f"-> {cfg.out / 'cache'}"
        )
        build = stage_build(cfg, data, teacher)
        if not build["reused"]:
            echo("\n".join("      " + line.strip() for line in build["summary"].splitlines()))
        echo(
            f"      {build['views']} views, teacher forward {build['teacher_s']:.1f} s of {build['seconds']:.0f} s"
            f"{_reused(build)}"
        )
        spec2 = cfg.teacher2_spec
        head(f"second teacher: {spec2.model} from scratch, {spec2.epochs} epoch(s), seed {spec2.seed}")
        teacher2 = stage_teacher(cfg, data, echo, second=True)
        echo(f"      val top-1 {teacher2['top1']:.2f}% ({teacher2['seconds']:.0f} s){_reused(teacher2)}")
        head(f"add a teacher: `kdcache build --teacher {cfg.teacher2} --out {build['cache']}` (a layer)")
        added = stage_add_teacher(cfg, data, teacher2, build)
        if not added["reused"]:
            echo("\n".join("      " + line.strip() for line in added["summary"].splitlines()))
        echo(
            f"      {added['views']} views re-rendered from their stored params, teacher forward "
            f"{added['teacher_s']:.1f} s of {added['seconds']:.0f} s{_reused(added)}"
        )
        summary = DemoSummary(dataclasses.asdict(cfg), data, teacher, build, teacher2, added)
        summary.config["out"] = str(cfg.out)
        for seed in range(cfg.seeds):
            runs = [(cfg.student, kd, "") for kd in MODES] + [(cfg.student2, "cached", "")]
            runs.append((cfg.student, "cached", cfg.ensemble))
            for student, kd, teachers in runs:
                flag = f" --teacher {teachers}" if teachers else ""
                head(f"student seed {seed}: `kdcache train --student {student} --kd {kd}{flag}`")
                row = stage_student(cfg, data, teacher, build, seed, student, kd, teachers, echo)
                summary.students.append(row)
                extra = f", teacher forward {row.teacher_s:.1f} s" if kd == "online" else ""
                echo(
                    f"      {run_name(row)} -> {row.out_dir}: top-1 model {row.top1_model:.2f}% / EMA "
                    f"{row.top1_ema:.2f}% / averaged {row.top1_final:.2f}% ({row.wall_s:.0f} s{extra})"
                    f"{' (reused)' if row.reused else ''}"
                )
        head("picture: training curves and the first views of the cache")
        from kdcache.demo.figure import write_figure

        picture = write_figure(cfg.out, summary.to_dict(), echo)
        summary.picture = str(picture or "")
        if picture is not None:
            echo(f"      wrote {picture}")
        summary.total_s = time.perf_counter() - t_start
        write_summary(cfg.out, summary)
        return summary
    finally:
        torch.set_num_threads(threads)


def run_name(r: StudentRow) -> str:
    """The run a row of the table is: ``seed 0 test_resnet --kd cached [--teacher T1,T2]``."""
    return f"seed {r.seed} {r.student} --kd {r.kd}" + (f" --teacher {r.teachers}" if r.teachers else "")


def _reused(stage: dict[str, Any]) -> str:
    return " (reused from an earlier run)" if stage.get("reused") else ""


# ---- reporting -----------------------------------------------------------------------------------
def parity(rows: list[StudentRow], student: str) -> dict[str, Any]:
    """Means over seeds of the main student's final (averaged EMA) top-1 per KD mode."""
    by_mode: dict[str, list[float]] = {}
    for r in rows:
        if r.student == student and not r.teachers:
            by_mode.setdefault(r.kd, []).append(r.top1_final)
    means = {k: statistics.fmean(v) for k, v in by_mode.items() if v}
    out: dict[str, Any] = {"student": student, "seeds": len(by_mode.get("cached", [])), "mean_top1": means}
    if "cached" in means and "online" in means:
        out["cached_minus_online_pp"] = means["cached"] - means["online"]
    if "cached" in means and "none" in means:
        out["cached_minus_none_pp"] = means["cached"] - means["none"]
    return out


def format_table(s: DemoSummary) -> str:
    cfg = s.config
    W = 62  # the run column: the ensemble's --teacher list is long
    t, b = s.teacher, s.build
    lines = [
        f"kdcache demo: scikit-learn digits, {s.data['num_train']} train / {s.data['num_val']} val, "
        f"{IMAGE_SIZE} px, preset `{PRESET}`, {cfg['seeds']} seed(s), {cfg['threads']} torch thread(s)"
        + ("  [--quick: smoke run, accuracies mean nothing]" if cfg["quick"] else ""),
        "",
        f"{'run':<{W}} {'top-1 model':>11} {'EMA':>7} {'final':>7} {'wall s':>7} {'teacher s':>10}",
        f"{'teacher ' + t['model'] + ' (plain CE)':<{W}} {t['top1']:>11.2f} {'':>7} {'':>7} "
        f"{t['seconds']:>7.0f} {'':>10}",
        f"{'build cache (' + str(b['epochs']) + ' ep, ' + str(b['views']) + ' views)':<{W}} {'':>11} {'':>7} "
        f"{'':>7} {b['seconds']:>7.0f} {b['teacher_s']:>10.1f}",
    ]
    t2, a = s.teacher2, s.add_teacher
    if t2 and a:
        lines += [
            f"{'teacher ' + t2['model'] + ' (plain CE)':<{W}} {t2['top1']:>11.2f} {'':>7} {'':>7} "
            f"{t2['seconds']:>7.0f} {'':>10}",
            f"{'add ' + t2['model'] + ' to the cache (a layer)':<{W}} {'':>11} {'':>7} {'':>7} "
            f"{a['seconds']:>7.0f} {a['teacher_s']:>10.1f}",
        ]
    for r in s.students:
        name = run_name(r)
        lines.append(
            f"{name:<{W}} {r.top1_model:>11.2f} {r.top1_ema:>7.2f} {r.top1_final:>7.2f} {r.wall_s:>7.0f} "
            f"{(f'{r.teacher_s:.1f}' if r.kd == 'online' else '0'):>10}"
        )
    p = parity(s.students, cfg["student"])
    means = p["mean_top1"]
    lines += [
        "",
        "top-1 in % on the 300 val digits; model / EMA: last epoch; final: average of the best EMA checkpoints "
        "(final.pt). teacher s: wall time of teacher forwards.",
        f"mean final top-1 of {cfg['student']} over {p['seeds']} seed(s): "
        + ", ".join(f"--kd {k} {v:.2f}%" for k, v in means.items()),
    ]
    if "cached_minus_online_pp" in p:
        lines.append(
            f"cached - online: {p['cached_minus_online_pp']:+.2f} pp;  "
            f"cached - none: {p['cached_minus_none_pp']:+.2f} pp"
        )
    online = [r for r in s.students if r.kd == "online"]
    if online:
        per_run = statistics.fmean(r.teacher_s for r in online)
        lines.append(
            f"teacher time: build once {b['teacher_s']:.1f} s of forwards ({b['seconds']:.0f} s build) for any number "
            f"of students; online KD spends {per_run:.1f} s of forwards in every student run "
            f"({len(online)} online run(s) here: {sum(r.teacher_s for r in online):.1f} s)"
        )
    lines += [
        *([f"picture: {s.picture} (training curves, the first views of the cache)"] if s.picture else []),
        f"per-seed table (docs/parity.md): {Path(cfg['out']) / 'summary.md'}",
        f"TensorBoard: tensorboard --logdir {Path(cfg['out']) / 'runs'}",
        f"cache: {b['cache']}  (kdcache info {b['cache']})",
        f"total demo wall time: {s.total_s:.0f} s",
    ]
    return "\n".join(lines)


def parity_markdown(s: DemoSummary) -> str:
    """Per-seed final top-1 of every run, and the means: the table of docs/parity.md."""
    cfg = s.config
    main, second = cfg["student"], cfg["student2"]
    ensemble = f"{cfg['teacher']},{cfg['teacher2']}"
    # (student, kd, --teacher): the ensemble column is the main student, cached, from both layers
    cols = [(main, kd, "") for kd in MODES] + [(second, "cached", ""), (main, "cached", ensemble)]
    by = {(r.seed, r.student, r.kd, r.teachers): r for r in s.students}
    names = [f"{m} {kd}" + (" (both teachers)" if t else "") for m, kd, t in cols]
    head = ["seed", *names, "cached - online", "cached - none", "online run: teacher s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    seeds = sorted({r.seed for r in s.students})
    for seed in seeds:
        vals = [by.get((seed, *col)) for col in cols]
        tops = [f"{v.top1_final:.2f}" if v else "" for v in vals]
        c, o, n = (by.get((seed, main, kd, "")) for kd in ("cached", "online", "none"))
        d_on = f"{c.top1_final - o.top1_final:+.2f}" if c and o else ""
        d_none = f"{c.top1_final - n.top1_final:+.2f}" if c and n else ""
        lines.append("| " + " | ".join([str(seed), *tops, d_on, d_none, f"{o.teacher_s:.1f}" if o else ""]) + " |")
    means = []
    for col in cols:
        v = [r.top1_final for r in s.students if (r.student, r.kd, r.teachers) == col]
        means.append(f"**{statistics.fmean(v):.2f}**" if v else "")
    p = parity(s.students, main)
    d_on = f"**{p['cached_minus_online_pp']:+.2f}**" if "cached_minus_online_pp" in p else ""
    d_none = f"**{p['cached_minus_none_pp']:+.2f}**" if "cached_minus_none_pp" in p else ""
    online = [r.teacher_s for r in s.students if r.kd == "online"]
    lines.append(
        "| " + " | ".join(["mean", *means, d_on, d_none, f"{statistics.fmean(online):.1f}" if online else ""]) + " |"
    )
    return "\n".join(lines)


def write_summary(out: Path, s: DemoSummary) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s.to_dict(), indent=1, default=str))
    (out / "summary.md").write_text("```\n" + format_table(s) + "\n```\n\n" + parity_markdown(s) + "\n")
    (out / "demo-config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(s.config, default=str))))
