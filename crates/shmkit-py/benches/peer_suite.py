"""The `shared_allocator` package's own benchmark suite, run unchanged
against shmkit and against the package itself, side by side.

The suite ships in the package's source distribution
(``tests/test_benchmarks.py``, 16 pytest-benchmark tests over its three
classes). It is fetched from the package registry when this runs, never
stored here. shmkit meets it through a ``shared_allocator`` module that
re-exports shmkit's three classes, nothing else.

    python crates/shmkit-py/benches/peer_suite.py            # both, a table
    python crates/shmkit-py/benches/peer_suite.py --smoke    # shmkit, one pass each

The peer is measured only where it is installed (``pip install
--ignore-requires-python shared_allocator==0.1.0``: it declares Python
3.13 but runs on 3.10 and later).
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

PACKAGE, VERSION = "shared_allocator", "0.1.0"
SUITE = "tests/test_benchmarks.py"
SHIM = "from shmkit import BumpAllocator, FreeListAllocator, SlabAllocator\n"


class Unavailable(Exception):
    """The suite could not be fetched (no network, say)."""


def fetch_suite(directory):
    """Writes the peer's benchmark suite into `directory`; returns its path.

    Reads the registry's simple index (``PIP_INDEX_URL`` when set), as pip
    does, and checks the archive against the hash the index gives."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    wanted = f"{PACKAGE}-{VERSION}.tar.gz"
    try:
        request = urllib.request.Request(
            f"{index}/{PACKAGE.replace('_', '-')}/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=20) as reply:
            files = json.load(reply)["files"]
        entry = next(entry for entry in files if entry["filename"] == wanted)
        with urllib.request.urlopen(entry["url"], timeout=60) as reply:
            archive = reply.read()
    except (OSError, StopIteration, KeyError, ValueError) as error:
        raise Unavailable(f"cannot fetch {wanted} from {index}: {error!r}") from error
    expected = entry.get("hashes", {}).get("sha256")
    if expected and hashlib.sha256(archive).hexdigest() != expected:
        raise Unavailable(f"{wanted} does not match the index's sha256")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(SUITE)), None)
        if member is None:
            raise Unavailable(f"{wanted} ships no {SUITE}")
        source = tar.extractfile(member).read()
    path = os.path.join(directory, "test_benchmarks.py")
    with open(path, "wb") as file:
        file.write(source)
    return path


def peer_installed():
    probe = "import shared_allocator, sys; sys.exit('shmkit' in shared_allocator.__file__)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def run_suite(suite, package, directory, smoke):
    """Runs the suite against `package` ("shmkit" or the peer); returns
    (passed, failed, {test: mean seconds})."""
    env = dict(os.environ)
    if package == "shmkit":
        shim = os.path.join(directory, "shim", PACKAGE)
        os.makedirs(shim, exist_ok=True)
        with open(os.path.join(shim, "__init__.py"), "w") as file:
            file.write(SHIM)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(shim), env.get("PYTHONPATH")]))
    report = os.path.join(directory, f"{package}.json")
    command = [sys.executable, "-m", "pytest", suite, "-q", "-p", "no:cacheprovider", "--rootdir", directory]
    if smoke:
        command.append("--benchmark-disable")
    else:
        command += ["--benchmark-only", f"--benchmark-json={report}"]
    result = subprocess.run(command, env=env, cwd=directory, capture_output=True, text=True)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    passed = failed = 0
    words = summary.replace(",", "").split()
    for count, word in zip(words, words[1:]):
        if word == "passed":
            passed = int(count)
        elif word == "failed":
            failed = int(count)
    means = {}
    if not smoke and os.path.exists(report):
        with open(report) as file:
            for bench in json.load(file)["benchmarks"]:
                means[bench["name"]] = bench["stats"]["mean"]
    return passed, failed, means, result.stdout + result.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run shmkit once through every test, untimed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        try:
            suite = fetch_suite(directory)
        except Unavailable as error:
            print(f"skipped: {error}")
            return 0
        packages = ["shmkit"] + ([] if args.smoke or not peer_installed() else ["peer"])
        results = {package: run_suite(suite, package, directory, args.smoke) for package in packages}
    for package, (passed, failed, _, output) in results.items():
        print(f"{package}: {passed} passed, {failed} failed")
        if failed:
            print(output)
    if not args.smoke:
        ours = results["shmkit"][2]
        theirs = results.get("peer", (0, 0, {}, ""))[2]
        print()
        print("| test | shared_allocator (us) | shmkit (us) | speedup |")
        print("|---|---:|---:|---:|")
        for test in sorted(ours, key=lambda t: (t.split("_")[1], t)):
            peer_mean = theirs.get(test)
            cells = [f"{peer_mean * 1e6:.2f}" if peer_mean else "", f"{ours[test] * 1e6:.2f}"]
            cells.append(f"{peer_mean / ours[test]:.1f}x" if peer_mean else "")
            print(f"| `{test}` | " + " | ".join(cells) + " |")
    return 1 if any(failed for _, failed, _, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
