"""The Trainer: modes, bit-identical resume, run directory contents, refusal of bad runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import yaml

from kdcache.models.online_teacher import OnlineTeacher
from kdcache.recipe import Recipe
from kdcache.student.batch import BatchError, TrainBatch
from kdcache.student.checkpoint import load_checkpoint
from kdcache.student.runlog import read_metrics
from kdcache.student.schedule import lr_at
from kdcache.student.trainer import RunOptions, Trainer, TrainError
from kdcache.testing.synthetic_batches import SyntheticBatchSource

SIZE, C, G = 16, 10, 8  # view size, classes, global batch
SLOTS = 16  # -> 2 steps per epoch, 4 updates per run


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster, and immune to a busy 2-core box (xdist -n 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe(**train) -> Recipe:
    base = dict(
        model="test_resnet",  # has BatchNorm: buffers and num_batches_tracked take part
        global_batch=G,
        epochs=2,
        cosine_epochs=2,
        warmup_epochs=1,
        cooldown_epochs=0,
        average_top=2,
        log_every=1,
        seed=7,
    )
    base.update(train)
    return Recipe().replace_augment(image_size=SIZE).replace_train(**base)


def _source(topk: int | None = 5) -> SyntheticBatchSource:
    return SyntheticBatchSource(SLOTS, G, SIZE, C, seed=1, topk=topk)


def _val():
    src = SyntheticBatchSource(8, 8, SIZE, C, seed=99)
    return [(b.images, b.y_a) for b in src.epoch_batches(0)]


def _trainer(out: Path, recipe: Recipe | None = None, **opts) -> Trainer:
    mode = opts.pop("mode", "cached")
    teacher = opts.pop("teacher", None)
    options = RunOptions(out, mode=mode, progress=False, tensorboard=opts.pop("tensorboard", False), **opts)
    return Trainer(recipe or _recipe(), C, options, teacher=teacher, val_batches=_val(), run_info={"test": True})


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    for pid, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k])), (pid, k)


def test_full_run_writes_the_run_directory(tmp_path):
    tr = _trainer(tmp_path, tensorboard=True)
    res = tr.fit(_source())
    assert res.completed and res.epochs_done == 2 and res.global_step == 4
    assert res.averaged_epochs == [2, 1] or res.averaged_epochs == [1, 2]
    assert res.final is not None and res.final.count == 8
    # config: in the run directory and in every checkpoint, and it round-trips to the recipe
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert Recipe.from_dict(cfg["recipe"]) == _recipe()
    assert cfg["run"] == {
        "mode": "cached",
        "num_classes": C,
        "steps_per_epoch": 2,
        "world_size": 1,
        "per_process_batch": G,
        "amp": "off",
        "channels_last": False,
        "device": "cpu",
    }
    assert cfg["info"] == {"test": True}
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["config"] == cfg and last["epoch"] == 2 and last["global_step"] == 4
    for p in (tmp_path / "checkpoints" / "ema_best").iterdir():
        ema = load_checkpoint(p)
        assert ema["config"] == cfg and ema["metrics"]["epoch"] == ema["epoch"]
    final = load_checkpoint(tmp_path / "final.pt")
    assert final["config"] == cfg and final["averaged_epochs"] == res.averaged_epochs
    # metrics: one line per epoch + the final one; lr of the epoch's last update is the recipe's
    lines = read_metrics(tmp_path)
    assert [ln.get("epoch") for ln in lines] == [1, 2, None]
    for ln in lines[:2]:
        assert set(ln["train"]) == {"loss", "kd", "ce"}
        assert ln["lr"] == pytest.approx(lr_at(_recipe().train, (ln["global_step"] - 1) / 2), rel=1e-12)
        assert {"val", "val_ema"} <= set(ln) and ln["img_per_s"] > 0
    assert lines[2]["event"] == "final" and lines[2]["val_avg"]["top1"] == res.final.top1
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # the EMA moved away from the model, and the final model is the average of the kept EMAs
    assert not all(torch.equal(last["model"][k], last["ema"][k]) for k in last["model"])
    for ln in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(ln)


def _run_in_pieces(out: Path, stops: list[int], **opts) -> None:
    for i, stop in enumerate([*stops, None]):
        res = _trainer(out, **opts).fit(_source(), resume=i > 0, stop_at_step=stop)
        assert res.completed == (stop is None)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    _run_in_pieces(out, [])
    return out


@pytest.mark.parametrize(
    "stops, every",
    [
        ([2], 0),  # stopped at the epoch boundary
        ([1, 3], 1),  # stopped twice mid-epoch, with checkpoints after every update
    ],
)
def test_resume_is_bit_identical(tmp_path, uninterrupted, stops, every):
    _run_in_pieces(tmp_path, stops, checkpoint_every_steps=every)
    a = load_checkpoint(uninterrupted / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    _assert_same_state(a["model"], b["model"])
    _assert_same_state(a["ema"], b["ema"])
    _assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"]
    fa = load_checkpoint(uninterrupted / "final.pt")
    fb = load_checkpoint(tmp_path / "final.pt")
    _assert_same_state(fa["state_dict"], fb["state_dict"])
    ma, mb = read_metrics(uninterrupted), read_metrics(tmp_path)
    assert [m.get("epoch") for m in mb] == [1, 2, None]  # no duplicate lines after the resumes
    assert [m.get("val_ema") for m in ma] == [m.get("val_ema") for m in mb]
    if every == 0:  # whole epochs replayed: even the epoch's training statistics agree
        assert [m.get("train") for m in ma] == [m.get("train") for m in mb]


def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path, monkeypatch):
    _trainer(tmp_path).fit(_source(), stop_at_step=2)
    before = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert before["epoch"] == 1

    def boom(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="no space"):
        _trainer(tmp_path).fit(_source(), resume=True)
    monkeypatch.undo()
    after = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert after["epoch"] == 1 and after["global_step"] == 2
    _assert_same_state(before["model"], after["model"])
    assert not [p for p in (tmp_path / "checkpoints").rglob("*") if ".tmp." in p.name]


def test_refuses_to_overwrite_or_resume_a_different_run(tmp_path):
    _trainer(tmp_path).fit(_source(), stop_at_step=2)
    with pytest.raises(TrainError, match="already holds a run"):
        _trainer(tmp_path).fit(_source())
    with pytest.raises(TrainError, match=r"recipe\.train\.lr"):
        _trainer(tmp_path, _recipe(lr=1e-3)).fit(_source(), resume=True)
    with pytest.raises(TrainError, match=r"run\.mode"):
        _trainer(tmp_path, mode="none").fit(_source(), resume=True)


def test_mode_none_trains_on_labels_only(tmp_path):
    res = _trainer(tmp_path, mode="none").fit(_source(topk=None), stop_at_step=2)
    assert not res.completed
    line = read_metrics(tmp_path)[0]
    assert set(line["train"]) == {"loss", "ce"} and line["train"]["loss"] == line["train"]["ce"]


def _teacher() -> OnlineTeacher:
    torch.manual_seed(123)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=C)  # ImageNet mean/std
    return OnlineTeacher(model)


class _CachedFromTeacher:
    """A cached-mode source whose top-k (k = C) is the online teacher's output on the same views."""

    def __init__(self, teacher: OnlineTeacher):
        self.src, self.teacher = _source(topk=None), teacher

    @property
    def steps_per_epoch(self) -> int:
        return self.src.steps_per_epoch

    def epoch_batches(self, epoch: int, start_step: int = 0):
        for b in self.src.epoch_batches(epoch, start_step):
            top = torch.log_softmax(self.teacher(b.images), 1).topk(C, dim=1)
            yield TrainBatch(b.images, b.y_a, b.y_b, b.lam, top.values.half(), top.indices.to(torch.int16), b.slots)


