"""The `shared_allocator` package's own benchmark suite (16 tests, fetched
from the package registry at test time) runs unchanged against shmkit,
through a `shared_allocator` module that re-exports shmkit's classes."""

import importlib.util
import pathlib
import tempfile

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benches" / "peer_suite.py"


def load():
    spec = importlib.util.spec_from_file_location("peer_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_peers_benchmark_suite_passes_on_shmkit():
    pytest.importorskip("pytest_benchmark", reason="the suite needs pytest-benchmark")
    peer_suite = load()
    with tempfile.TemporaryDirectory() as directory:
        try:
            suite = peer_suite.fetch_suite(directory)
        except peer_suite.Unavailable as error:
            pytest.skip(str(error))
        passed, failed, _, output = peer_suite.run_suite(suite, "shmkit", directory, smoke=True)
    assert (passed, failed) == (16, 0), output
