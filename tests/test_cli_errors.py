"""Every command's user errors: exit status non-zero, one message that names the option or the thing
and says what to do, and no traceback (unless --debug / KDCACHE_DEBUG=1 asks for one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from build_helpers import run_cli, three_class_setup, tiny_build, tiny_train, write_teacher


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errors")
    data, weights = three_class_setup(root, per_class=4)  # 12 images: a 12-view epoch
    cache = root / "cache"
    run_cli(*tiny_build(data, weights, cache))
    (root / "empty").mkdir()
    (root / "file.txt").write_text("not a cache, not weights")
    return {
        "root": root,
        "data": data,
        "weights": weights,
        "cache": cache,
        "other_weights": write_teacher(root / "other.pth", 3, seed=1),  # same shape, other values
        "five_weights": write_teacher(root / "five.pth", 5),  # a teacher for another dataset
    }


# (name, arguments(env), fragments the message must contain). Each message names the option or the
# thing at fault and says what to do.
CASES = [
    ("build: data missing", lambda e: tiny_build(e["root"] / "nope", e["weights"], e["root"] / "o1"),
     ["nope", "does not exist"]),
    ("build: odd batch", lambda e: tiny_build(e["data"], e["weights"], e["root"] / "o2", "--batch-size", "3"),
     ["--batch-size", "even"]),
    ("build: unknown recipe", lambda e: tiny_build(e["data"], e["weights"], e["root"] / "o3", "--recipe", "nosuch"),
     ["nosuch", "presets: "]),
    ("build: teacher for other classes", lambda e: tiny_build(e["data"], e["five_weights"], e["root"] / "o4"),
     ["3 classes", "predicts 5"]),
    ("build: weights not a weights file", lambda e: tiny_build(e["data"], e["root"] / "file.txt", e["root"] / "o5"),
     ["cannot read teacher weights", "file.txt"]),
    ("build: --tail-classes with format 1", lambda e: tiny_build(e["data"], e["weights"], e["root"] / "o6",
                                                                 "--format-version", "1", "--tail-classes", "5"),
     ["--tail-classes needs --format-version 2", "add --format-version 2"]),
    ("build: unknown teacher", lambda e: ["build", "--teacher", "nosuchnet", "--data", str(e["data"])],
     ["unknown teacher 'nosuchnet'", "timm model"]),
    ("train: batch larger than the epoch", lambda e: tiny_train(e["cache"], e["root"] / "r1", "--batch-size", "64"),
     ["--batch-size 64", "larger than an epoch", "12 views", "--batch-size 12 or less"]),
    ("train: the seed's batch on a small cache", lambda e: ["train", "--student", "test_resnet", "--cache",
                                                           str(e["cache"]), "--out", str(e["root"] / "r2"),
                                                           "--epochs", "3", "--workers", "0", "--no-progress",
                                                           "--allow-epoch-reuse"],
     ["--batch-size 1536", "global", "12 views"]),
    ("train: more epochs than cached", lambda e: ["train", "--student", "test_resnet", "--cache",
                                                  str(e["cache"]), "--out", str(e["root"] / "r2b"),
                                                  "--epochs", "3", "--batch-size", "4", "--workers", "0"],
     ["3 epochs", "1 complete epoch", "kdcache build", "--epochs 3", "--allow-epoch-reuse"]),
    ("train: no cache there", lambda e: tiny_train(e["root"] / "nocache", e["root"] / "r3"),
     ["no cache at", "nocache", "kdcache build"]),
    ("train: unknown student", lambda e: tiny_train(e["cache"], e["root"] / "r4", "--student", "nosuchnet"),
     ["--student", "nosuchnet", "not a timm model"]),
    ("train: unknown config", lambda e: tiny_train(e["cache"], e["root"] / "r5", "--config", "nosuch"),
     ["nosuch", "presets: "]),
    ("verify: no cache there", lambda e: ["verify", str(e["root"] / "nocache")], ["no cache at", "kdcache build"]),
    ("verify: other teacher weights", lambda e: ["verify", str(e["cache"]), "--views", "4", "--teacher-weights",
                                                 str(e["other_weights"])],
     ["not the ones the cache was built with", "--teacher-weights"]),
    ("info: not a cache", lambda e: ["info", str(e["root"] / "empty")], ["not a kdcache cache", "kdcache build"]),
    ("info: no cache there", lambda e: ["info", str(e["root"] / "nocache")], ["no cache at"]),
    ("show: backwards slots", lambda e: ["show", str(e["cache"]), "--slots", "5:2"], ["--slots", "0 <= A < B"]),
    ("show: epoch not in the cache", lambda e: ["show", str(e["cache"]), "--epoch", "9"],
     ["--epoch", "epochs 0..0", "got 9"]),
    ("export: no cache there", lambda e: ["export", str(e["root"] / "nocache"), "--format", "wds", "--out",
                                          str(e["root"] / "x")],
     ["no cache at"]),
    ("export: onto a file", lambda e: ["export", str(e["cache"]), "--format", "wds", "--out",
                                       str(e["root"] / "file.txt")],
     ["file.txt is a file", "directory"]),
    ("preview: data missing", lambda e: ["preview", "--data", str(e["root"] / "nope"), "--out",
                                         str(e["root"] / "p.png")],
     ["nope", "does not exist"]),
    ("preview: bad slots", lambda e: ["preview", "--data", str(e["data"]), "--slots", "x", "--out",
                                      str(e["root"] / "p.png")],
     ["--slots", "A:B"]),
    ("ls: cache root is a file", lambda e: ["ls", "--cache-root", str(e["root"] / "file.txt")],
     ["--cache-root", "is a file", "give a directory"]),
    ("rm: unknown key", lambda e: ["rm", "deadbeef", "--cache-root", str(e["root"] / "empty"), "-y"],
     ["no cache 'deadbeef'", "kdcache ls"]),
    ("demo: --out is a file", lambda e: ["demo", "--quick", "--out", str(e["root"] / "file.txt")],
     ["--out", "is a file", "directory"]),
    ("demo: no seeds", lambda e: ["demo", "--quick", "--seeds", "0", "--out", str(e["root"] / "d")], ["--seeds"]),
]  # fmt: skip


@pytest.mark.parametrize("args, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_clean_message(env, args, fragments):
    r = run_cli(*args(env), check=False)
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} missing from:\n{text}"


def test_every_command_has_a_case():
    from kdcache.cli.main import COMMANDS

    covered = {name.split(":")[0] for name, _, _ in CASES}
    assert covered == set(COMMANDS), set(COMMANDS) ^ covered


def test_debug_shows_the_traceback_of_a_user_error(env, monkeypatch):
    monkeypatch.setenv("KDCACHE_DEBUG", "0")  # restored afterwards: --debug sets it for the process
    args = tiny_train(env["cache"], env["root"] / "dbg", "--batch-size", "64")
    r = run_cli("--debug", *args, check=False)
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "UsageError" in r.stderr and "larger than an epoch" in r.stderr


def test_real_entry_point_prints_no_traceback(env):
    """The original report: the seed's global batch on a 12-view cache, through `python -m kdcache`."""
    args = tiny_train(env["cache"], env["root"] / "sub", "--batch-size", "1536")
    r = run_cli(*args, check=False, in_process=False, env={"KDCACHE_DEBUG": ""})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "Error: --batch-size 1536 (the global batch, over all processes) is larger than an epoch" in r.stderr
    r = run_cli(*args, check=False, in_process=False, env={"KDCACHE_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr
