/* Takes COUNT messages from the queue NAME (KIND "mpmc" or "spsc", as the
 * consumer), prints "held", and keeps them for ever without giving them
 * back: a test SIGKILLs it there, so their blocks are what a dead consumer
 * leaves. Run by tests/queue_recovery.rs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmkit.h"

static int fail(const char *what, shmkit_status status) {
    fprintf(stderr, "%s: %s: %s\n", what, shmkit_status_name(status), shmkit_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: queue_holder NAME mpmc|spsc COUNT\n");
        return 2;
    }
    int spsc = strcmp(argv[2], "spsc") == 0;
    long count = atol(argv[3]);
    shmkit_queue *queue = NULL;
    shmkit_spsc *consumer = NULL;
    shmkit_status status = spsc ? shmkit_spsc_attach(argv[1], SHMKIT_SPSC_CONSUMER, &consumer)
                                : shmkit_queue_attach(argv[1], &queue);
    if (status != SHMKIT_OK) {
        return fail("attach", status);
    }
    for (long i = 0; i < count; i++) {
        shmkit_message message;
        status = spsc ? shmkit_spsc_pop(consumer, 10000, &message)
                      : shmkit_queue_get(queue, 10000, &message);
        if (status != SHMKIT_OK) {
            return fail("take", status);
        }
    }
    printf("held\n");
    fflush(stdout);
    for (;;) {
        pause();
    }
}
