"""Distillation parity where k < C: online KD vs. cached top-k KD vs. no KD, real 1000-class teacher.

Views: kdcache's view engine (seed recipe, 224 px, RandAugment, Mixup/CutMix pairs) over
label_fidelity.py's real photos (``kdcache.testing.photos``), each filed under a WordNet-id folder:
photo set A, view seed 1 (train); held out: set A under view seed 3 (fresh views of the training
photos) and set B, view seed 2 (photos never trained on). Rendered once; the teacher
(tf_efficientnet_lite0, ImageNet weights, ``kdcache.testing.real_teacher``) runs once on them in fp32
and its full logits are kept, with the uint8 views, in ``--views-cache`` (npz), so reruns skip both.

Every way trains the same student (timm ``--student``, 1000 classes, from the same init for a given
seed) on the same views, downscaled once to ``--px`` with torch bilinear interpolation (antialias),
in the same batch order, with kdcache's own loss (``KDLoss``: 0.8 KL + 0.2 CE, T 1, smoothing 0.1);
only the teacher target differs:

- ``online``: ``TeacherTarget.from_logits`` (the teacher's full softmax);
- ``topK``: ``TeacherTarget.from_topk`` of ``logits_to_topk(logits, K)`` (the cache's fp16 top-K,
  the leftover mass spread evenly over the other classes);
- ``topK+tailM``: the same of ``logits_to_topk(logits, K, M)``: format version 2's top-K plus the next
  M classes at 4-bit log-probs, exactly the rows a ``--format-version 2 --tail-classes M`` cache gives
  the trainer; ``v2`` is ``top10+tail10`` (the default tail);
- ``topK+drawM``: format version 3's rows, exactly what a ``--format-version 3 --topk K --draws M`` cache
  gives the trainer: ``logits_to_topk(logits, K)``, then ``systematic_draws`` of M classes from
  ``log_softmax(logits)`` outside the K exact ones, with the offsets ``draw_uniforms(seed, epoch, slots)``,
  then ``with_draws`` (each drawn class carries rest/M, a class drawn n times n·rest/M). The build keys
  the offsets by (view seed, epoch, slot); here they are keyed by the training set's view seed (1),
  epoch 0 and the training view's index 0..N-1 as its slot, so each of the N views gets its own offset;
- ``labels`` (zero stored bytes beyond top-10): the fp16 top-10 kept, the rest of the mass put on the
  view's own mixed labels instead of spread evenly: lambda on its own label, 1 - lambda on its pair
  partner's (views 2i and 2i+1 are mix(A, B, lambda) and mix(B, A, lambda): the partner of view i is
  i ^ 1, the ``yb`` the loss uses), through the same ``TeacherTarget.from_topk`` (a label that is one of
  the top-10 gets its share added to it);
- ``pca``: top-10 + PCA tail (``kdcache.testing.pca_tail``, rank 16, int4, fitted on the training views);
- ``none``: CE on the mixed, smoothed labels only (``KDLoss`` without a teacher: weight 1.0).

Labels are the photos' WordNet folders mapped to the teacher's ImageNet indices
(``class_map``, as ``kdcache build`` does). Reported on each held-out set, mean ± sample std over
seeds: top-1 agreement of student and teacher, KL(teacher || student) (nats, teacher full softmax).
With ``online`` among the ways, also each way's KL(heldA) gap to online per seed (same seed: same init
and batches) and its mean ± std. For every way with a target, its **bias**: the L1 norm of
mean(target) - mean(teacher softmax) over the first V training views, V = 512 and all of them (4096 in
the documented run): what the student is pulled towards on average, against the teacher. An unbiased
target's figure falls as 1/sqrt(V); a biased one's stays. ``--bytes FILE`` (the JSON that
``label_fidelity.py --disk-views`` writes: B/view of a real zarr cache of these very training views per
way) adds a B/view column. ``--results FILE`` keeps every (seed, way) run's figures (JSON lines, keyed by
the settings and a hash of the training logits) and skips those already there: the runs are deterministic
on a CPU, so an interrupted run resumes and several processes (say one per seed) can share the work.

    python benchmarks/studies/kd_parity.py [--seeds 3] [--steps 64] [--ways online,top10,v2,top100,none]
    python benchmarks/studies/kd_parity.py --ways online,top10,top5+draw32,labels,none [--bytes FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdcache.data import ImageFolderSource
from kdcache.recipe import load_recipe
from kdcache.student.loss import KDLoss
from kdcache.student.targets import TeacherTarget
from kdcache.teacher_cache.store.draws import draw_uniforms, systematic_draws, with_draws
from kdcache.teacher_cache.store.topk import logits_to_topk
from kdcache.teacher_cache.teacher_pass.classmap import class_map
from kdcache.testing import pca_tail
from kdcache.testing.photos import SET_A, SET_B, photo_set_layout, sample_photos, write_photos
from kdcache.testing.real_teacher import RealTeacherUnavailable, load_efficientnet_lite0
from kdcache.views import ViewEngine

SETS = {"train": ("A", 1), "heldA": ("A", 3), "heldB": ("B", 2)}  # name -> (photo set, view seed)
DRAW_SEED = SETS["train"][1]  # format 3's offsets: keyed by the training views' view seed
BIAS_VIEWS = (512,)  # bias is reported over the first 512 training views and over all of them
# Kept per view in --views-cache: uint8 NHWC pixels, teacher fp32 logits, ImageNet label, the view's own
# lambda, its param record and its digest (the last two as the cache stores them, for the bytes of a cache).
FIELDS = ("images", "logits", "y", "lam", "params", "digest")


def render(root: Path, n_views: int, seed: int, teacher: torch.nn.Module, to_imagenet: np.ndarray) -> dict:
    """n_views views (successive epochs, whole pairs), uint8 NHWC; teacher fp32 logits; ImageNet labels."""
    engine = ViewEngine(ImageFolderSource(root), load_recipe("seed").augment, seed)
    out: dict[str, list] = {k: [] for k in FIELDS}
    epoch = 0
    while sum(len(x) for x in out["logits"]) < n_views:
        plan = engine.plan(epoch)
        b = engine.render_batch(epoch, np.arange(plan.sample_ids.shape[0] // 2))
        x = b["images"].permute(0, 3, 1, 2).float().div_(255).sub_(0.5).div_(0.5)
        with torch.inference_mode():
            out["logits"].append(teacher(x).float().numpy())
        out["images"].append(b["images"].numpy().copy())
        out["y"].append(to_imagenet[b["labels"]])
        out["lam"].append(b["lam"])
        out["params"].append(b["records"])
        out["digest"].append(b["digests"])
        epoch += 1
    return {k: np.concatenate(v)[:n_views] for k, v in out.items()}


def load_views(path: Path, n: dict[str, int]) -> dict[str, dict[str, np.ndarray]]:
    if path.exists():
        d = np.load(path)
        if all(f"{s}_{k}" in d and d[f"{s}_{k}"].shape[0] >= n[s] for s in SETS for k in FIELDS):
            print(f"views and teacher logits from {path}", flush=True)
            return {s: {k: d[f"{s}_{k}"][: n[s]] for k in FIELDS} for s in SETS}
    t0 = time.perf_counter()
    try:
        teacher = load_efficientnet_lite0()
    except RealTeacherUnavailable as e:
        sys.exit(f"kd_parity.py: {e}")
    images, data = sample_photos(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for folders, name in ((SET_A, "A"), (SET_B, "B")):
            write_photos(Path(tmp) / name, photo_set_layout(folders), images)
        for s, (photo_set, seed) in SETS.items():
            root = Path(tmp) / photo_set
            cmap = class_map(ImageFolderSource(root).classes, teacher).as_array()
            data[s] = render(root, n[s], seed, teacher, cmap)
            print(f"{s}: {n[s]} views of set {photo_set}, view seed {seed}", flush=True)
    np.savez(path, **{f"{s}_{k}": v for s, d in data.items() for k, v in d.items()})
    print(f"rendered and ran the teacher in {time.perf_counter() - t0:.0f} s", flush=True)
    return data


def to_input(images: np.ndarray, px: int) -> torch.Tensor:
    """uint8 NHWC 224 px -> float NCHW px, normalised with mean/std 0.5 (the same for every way)."""
    outs = []
    for i in range(0, len(images), 256):
        x = torch.from_numpy(images[i : i + 256]).permute(0, 3, 1, 2).float().div_(255)
        x = F.interpolate(x, size=(px, px), mode="bilinear", antialias=True, align_corners=False)
        outs.append(x.sub_(0.5).div_(0.5))
    return torch.cat(outs)


def targets(way: str, views: dict[str, np.ndarray], fit_logits: np.ndarray) -> torch.Tensor | None:
    """Teacher log-probs (N, C) float32 of one way on ``views`` (logits, y, lam), or None (no KD)."""
    logits = views["logits"]
    z = torch.from_numpy(logits)
    n, c = z.shape
    if way == "none":
        return None
    if way == "online":
        return TeacherTarget.from_logits(z).log_probs
    if way == "v2":
        way = "top10+tail10"
    m = re.fullmatch(r"top(\d+)(?:\+tail(\d+))?", way)
    if m:
        lp, cls = logits_to_topk(z, int(m[1]), int(m[2] or 0))
        return TeacherTarget.from_topk(lp, cls, c).log_probs
    m = re.fullmatch(r"top(\d+)\+draw(\d+)", way)
    if m:
        # What a --format-version 3 build stores (teacher_pass/runner.py): the draws come from the fp32
        # log-softmax of the same logits, offsets keyed by (view seed, epoch 0, the view's index as slot).
        lp, cls = (t.numpy() for t in logits_to_topk(z, int(m[1])))
        full = torch.log_softmax(z.float(), dim=-1).numpy()
        u = draw_uniforms(DRAW_SEED, 0, np.arange(n))
        drawn = systematic_draws(full, cls, int(m[2]), u)
        lp, cls = with_draws(lp, cls, drawn.astype(cls.dtype))
        return TeacherTarget.from_topk(torch.from_numpy(lp), torch.from_numpy(cls), c).log_probs
    if way == "labels":
        lp, cls = logits_to_topk(z, 10)
        rest = (1.0 - lp.double().exp().sum(1)).clamp_min(0.0)
        lam = torch.from_numpy(views["lam"]).double()
        y = torch.from_numpy(views["y"]).long()
        partner = y.view(-1, 2).flip(1).reshape(-1)  # view i's partner is view i ^ 1
        extra = torch.log(torch.stack([lam * rest, (1 - lam) * rest], 1)).float()  # lambda 1: -inf, no mass
        lp_all = torch.cat([lp.float(), extra], 1)
        cls_all = torch.cat([cls.long(), torch.stack([y, partner], 1)], 1)
        return TeacherTarget.from_topk(lp_all, cls_all, c).log_probs
    if way == "pca":
        model = pca_tail.fit(fit_logits, r=16, bits=4, k=10)
        q = pca_tail.decode(pca_tail.encode(logits, model, k=10), model, c)
        return torch.log(torch.from_numpy(np.asarray(q, np.float32)))
    raise ValueError(way)


def bias(tlp: torch.Tensor, logits: np.ndarray, v: int) -> float:
    """L1 norm of mean(target) - mean(teacher softmax) over the first v views."""
    target = tlp[:v].double().exp().mean(0)
    teacher = torch.softmax(torch.from_numpy(logits[:v]).double(), 1).mean(0)
    return float((target - teacher).abs().sum())


def train(args, x, y, lam, tlp, seed: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(args.student, num_classes=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warm = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / (args.steps - warm)))
    )
    loss_fn = KDLoss(1000)
    pairs = len(x) // 2
    g = torch.Generator().manual_seed(seed)  # batch order: per seed, the same for every way
    order = torch.cat([torch.randperm(pairs, generator=g) for _ in range(-(-args.steps * args.batch // len(x)) + 1)])
    ya, yb = torch.from_numpy(y), torch.from_numpy(y).view(-1, 2).flip(1).reshape(-1)
    lam_t = torch.from_numpy(lam)
    model.train()
    for step in range(args.steps):
        p = order[step * args.batch // 2 : (step + 1) * args.batch // 2]
        idx = torch.stack([2 * p, 2 * p + 1], 1).reshape(-1)  # whole pairs, as the trainer's batches
        teacher = None if tlp is None else TeacherTarget(tlp[idx])
        loss = loss_fn(model(x[idx]), ya[idx], yb[idx], lam_t[idx], teacher).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, logits: np.ndarray) -> tuple[float, float]:
    s = torch.cat([model(x[i : i + 128]) for i in range(0, len(x), 128)]).float()
    lt = torch.log_softmax(torch.from_numpy(logits).double(), 1)
    ls = torch.log_softmax(s.double(), 1)
    agree = (s.argmax(1) == lt.argmax(1)).double().mean().item()
    kl = (lt.exp() * (lt - ls)).sum(1).mean().item()
    return 100 * agree, kl


def run_key(args, train_logits: np.ndarray) -> str:
    """What a run's figures depend on besides (seed, way): the settings and the training views' logits."""
    import hashlib

    settings = [args.student, args.px, args.steps, args.batch, args.lr, args.eval_views, args.threads]
    digest = hashlib.blake2b(np.ascontiguousarray(train_logits).tobytes(), digest_size=8).hexdigest()
    return json.dumps(settings) + f" logits {len(train_logits)} {digest}"


def load_results(path: str | None, key: str) -> dict[tuple[int, str], dict[str, float]]:
    """(seed, way) -> figures of runs kept in ``--results`` with the same key (others are ignored)."""
    out: dict[tuple[int, str], dict[str, float]] = {}
    if path and Path(path).exists():
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            if row.pop("key") == key:
                out[row.pop("seed"), row.pop("way")] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-views", type=int, default=1024)
    ap.add_argument("--eval-views", type=int, default=256, help="per held-out set")
    ap.add_argument("--views-cache", default=os.path.join(tempfile.gettempdir(), "kdcache_kdparity_views.npz"))
    ap.add_argument("--student", default="resnet10t")
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--ways", default="online,top10,top100,none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bytes", help="JSON of label_fidelity.py --disk-json: B/view on disk per way (a column)")
    ap.add_argument(
        "--results", help="JSON lines: each (seed, way) run is appended; runs already there (same settings and "
        "views) are not run again, so an interrupted run resumes and separate runs can share the work",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    assert args.batch % 2 == 0

    n = {"train": args.train_views, "heldA": args.eval_views, "heldB": args.eval_views}
    data = load_views(Path(args.views_cache), n)
    tr = data["train"]
    x = to_input(tr["images"], args.px)
    evals = {s: (to_input(data[s]["images"], args.px), data[s]["logits"]) for s in ("heldA", "heldB")}
    ways = args.ways.split(",")
    tl = {w: targets(w, tr, tr["logits"]) for w in ways}
    print(
        f"train {len(x)} views (set A, view seed 1), {args.steps} steps x {args.batch} "
        f"({args.steps * args.batch / len(x):.1f} passes); student {args.student} at {args.px} px; "
        f"held out: heldA = set A, view seed 3 ({n['heldA']}), heldB = set B, view seed 2 ({n['heldB']})",
        flush=True,
    )
    key = run_key(args, tr["logits"])
    res: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    for seed in range(args.seed0, args.seed0 + args.seeds):
        for w in ways:
            t0 = time.perf_counter()
            done = load_results(args.results, key)  # read before each run: another process may have added it
            if (seed, w) in done:
                r, note = done[seed, w], f"from {args.results}"
            else:
                model = train(args, x, tr["y"], tr["lam"], tl[w], seed)
                r = {}
                for s, (xe, ze) in evals.items():
                    r[f"{s}_agree"], r[f"{s}_kl"] = evaluate(model, xe, ze)
                note = f"{time.perf_counter() - t0:.0f} s"
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps({"key": key, "seed": seed, "way": w, **r}) + "\n")
            res[w].append(r)
            print(f"seed {seed} {w:7s} " + " ".join(f"{k} {v:.3f}" for k, v in r.items()) + f"  {note}", flush=True)

    def ms(vals: list[float], fmt: str) -> str:
        v = np.asarray(vals)
        return f"{v.mean():{fmt}} ± {v.std(ddof=1) if len(v) > 1 else 0.0:{fmt}}"

    print()
    print("| way | agree % heldA | KL heldA | agree % heldB | KL heldB |")
    print("|---|---:|---:|---:|---:|")
    for w in ways:
        rs = res[w]
        print(
            f"| {w} | {ms([r['heldA_agree'] for r in rs], '.1f')} | {ms([r['heldA_kl'] for r in rs], '.3f')} "
            f"| {ms([r['heldB_agree'] for r in rs], '.1f')} | {ms([r['heldB_kl'] for r in rs], '.3f')} |"
        )
    print(f"(mean ± sample std over {args.seeds} seed(s); per-seed rows above)")

    views = [v for v in BIAS_VIEWS if v < len(x)] + [len(x)]
    on_disk = json.loads(Path(args.bytes).read_text()) if args.bytes else {}
    print()
    head = ["way"] + (["B/view on disk"] if args.bytes else [])
    if "online" in ways:
        head += ["KL gap heldA mean ± std", "per seed", "agree % heldA"]
    head += [f"bias V={v}" for v in views]
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    base = [r["heldA_kl"] for r in res.get("online", [])]
    for w in ways:
        cells = [w]
        if args.bytes:
            b = on_disk.get("v2" if w == "top10+tail10" else w)
            cells.append("—" if b is None else f"{b:.1f}")
        if "online" in ways:
            gaps = [r["heldA_kl"] - o for r, o in zip(res[w], base, strict=True)]
            spread = np.std(gaps, ddof=1) if len(gaps) > 1 else 0.0
            cells.append(f"{np.mean(gaps):+.3f} ± {spread:.3f}")
            cells.append(" / ".join(f"{g:+.3f}" for g in gaps))
            cells.append(ms([r["heldA_agree"] for r in res[w]], ".1f"))
        cells += ["—" if tl[w] is None else f"{bias(tl[w], tr['logits'], v):.4f}" for v in views]
        print("| " + " | ".join(cells) + " |")
    print(
        "(KL gap: KL(heldA) of the way minus online's, same seed; bias: L1 norm of mean(target) - mean(teacher "
        "softmax) over the first V training views"
        + ("; B/view: a real zarr cache of the training views, label_fidelity.py --disk-views" if args.bytes else "")
        + ")"
    )


if __name__ == "__main__":
    main()
