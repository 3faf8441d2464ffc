"""Training from several teachers of one cache (teacher layers): `kdcache train --teacher T1,T2` on layers.

A 2-layer cache is made by hand: the same data built twice with two teachers (same seed, recipe and
size, so the same views), the second store copied to ``A/layers/<layer_id>/`` (where `kdcache build
--teacher T2 --out A` puts it).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from build_helpers import run_cli, three_class_setup, tiny_build, tiny_train, write_teacher

from kdcache.errors import UsageError
from kdcache.student.batch import TrainBatch
from kdcache.student.cache_source import CacheBatchSource
from kdcache.student.targets import TeacherTarget
from kdcache.student.teachers import FIRST_LAYER, select_teachers
from kdcache.teacher_cache.store import open_cache
from kdcache.teacher_cache.store.layers import VIEW_FIELDS, layer_id
from kdcache.views.replay import open_replay

NAME_B = "test_efficientnet"  # the second teacher


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    data, weights_a = three_class_setup(root, per_class=4)  # 12 images -> 12 slots/epoch
    weights_b = write_teacher(root / "teacher_b.pth", 3, arch=NAME_B, seed=1)
    a, b = root / "A", root / "B"
    run_cli(*tiny_build(data, weights_a, a, "--epochs", "2", "--batch-size", "6"))
    run_cli(*tiny_build(data, weights_b, b, "--epochs", "2", "--batch-size", "6", "--teacher", NAME_B))
    rb = open_cache(b)
    lid = layer_id(rb.manifest.teacher)
    shutil.copytree(b, a / "layers" / lid)
    ra = open_cache(a)
    for e in ra.epochs_complete:  # the premise: one set of views, two teachers' labels
        ba, bb = ra.load_epoch(e), rb.load_epoch(e)
        for f in VIEW_FIELDS:
            assert np.array_equal(getattr(ba, f), getattr(bb, f)), f
        assert not np.array_equal(ba.topk_logprob, bb.topk_logprob)
    return root, data, a, b, lid


def _source(reader, data, teachers=None) -> CacheBatchSource:
    engine = open_replay(reader.manifest, str(data))
    to_teacher = np.asarray(reader.manifest.dataset["to_teacher"])
    return CacheBatchSource(reader, engine, to_teacher, 6, workers=0, teachers=teachers)


def _batches(src: CacheBatchSource, epoch: int = 0) -> list[TrainBatch]:
    return list(src.epoch_batches(epoch))


def _target(b: TrainBatch) -> torch.Tensor:
    assert b.topk_logprob is not None and b.topk_class is not None
    if b.topk_layers is None:
        return TeacherTarget.from_topk(b.topk_logprob, b.topk_class, 3).log_probs
    return TeacherTarget.from_topk_mixture(b.topk_logprob, b.topk_class, 3, b.topk_layers).log_probs


def test_teachers_of_a_layered_cache(layered):
    _, _, a, _, lid = layered
    reader = open_cache(a)
    both = select_teachers(reader, f"test_resnet,{NAME_B}")
    assert [(t.name, t.layer, t.weight) for t in both] == [("test_resnet", FIRST_LAYER, 0.5), (NAME_B, lid, 0.5)]
    w = select_teachers(reader, f"{NAME_B}:3,test_resnet:1")
    assert [(t.name, t.weight) for t in w] == [(NAME_B, 0.75), ("test_resnet", 0.25)]
    (only_b,) = select_teachers(reader, NAME_B)
    assert only_b.layer == lid and only_b.reader.manifest.teacher["name"] == NAME_B
    (own,) = select_teachers(reader, None)
    assert own.layer == FIRST_LAYER and own.reader is reader


def test_unknown_teacher_lists_the_cache_teachers(layered):
    _, _, a, _, _ = layered
    with pytest.raises(UsageError, match=r"no teacher 'vit_huge'.*test_resnet, test_efficientnet"):
        select_teachers(open_cache(a), "test_resnet,vit_huge")
    with pytest.raises(UsageError, match="give a weight to every teacher"):
        select_teachers(open_cache(a), f"test_resnet:1,{NAME_B}")


def test_ensemble_target_is_the_weighted_mean_of_the_layers(layered):
    _, data, a, b, _ = layered
    reader = open_cache(a)
    alone_a = _batches(_source(reader, data))
    alone_b = _batches(_source(open_cache(b), data))
    for spec, wa, wb in ((f"test_resnet,{NAME_B}", 0.5, 0.5), (f"test_resnet:0.7,{NAME_B}:0.3", 0.7, 0.3)):
        chosen = select_teachers(reader, spec)
        mixed = _batches(_source(reader, data, [(t.reader, t.weight) for t in chosen]))
        assert len(mixed) == len(alone_a) == len(alone_b) == 2
        for m, ba, bb in zip(mixed, alone_a, alone_b, strict=True):
            assert torch.equal(m.slots, ba.slots) and torch.equal(m.images, ba.images)
            assert m.topk_layers is not None and [k for k, _ in m.topk_layers] == [3, 3]
            assert [w for _, w in m.topk_layers] == pytest.approx([wa, wb])
            expected = wa * _target(ba).exp() + wb * _target(bb).exp()
            got = _target(m).exp()
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(got.sum(1), torch.ones(len(m)))
            # a real mixture: differs from either teacher alone
            assert not torch.allclose(got, _target(ba).exp()) and not torch.allclose(got, _target(bb).exp())


def test_one_teacher_selection_equals_that_layer_alone(layered):
    _, data, a, b, _ = layered
    reader = open_cache(a)
    (t,) = select_teachers(reader, NAME_B)
    chosen = _batches(_source(reader, data, [(t.reader, t.weight)]), epoch=1)
    alone = _batches(_source(open_cache(b), data), epoch=1)
    for c, al in zip(chosen, alone, strict=True):
        assert c.topk_layers is None
        for f in ("images", "y_a", "y_b", "lam", "topk_logprob", "topk_class", "slots"):
            assert torch.equal(getattr(c, f), getattr(al, f)), f
    # and no spec: the cache's own labels, as if it had no layers
    own = _batches(_source(reader, data), epoch=1)
    first = _batches(_source(reader, data, [(reader, 1.0)]), epoch=1)
    for o, f1 in zip(own, first, strict=True):
        assert torch.equal(o.topk_logprob, f1.topk_logprob) and torch.equal(o.topk_class, f1.topk_class)


def test_train_cli_on_an_ensemble_records_the_teachers(layered, tmp_path):
    _, _, a, _, lid = layered
    out = tmp_path / "run"
    r = run_cli(*tiny_train(a, out, "--batch-size", "6", "--teacher", f"test_resnet:0.7,{NAME_B}:0.3"))
    assert "teachers (weighted mean of their distributions): test_resnet (weight 0.7" in r.stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    teachers = cfg["info"]["teachers"]
    assert [(t["name"], t["layer"]) for t in teachers] == [("test_resnet", FIRST_LAYER), (NAME_B, lid)]
    assert [t["weight"] for t in teachers] == pytest.approx([0.7, 0.3])
    sha_b = open_cache(a / "layers" / lid).manifest.teacher["weights_sha256"]
    assert teachers[1]["weights_sha256"] == sha_b != teachers[0]["weights_sha256"]
    assert (out / "final.pt").is_file()
    tb = list((out / "tb").glob("events.*"))
    assert tb and any(b"teachers" in p.read_bytes() for p in tb)
    # resuming with another choice of teachers is refused (it would change the targets mid-run)
    r = run_cli(*tiny_train(a, out, "--batch-size", "6", "--teacher", "test_resnet", "--resume"), check=False)
    assert r.returncode != 0 and "teachers (--teacher)" in r.stderr


def test_train_cli_refuses_an_unknown_teacher_and_online_lists(layered, tmp_path):
    _, _, a, _, _ = layered
    r = run_cli(*tiny_train(a, tmp_path / "r1", "--batch-size", "6", "--teacher", "nope"), check=False)
    assert r.returncode != 0 and "no teacher 'nope'" in r.stderr and NAME_B in r.stderr
    r = run_cli(
        *tiny_train(a, tmp_path / "r2", "--batch-size", "6", "--kd", "online", "--teacher", f"test_resnet,{NAME_B}"),
        check=False,
    )
    assert r.returncode != 0 and "--kd online runs one teacher" in r.stderr


def test_a_cache_without_layers_records_no_teacher_choice(layered, tmp_path):
    _, _, _, b, _ = layered
    out = tmp_path / "run"
    r = run_cli(*tiny_train(b, out, "--batch-size", "6", "--epochs", "1"))
    assert "teachers" not in yaml.safe_load((out / "config.yaml").read_text())["info"]
    assert "soft labels: top-3 of 3" in r.stdout


def test_mixture_by_hand_with_different_k():
    """Layer 1 (k=1): class 0 at 0.6, the rest 0.2 each; layer 2 (k=2): class 2 at 0.5, class 1 at 0.5."""
    lp = torch.log(torch.tensor([[0.6, 0.5, 0.5]])).half()
    cl = torch.tensor([[0, 2, 1]], dtype=torch.int16)
    got = TeacherTarget.from_topk_mixture(lp, cl, 3, ((1, 0.25), (2, 0.75))).log_probs.exp()
    expected = 0.25 * torch.tensor([0.6, 0.2, 0.2]) + 0.75 * torch.tensor([0.0, 0.5, 0.5])
    torch.testing.assert_close(got[0], expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="do not add up"):
        TeacherTarget.from_topk_mixture(lp, cl, 3, ((1, 0.5), (1, 0.5)))


def test_train_batch_checks_the_layer_columns():
    b = dict(
        images=torch.zeros(2, 4, 4, 3, dtype=torch.uint8),
        y_a=torch.zeros(2, dtype=torch.int64),
        y_b=torch.zeros(2, dtype=torch.int64),
        lam=torch.ones(2),
        topk_logprob=torch.zeros(2, 4, dtype=torch.float16),
        topk_class=torch.zeros(2, 4, dtype=torch.int16),
    )
    assert TrainBatch(**b, topk_layers=((3, 0.5), (1, 0.5))).to("cpu").topk_layers == ((3, 0.5), (1, 0.5))
    with pytest.raises(ValueError, match="add up"):
        TrainBatch(**b, topk_layers=((3, 0.5), (3, 0.5)))
    with pytest.raises(ValueError, match="weights must be > 0"):
        TrainBatch(**b, topk_layers=((3, 0.5), (1, 0.0)))


def test_show_dense_gives_the_ensemble_the_trainer_uses(layered):
    """`kdcache show --teacher T1:0.7,T2:0.3 --json --dense`: the weighted mean of each layer's dense output."""
    import json

    _, _, a, _, _ = layered

    def dense(teacher: str) -> np.ndarray:
        out = run_cli("show", str(a), "--json", "--dense", "--slots", "0:6", "--teacher", teacher).stdout
        return np.array([json.loads(line)["probs"] for line in out.splitlines()])

    mixed = dense(f"test_resnet:0.7,{NAME_B}:0.3")
    np.testing.assert_allclose(mixed, 0.7 * dense("test_resnet") + 0.3 * dense(NAME_B), rtol=1e-5, atol=1e-6)
    assert not np.allclose(mixed, dense("test_resnet"))
    refused = run_cli("show", str(a), "--slots", "0:2", "--teacher", f"test_resnet,{NAME_B}", check=False)
    assert refused.returncode != 0 and "--dense" in refused.stderr


