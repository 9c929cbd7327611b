"""C, C++, Rust and Python processes allocating from one thread-local
allocator in one segment at the same time: every block is tagged with its
writer, and at the end no two blocks overlap and every tag survives.

The C and C++ workers are compiled here with the system compiler against
``include/`` and the static C library that ``cargo test --workspace`` (the
test command's first step) builds; the Rust worker is the ``tagger``
example of ``crates/shmkit-c``. Without them (a pytest run on its own) the
test skips and says why.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shmkit

ROOT = Path(__file__).resolve().parents[3]
C_EXAMPLES = ROOT / "crates" / "shmkit-c" / "examples"
SYSTEM_LIBS = ["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"]
COUNT = 20000
PYTHON_COUNT = 4000

PYTHON_TAGGER = r"""
import sys, time
import shmkit

name, writer, count, start_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def tag(seq, size):
    return bytes((writer * 131 + seq * 31 + i * 7) & 0xFF for i in range(size))

heap = shmkit.ThreadLocalAllocator(name, create=False)
state = 0x9E3779B97F4A7C15 ^ ((writer * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF)
def nxt():
    global state
    x = state
    x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 7
    x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
    state = x
    return x
while time.time() * 1000 < start_ms:
    time.sleep(0.0002)
live = []
for seq in range(count):
    size = 16 + nxt() % 2000
    offset = heap.allocate(size)
    if offset is None:
        sys.exit("out of memory")
    heap.write(offset, tag(seq, size))
    live.append((offset, size, seq))
    if len(live) > 128:
        pick = nxt() % len(live)
        offset, size, seq = live[pick]
        live[pick] = live[-1]
        live.pop()
        if heap.read(offset, size) != tag(seq, size):
            sys.exit(f"block at {offset} (seq {seq}) overwritten")
        heap.free(offset)
for offset, size, seq in live:
    if heap.read(offset, size) != tag(seq, size):
        sys.exit(f"block at {offset} (seq {seq}) overwritten")
    print(writer, offset, size, seq)
"""


def _newest(paths):
    found = [p for p in paths if p.exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _artifacts():
    profiles = [ROOT / "target" / "debug", ROOT / "target" / "release"]
    library = _newest([p / d / "libshmkit_c.a" for p in profiles for d in ("deps", ".")])
    tagger = _newest([p / "examples" / "tagger" for p in profiles])
    return library, tagger


def _compile(compiler, standard, source, library, out):
    subprocess.run(
        [compiler, standard, "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(ROOT / "include"),
         str(source), str(library), *SYSTEM_LIBS, "-o", str(out)],
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    library, tagger = _artifacts()
    if library is None or tagger is None:
        pytest.skip("the C library and the Rust tagger are built by `cargo test --workspace` first")
    for compiler in ("cc", "c++"):
        if shutil.which(compiler) is None:
            pytest.skip(f"no {compiler} on this machine")
    out = tmp_path_factory.mktemp("c-interop")
    return {
        "c": _compile("cc", "-std=c11", C_EXAMPLES / "c" / "tagger.c", library, out / "tagger_c"),
        "cpp": _compile("c++", "-std=c++17", C_EXAMPLES / "cpp" / "tagger.cpp", library, out / "tagger_cpp"),
        "rust": tagger,
        "producer": _compile(
            "cc", "-std=c11", C_EXAMPLES / "c" / "queue_producer.c", library, out / "queue_producer"
        ),
    }


def test_c_cpp_rust_and_python_share_one_thread_local_allocator(programs, name):
    subprocess.run([str(programs["rust"]), "create", name, str(64 << 20)], check=True)
    try:
        start_ms = str(int(time.time() * 1000) + 1500)
        workers = {
            "c": [str(programs["c"]), name, "1", str(COUNT), start_ms],
            "cpp": [str(programs["cpp"]), name, "2", str(COUNT), start_ms],
            "rust": [str(programs["rust"]), "tag", name, "3", str(COUNT), start_ms],
            "python": [sys.executable, "-c", PYTHON_TAGGER, name, "4", str(PYTHON_COUNT), start_ms],
        }
        running = {
            who: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for who, argv in workers.items()
        }
        lines = []
        for who, process in running.items():
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, f"{who} worker failed: {err}"
            survivors = out.splitlines()
            assert len(survivors) == 128, f"{who}: {len(survivors)} survivors"
            lines += survivors
        writers = {line.split()[0] for line in lines}
        assert writers == {"1", "2", "3", "4"}
        verified = subprocess.run(
            [str(programs["rust"]), "verify", name],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
        )
        assert verified.returncode == 0, verified.stderr
        # Every survivor is live in the allocator's own accounting, and
        # nothing else is: no block was lost or leaked between languages.
        assert verified.stdout.strip() == f"verified {len(lines)} blocks, {len(lines)} live"
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")



def test_a_c_producer_and_a_python_consumer_share_one_queue(programs, name):
    """The example pair: Python creates the queue, C fills it, Python reads
    every message in order (one producer) and the queue ends empty."""
    count = 5000
    queue = shmkit.Queue(name, capacity=1 << 20, maxsize=64)
    try:
        producer = subprocess.Popen(
            [str(programs["producer"]), name, str(count)],
            stderr=subprocess.PIPE,
            text=True,
        )
        received = []
        while True:
            message = queue.get(timeout=30)
            if message == b"stop":
                break
            received.append(message)
        _, err = producer.communicate(timeout=60)
        assert producer.returncode == 0, err
        assert received == [f"job {i}".encode() for i in range(count)]
        assert queue.qsize() == 0
        queue.check()
    finally:
        queue.close()
        queue.unlink()


def test_the_consumer_example_reads_what_the_producer_example_puts(programs, name):
    consumer = subprocess.Popen(
        [sys.executable, str(C_EXAMPLES / "python" / "queue_consumer.py"), name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    producer = subprocess.run([str(programs["producer"]), name, "100"], capture_output=True, text=True)
    out, err = consumer.communicate(timeout=60)
    assert producer.returncode == 0, producer.stderr
    assert consumer.returncode == 0, err
    assert out.splitlines()[-1] == "100 messages"
    assert out.splitlines()[:2] == ["job 0", "job 1"]