def test_online_and_cached_from_the_same_teacher_agree(tmp_path):
    teacher = _teacher()
    assert teacher.normalize.shift.flatten().tolist() == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    on = _trainer(tmp_path / "online", mode="online", teacher=teacher)
    assert on.normalize.shift.flatten().tolist() == [127.5] * 3  # the student (test_resnet) uses 0.5
    on.fit(_source(topk=None), stop_at_step=2)
    cached = _trainer(tmp_path / "cached").fit(_CachedFromTeacher(teacher), stop_at_step=2)
    assert not cached.completed
    lo, lc = read_metrics(tmp_path / "online")[0]["train"], read_metrics(tmp_path / "cached")[0]["train"]
    # same views, same teacher; only the fp16 storage of the log-probs differs
    assert lc["kd"] == pytest.approx(lo["kd"], rel=2e-3)
    assert lc["ce"] == pytest.approx(lo["ce"], rel=2e-3)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("amp, channels_last", [("bf16", True), ("fp16", False)])
def test_amp_and_channels_last(tmp_path, amp, channels_last):
    # oneDNN's bf16 convolution backward on CPUs without native bf16 (torch 2.14) sometimes leaves NaN in a
    # weight gradient (uninitialised memory; it depends on what ran before). This test is about the trainer's
    # autocast and GradScaler plumbing, so it uses ATen's own CPU kernels.
    with torch.backends.mkldnn.flags(enabled=amp != "bf16"):
        res = _trainer(tmp_path, amp=amp, channels_last=channels_last).fit(_source(), stop_at_step=2)
    line = read_metrics(tmp_path)[0]
    assert not res.completed and all(math.isfinite(v) for v in line["train"].values())
    scaler = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scaler"]
    assert bool(scaler) == (amp == "fp16")  # the GradScaler state is saved (and only used) for fp16


def test_bad_batches_are_refused(tmp_path):
    with pytest.raises(BatchError, match="this process trains on 4"):
        _trainer(tmp_path / "a", _recipe(global_batch=4)).fit(_source())
    with pytest.raises(BatchError, match="top-k"):
        _trainer(tmp_path / "b").fit(_source(topk=None))
    with pytest.raises(TrainError, match="needs a teacher"):
        _trainer(tmp_path / "c", mode="online")