def test_a_name_two_layers_share_must_be_given_as_a_layer_id():
    """One architecture with two weights makes two layers with one name: picking either silently would
    train on the wrong teacher half the time."""
    from types import SimpleNamespace

    from kdcache.student.teachers import TeacherLayer, _find

    def layer(name: str, lid: str, sha: str) -> TeacherLayer:
        teacher = {"name": name, "model": name, "weights_sha256": sha}
        return TeacherLayer(name, lid, SimpleNamespace(manifest=SimpleNamespace(teacher=teacher, topk=3)))

    teachers = [layer("test_resnet", FIRST_LAYER, "a"), layer("test_resnet", "test_resnet-12345678", "b")]
    with pytest.raises(UsageError, match=r"matches 2 layers.*\., test_resnet-12345678"):
        _find("test_resnet", teachers)
    assert _find("test_resnet-12345678", teachers) is teachers[1]
    assert _find("nosuchnet", teachers) is None


def test_the_build_hint_for_several_teachers_builds_each_one():
    """`train --teacher T1:0.7,T2:0.3 --data D` with no cache suggests runnable builds: the first teacher's,
    then each further one (the registry adds it as a layer of the same views)."""
    from kdcache.teacher_cache.teacher_pass.command import registry_build_hint

    lines = registry_build_hint("t1:0.7,t2:0.3", "/data", epochs=5).split("\n  ")
    assert [("--teacher t1" in line, "--teacher t2" in line) for line in lines] == [(True, False), (False, True)]
    assert all("--epochs 5" in line and ":0." not in line for line in lines)
