"""Every command-line option reaches the config field of the same name (`run_x(XConfig(**options))`).

Each option gets a value that differs from its default; the command's run function is replaced by one
that records the config it was given. A new option that the config drops, or a field the command fills
by hand and forgets (as `kdcache train --checkpoint-every` once was), fails here.
"""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from kdcache.cli.main import cli


def _other_value(opt: click.Option, tmp_path) -> tuple[list[str], object]:
    """(command-line words, the value the config should then hold) for a non-default setting."""
    name = opt.opts[0]
    if opt.is_flag:
        if opt.secondary_opts:  # --x/--no-x: choose the side that is not the default
            return ([opt.secondary_opts[0]], False) if opt.default else ([name], True)
        return [name], True  # a lone flag turns something on
    t = opt.type
    if isinstance(t, click.Choice):
        value = next(c for c in t.choices if c != opt.default)
        return [name, value], value
    if isinstance(t, click.IntRange):
        lo = t.min if t.min is not None else 0
        value = lo + 3 if (lo + 3) != opt.default else lo + 5
        value = value + (value % 2)  # even: batch and unit sizes must be
        if t.max is not None:
            value = min(value, t.max)
        return [name, str(value)], value
    if isinstance(t, click.types.FloatParamType):
        return [name, "0.125"], 0.125
    value = str(tmp_path / f"v-{opt.name}")
    return [name, value], value


def _invoke(command: str, extra: list[str], tmp_path, skip: tuple[str, ...] = ()) -> tuple[list[str], dict]:
    cmd = cli.get_command(click.Context(cli), command)
    args, expected = list(extra), {}
    for opt in cmd.params:
        if not isinstance(opt, click.Option) or opt.name == "help" or opt.name in skip:
            continue
        words, value = _other_value(opt, tmp_path)
        args += words
        expected[opt.name] = value
    return args, expected


def _check(config, expected: dict) -> None:
    fields = {f.name for f in dataclasses.fields(config)}
    missing = sorted(set(expected) - fields)
    assert not missing, f"options without a config field: {missing}"
    wrong = {k: (getattr(config, k), v) for k, v in expected.items() if str(getattr(config, k)) != str(v)}
    assert not wrong, f"config field != option value: {wrong}"


def test_build_options_reach_build_config(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("kdcache.cli.build.build_and_summarise", lambda cfg: seen.append(cfg) or "")
    # --out and --cache exclude each other, and so do format 2's --tail-classes and format 3's --draws: every
    # option in one of two runs (the second asks for format 2 by hand)
    for skip, extra in (
        (("cache", "tail_classes"), []),
        (("out", "draws", "format_version"), ["--format-version", "2"]),
    ):
        args, expected = _invoke("build", extra, tmp_path, skip)
        res = CliRunner().invoke(cli, ["build", *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        _check(seen[-1], expected)
    assert {seen[0].format_version, seen[1].format_version} == {3, 2}


def test_train_options_reach_train_config(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("kdcache.registry.lookup.resolve_train_cache", lambda cfg, hint: (cfg.cache, None))
    from kdcache.student.run import TrainOutcome

    monkeypatch.setattr(
        "kdcache.student.run.run_train", lambda cfg, *_, **__: seen.append(cfg) or TrainOutcome(None, ())
    )
    args, expected = _invoke("train", [], tmp_path)
    res = CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    _check(seen[0], expected)


def test_demo_options_reach_demo_config(tmp_path, monkeypatch):
    seen = []

    def fake_run(cfg, echo):
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr("kdcache.demo.run.run_demo", fake_run)
    args, expected = _invoke("demo", [], tmp_path)
    CliRunner().invoke(cli, ["demo", *args])
    _check(seen[0], expected)


def test_train_checkpoint_every_reaches_the_trainer(tmp_path, monkeypatch):
    """From TrainArgs on to the Trainer's RunOptions, over a real cache (it was silently dropped there)."""
    from build_helpers import run_cli, three_class_setup, tiny_build, tiny_train

    data, weights = three_class_setup(tmp_path, per_class=4)
    run_cli(*tiny_build(data, weights, tmp_path / "cache"))
    seen = []

    class Stop(Exception):
        pass

    def fake_trainer(recipe, num_classes, options, **kw):
        seen.append(options)
        raise Stop

    monkeypatch.setattr("kdcache.student.trainer.Trainer", fake_trainer)
    args = tiny_train(tmp_path / "cache", tmp_path / "run", "--checkpoint-every", "7", "--batch-size", "4")
    with pytest.raises(Stop):
        CliRunner().invoke(cli, args, catch_exceptions=False)
    assert seen[0].checkpoint_every_steps == 7
