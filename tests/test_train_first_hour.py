"""`kdcache train` as a new user meets it: online KD runs the cache's recorded teacher weights (never the hub
unasked), each epoch prints a line with its loss even with --no-progress, the bar shows the loss and lr,
the summary has the final train loss, and --cache and --teacher/--data print the same start lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
from build_helpers import run_cli, three_class_setup, tiny_build, tiny_train

from kdcache.testing.fixtures import write_teacher


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_hour")
    data, weights = three_class_setup(root, per_class=4)  # 12 images
    return root, data, weights


@pytest.fixture(scope="module")
def cache(setup) -> Path:
    root, data, weights = setup
    out = root / "cache"
    run_cli(*tiny_build(data, weights, out, "--epochs", "2"))
    return out


@pytest.fixture
def no_hub(monkeypatch):
    """Every attempt to fetch pretrained weights is recorded and fails (as offline), and hub access is off."""
    import timm.models._builder as builder

    calls: list[str] = []
    real = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if pretrained:
            calls.append(name)
            raise OSError(f"no network in this test ({name})")
        return real(name, pretrained=False, **kwargs)

    def load_pretrained(*args, **kwargs):
        calls.append("load_pretrained")
        raise OSError("no network in this test")

    monkeypatch.setattr(timm, "create_model", create_model)
    monkeypatch.setattr(builder, "load_pretrained", load_pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return calls


def _cache_with_own_weights(root: Path, data: Path, weights: Path, name: str) -> tuple[Path, Path]:
    """A cache built with a copy of the teacher's weights that this test may delete or change."""
    own = root / f"{name}.pth"
    shutil.copy(weights, own)
    cache = root / name
    run_cli(*tiny_build(data, own, cache, "--epochs", "2"))
    return cache, own


def test_online_training_runs_the_recorded_weights_without_the_hub(setup, tmp_path, no_hub):
    _, data, weights = setup
    cache, own = _cache_with_own_weights(tmp_path, data, weights, "c")
    r = run_cli(*tiny_train(cache, tmp_path / "run", "--kd", "online", "--epochs", "1"))
    assert no_hub == []  # no download was attempted
    assert f"teacher: test_resnet run online, weights {own}" in r.stdout and "the cache's teacher" in r.stdout
    assert "differ" not in r.stdout
    assert (tmp_path / "run" / "final.pt").is_file()


def test_a_gone_or_changed_weights_file_stops_at_once_with_the_way_out(setup, tmp_path, no_hub):
    _, data, weights = setup
    cache, own = _cache_with_own_weights(tmp_path, data, weights, "c")
    write_teacher(own, 3, seed=1)  # other weights under the recorded name
    r = run_cli(*tiny_train(cache, tmp_path / "a", "--kd", "online"), check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is not the teacher the cache was built with" in r.stderr and "--teacher-weights FILE" in r.stderr
    own.unlink()
    r = run_cli(*tiny_train(cache, tmp_path / "b", "--kd", "online"), check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert str(own) in r.stderr and "--teacher-weights FILE" in r.stderr
    assert no_hub == [] and not (tmp_path / "b" / "metrics.jsonl").exists()
    # the way out works
    run_cli(*tiny_train(cache, tmp_path / "c", "--kd", "online", "--epochs", "1", "--teacher-weights", str(weights)))
    assert no_hub == []


def test_no_progress_prints_a_line_per_epoch_and_the_summary_has_the_final_loss(setup, cache, tmp_path):
    data = setup[1]
    run = tmp_path / "run"
    r = run_cli(*tiny_train(cache, run, "--val-data", str(data)))  # --no-progress, 2 epochs
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    for line, m in zip(lines, metrics, strict=True):
        t = m["train"]
        assert f"loss {t['loss']:.4f} (KD {t['kd']:.4f}, CE {t['ce']:.4f})" in line
        assert "img/s" in line and "data wait" in line and f"val top-1 {m['val']['top1']:.2f}%" in line
    assert "kdcache train finished" in r.stderr
    assert f"final train loss {metrics[-1]['train']['loss']:.4f}" in r.stderr
    # --kd none: the CE part alone
    r = run_cli(*tiny_train(cache, tmp_path / "none", "--kd", "none", "--epochs", "1"))
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("epoch 1/1"))
    assert "(CE " in line and "KD" not in line


def test_the_bar_shows_the_loss_and_lr_from_the_first_step(cache, tmp_path, monkeypatch):
    import kdcache.student.trainer as trainer

    shown: list[dict] = []

    class Bar(trainer.tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            shown.append(dict(ordered_dict or {}, **kwargs))
            super().set_postfix(ordered_dict, refresh, **kwargs)

    monkeypatch.setattr(trainer, "tqdm", Bar)
    args = [a for a in tiny_train(cache, tmp_path / "run", "--epochs", "1") if a != "--no-progress"]
    run_cli(*args, "--progress")
    assert len(shown) == 1  # one epoch of 12 slots at batch 8: one step, below the recipe's log_every
    assert {"loss", "kd", "ce", "lr", "data"} <= set(shown[0])


def test_cache_and_registry_lookup_print_the_same_start_lines(setup, tmp_path):
    _, data, weights = setup
    home = tmp_path / "home"
    run_cli(*tiny_build(data, weights, None, "--cache-root", str(home), "--epochs", "2"))
    location = json.loads(run_cli("ls", "--cache-root", str(home), "--json").stdout)[0]["location"]
    base = tiny_train(Path("x"), tmp_path / "r1", "--epochs", "1", "--replay-check", "0")
    by_path = run_cli(*[location if a == "x" else a for a in base])
    found = [a for a in base if a not in ("--cache", "x")]
    found[found.index(str(tmp_path / "r1"))] = str(tmp_path / "r2")
    by_lookup = run_cli(
        *found,
        "--teacher",
        "test_resnet",
        "--data",
        str(data),
        "--teacher-weights",
        str(weights),
        "--cache-root",
        str(home),
    )
    a, b = by_path.stdout.splitlines(), by_lookup.stdout.splitlines()
    assert a[1:] == b[1:] and a[0].split(":", 1)[1] == b[0].split(":", 1)[1]
    assert any(ln.startswith("teacher: test_resnet (weight 1, the cache's own") for ln in a)
