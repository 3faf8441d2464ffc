"""Manifest validation: round trips, clear errors naming the field, and fuzzing of from_json."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdcache.teacher_cache import FORMAT_VERSION, Manifest, ManifestError, UnsupportedFormatError
from kdcache.testing.synthetic_cache import synthetic_manifest

VALID = synthetic_manifest(num_samples=301, unit_size=64).to_dict()


def doc(**changes) -> str:
    d = json.loads(json.dumps(VALID))
    for k, v in changes.items():
        if v is _DELETE:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d)


_DELETE = object()


def test_round_trip_is_exact():
    m = Manifest.from_json(doc())
    assert m.to_dict() == VALID
    assert Manifest.from_json(m.to_json()) == m
    assert m.format_version == 1 and FORMAT_VERSION == 3  # a build writes version 1 unless told otherwise
    assert isinstance(m.class_names, tuple) and isinstance(m.epochs_complete, tuple)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": "0"}, "'seed': expected an integer"),
        ({"seed": True}, "'seed': expected an integer"),
        ({"topk": 11}, "'topk': expected an integer in 1..10"),
        ({"backend": "hdf5"}, "'backend': expected one of zarr, wds"),
        ({"unit_size": 63}, "'unit_size': must be even"),
        ({"num_slots": 301}, "'num_slots': expected 300"),
        ({"class_names": ["a"] * 9}, "'class_names': has 9 names for 10 classes"),
        ({"class_names": [1] * 10}, r"'class_names\[0\]'"),
        ({"teacher": {"name": "t"}}, "'teacher' is missing key"),
        ({"dataset": []}, "'dataset': expected an object"),
        ({"created": "yesterday"}, "'created': expected an ISO 8601 time"),
        ({"epochs_complete": [1, 0]}, "'epochs_complete': expected distinct ascending"),
        ({"epochs_complete": [5]}, "'epochs_complete'"),
        ({"library_versions": {"torch": 2}}, r"'library_versions\.torch'"),
        ({"seed": _DELETE}, "missing: 'seed'"),
        ({"format_version": _DELETE}, "'format_version' is missing"),
        ({"format_version": 0}, "'format_version'"),
        ({"surprise": 1}, "unknown field"),
    ],
)
def test_malformed_fields_are_named(changes, message):
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(doc(**changes))


def test_teacher_and_num_classes_must_agree():
    teacher = {**VALID["teacher"], "num_classes": 11}
    with pytest.raises(ManifestError, match=r"'teacher\.num_classes' \(11\) differs"):
        Manifest.from_json(doc(teacher=teacher))


def test_not_json_and_non_finite_numbers():
    for text in ("", "{", "[1, 2]", "null", b"\xff\xfe", '{"seed": NaN}'):
        with pytest.raises(ManifestError):
            Manifest.from_json(text)
    with pytest.raises(ManifestError, match="NaN is not allowed"):
        Manifest.from_json(doc().replace('"seed": 0', '"seed": NaN'))


def test_newer_format_is_unsupported_even_if_the_rest_is_unreadable():
    with pytest.raises(UnsupportedFormatError, match="upgrade kdcache"):
        Manifest.from_json(json.dumps({"format_version": FORMAT_VERSION + 1, "anything": "else"}))


def test_differences_ignore_resumable_fields_and_name_nested_keys():
    a = Manifest.from_json(doc())
    b = a.replace(created="2031-01-01T00:00:00+00:00", epochs_planned=9, epochs_complete=(0,))
    assert a.differences(b) == []
    teacher = {**a.teacher, "weights_sha256": "f" * 64}
    assert a.differences(a.replace(teacher=teacher, seed=3)) == ["teacher.weights_sha256", "seed"]


def test_differences_between_format_versions_name_both_fields_either_way():
    """A version 1 document has no 'tail_classes' key: comparing it with a version 2 one, in either order,
    names both fields (it was a KeyError with the version 2 manifest first, e.g. resuming a format 2 build
    without --format-version 2)."""
    v1 = Manifest.from_json(doc())
    v2 = v1.replace(format_version=2, tail_classes=4)
    assert v1.differences(v2) == ["format_version", "tail_classes"]
    assert v2.differences(v1) == ["format_version", "tail_classes"]
    assert v2.differences(v2.replace(tail_classes=5)) == ["tail_classes"]
    assert v2.differences(v1, ignore=frozenset({"format_version", "tail_classes"})) == []


def test_content_dict_excludes_bookkeeping():
    content = Manifest.from_json(doc()).content_dict()
    for name in ("backend", "created", "epochs_planned", "library_versions", "kdcache_version", "format_version"):
        assert name not in content
    for name in ("teacher", "recipe", "seed", "dataset", "topk", "unit_size", "record_width", "class_names"):
        assert name in content


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = sorted(VALID)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.booleans(), json_values), min_size=1, max_size=3))
def test_fuzz_mutated_manifests_raise_only_manifest_error(mutations):
    d = json.loads(json.dumps(VALID))
    for key, delete, value in mutations:
        if delete:
            d.pop(key, None)
        elif isinstance(d.get(key), dict) and isinstance(value, dict):
            d[key] = {**d[key], **value}  # nested mutation keeps most of the object intact
        else:
            d[key] = value
    try:
        m = Manifest.from_json(json.dumps(d))
    except ManifestError:
        return
    assert Manifest.from_json(m.to_json()) == m  # whatever is accepted must round-trip


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps)))
def test_fuzz_arbitrary_input_raises_only_manifest_error(text):
    with pytest.raises(ManifestError):
        Manifest.from_json(text)
