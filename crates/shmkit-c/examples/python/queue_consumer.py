"""The Python consumer of a queue a C producer fills
(``crates/shmkit-c/examples/c/queue_producer.c``): creates the queue,
prints every message until ``stop``, then removes the queue.

    python3 queue_consumer.py NAME
"""

import sys

import shmkit

name = sys.argv[1]
jobs = shmkit.Queue(name, capacity=1 << 20, maxsize=64)
try:
    count = 0
    while True:
        message = jobs.get(timeout=30)
        if message == b"stop":
            break
        print(message.decode())
        count += 1
    print(f"{count} messages")
finally:
    jobs.close()
    jobs.unlink()
