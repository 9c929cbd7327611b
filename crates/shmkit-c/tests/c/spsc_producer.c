/* The producer end of an SPSC queue, in C: pushes messages "FIRST",
 * "FIRST+1", ... up to COUNT of them into the queue NAME, waiting for room
 * (the ring is small, so the consumer's pace sets ours). With COUNT 0 it
 * pushes one message and then holds the role for ever (a test SIGKILLs
 * it there). Run by tests/spsc.rs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmkit.h"

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: spsc_producer NAME FIRST COUNT\n");
        return 2;
    }
    long first = atol(argv[2]);
    long count = atol(argv[3]);
    shmkit_spsc *producer = NULL;
    shmkit_status status = shmkit_spsc_attach(argv[1], SHMKIT_SPSC_PRODUCER, &producer);
    if (status != SHMKIT_OK) {
        fprintf(stderr, "attach: %s: %s\n", shmkit_status_name(status), shmkit_last_error());
        return 1;
    }
    for (long i = first; i < first + (count == 0 ? 1 : count); i++) {
        char text[32];
        int len = snprintf(text, sizeof text, "%ld", i);
        status = shmkit_spsc_push(producer, text, (size_t)len, 10000);
        if (status != SHMKIT_OK) {
            fprintf(stderr, "push %ld: %s: %s\n", i, shmkit_status_name(status),
                    shmkit_last_error());
            return 1;
        }
    }
    if (count == 0) {
        for (;;) {
            pause();
        }
    }
    return shmkit_spsc_close(producer) == SHMKIT_OK ? 0 : 1;
}
