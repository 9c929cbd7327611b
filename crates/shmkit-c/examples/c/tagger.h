/* The tagging worker both the C and the C++ taggers run: allocate blocks
 * of varied sizes, fill each with a pattern of (writer, sequence, index),
 * free some (checking their bytes first), and at the end check and print
 * the survivors as "writer offset size sequence" lines, leaving them
 * allocated for the coordinator to verify. */
#ifndef TAGGER_H
#define TAGGER_H

#include <stdint.h>
#include <time.h>

#define TAGGER_LIVE 128

static inline uint8_t tag_byte(uint64_t writer, uint64_t seq, uint64_t i) {
    return (uint8_t)(writer * 131u + seq * 31u + i * 7u);
}

static inline uint64_t tagger_next(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

/* Waits until `start_ms` (milliseconds since the epoch), so that every
 * worker, whatever its start-up time, runs at the same time. */
static inline void tagger_wait_until(uint64_t start_ms) {
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        uint64_t ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
        if (ms >= start_ms) {
            return;
        }
        struct timespec pause = {0, 200000};
        nanosleep(&pause, NULL);
    }
}

#endif
