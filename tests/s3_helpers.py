"""An S3 emulator for tests: moto's server on loopback, one per test process, a fresh bucket per test.

tests/conftest.py imports the fixtures, so every test module can ask for them. The
``s3_bucket`` fixture yields ``s3://BUCKET`` and sets the environment, so kdcache in this process and
in its subprocesses (CLI runs, torchrun ranks) reach the emulator:

- ``AWS_ENDPOINT_URL_S3`` (botocore's own setting, read when a client is created) points at it. fsspec's
  ``FSSPEC_S3_ENDPOINT_URL`` would reach subprocesses too, but fsspec reads its config env once, when
  it is imported, so it cannot redirect this process once fsspec is loaded;
- fixed test credentials and region, and no ``~/.aws`` profile or instance-metadata look-up.

s3fs caches filesystem instances by their arguments, not by the environment: the instance cache is
cleared whenever the endpoint differs from the one its instances were made for, and when the server
stops, so no test gets a filesystem made for another endpoint.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Settings that would send botocore elsewhere or make it use other credentials.
_CLEARED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "FSSPEC_S3_ENDPOINT_URL",
    "FSSPEC_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def _need_s3_packages():
    """moto's server module. The dev extras install s3fs and moto: without them the S3 tests fail, so a
    broken install is not mistaken for a pass; KDCACHE_SKIP_S3=1 skips them on purpose."""
    if os.environ.get("KDCACHE_SKIP_S3") == "1":
        pytest.skip("KDCACHE_SKIP_S3=1")
    try:
        import moto.server as moto_server
        import s3fs  # noqa: F401
    except ImportError as e:
        pytest.fail(f"the S3 tests need s3fs and moto[server] ({e}): pip install -e '.[dev]', or KDCACHE_SKIP_S3=1")
    return moto_server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on 127.0.0.1 (started once per test process)."""
    moto_server = _need_s3_packages()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    _clear_s3fs_instances()
    server.stop()


_instances_for: list[str | None] = [None]  # the endpoint the cached s3fs instances were made for


def _clear_s3fs_instances(endpoint: str | None = None) -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    _instances_for[0] = endpoint


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> Iterator[str]:
    """``s3://BUCKET``: a new, empty bucket on the emulator, with the environment pointing at it."""
    import s3fs

    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    # No ~/.aws of the user's: an empty config and credentials file.
    empty = tmp_path_factory.mktemp("aws") / "none"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.delenv("KDCACHE_LEASE_TTL", raising=False)
    if _instances_for[0] != s3_server:
        # Instances made before (another endpoint, or none) would talk to the wrong server. Within one
        # endpoint they stay valid (the same arguments, the same credentials): reusing them spares the
        # ~0.3 s that creating a client costs.
        _clear_s3fs_instances(s3_server)
    bucket = f"kdc-{uuid.uuid4().hex[:16]}"
    s3fs.S3FileSystem().mkdir(bucket)
    yield f"s3://{bucket}"
