/* A C producer on the queue a Python consumer reads (shmkit.Queue):
 *
 *     python3 crates/shmkit-c/examples/python/queue_consumer.py jobs &
 *     ./queue_producer jobs 1000
 *
 * It attaches the queue, puts COUNT messages ("job 0", "job 1", ...) and
 * then "stop", waiting for room when the queue is full. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shmkit.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: queue_producer NAME COUNT\n");
        return 2;
    }
    long count = strtol(argv[2], NULL, 10);
    shmkit_queue *queue = NULL;
    /* The consumer may still be creating the queue: try for a while. */
    shmkit_status status = SHMKIT_E_NOT_FOUND;
    for (int tries = 0; tries < 500 && status != SHMKIT_OK; tries++) {
        status = shmkit_queue_attach(argv[1], &queue);
        if (status == SHMKIT_E_NOT_FOUND || status == SHMKIT_E_NOT_READY) {
            struct timespec pause = {0, 10 * 1000 * 1000};
            nanosleep(&pause, NULL);
        } else if (status != SHMKIT_OK) {
            break;
        }
    }
    if (status != SHMKIT_OK) {
        fprintf(stderr, "attach %s: %s\n", argv[1], shmkit_last_error());
        return 1;
    }
    char text[64];
    for (long i = 0; i <= count; i++) {
        int len = i < count ? snprintf(text, sizeof text, "job %ld", i)
                            : snprintf(text, sizeof text, "stop");
        status = shmkit_queue_put(queue, text, (size_t)len, -1);
        if (status != SHMKIT_OK) {
            fprintf(stderr, "put: %s\n", shmkit_last_error());
            shmkit_queue_close(queue);
            return 1;
        }
    }
    shmkit_queue_close(queue);
    return 0;
}
