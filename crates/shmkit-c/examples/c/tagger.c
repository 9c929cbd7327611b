/* The C tagger: tagger NAME WRITER COUNT START_MS (see tagger.h). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "shmkit.h"
#include "tagger.h"

struct block {
    uint64_t offset, size, seq;
};

static int fail(const char *what, shmkit_status status) {
    fprintf(stderr, "tagger.c: %s: %s: %s\n", what, shmkit_status_name(status), shmkit_last_error());
    return 1;
}

static int verify(shmkit_heap *heap, uint64_t writer, const struct block *b) {
    void *local = NULL;
    shmkit_status status = shmkit_heap_pointer(heap, b->offset, b->size, &local);
    if (status != SHMKIT_OK) {
        return fail("pointer", status);
    }
    const uint8_t *bytes = local;
    for (uint64_t i = 0; i < b->size; i++) {
        if (bytes[i] != tag_byte(writer, b->seq, i)) {
            fprintf(stderr, "tagger.c: block at %llu (seq %llu) byte %llu overwritten\n",
                    (unsigned long long)b->offset, (unsigned long long)b->seq,
                    (unsigned long long)i);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: tagger NAME WRITER COUNT START_MS\n");
        return 2;
    }
    uint64_t writer = strtoull(argv[2], NULL, 10);
    uint64_t count = strtoull(argv[3], NULL, 10);
    shmkit_heap *heap = NULL;
    shmkit_status status = shmkit_heap_attach(argv[1], SHMKIT_BACKEND_SHM, &heap);
    if (status != SHMKIT_OK) {
        return fail("attach", status);
    }
    tagger_wait_until(strtoull(argv[4], NULL, 10));
    struct block live[TAGGER_LIVE + 1];
    size_t n = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ (writer * 0x100000001b3ull);
    for (uint64_t seq = 0; seq < count; seq++) {
        uint64_t size = 16 + tagger_next(&rng) % 2000;
        uint64_t offset = 0;
        status = shmkit_heap_allocate(heap, size, &offset);
        if (status != SHMKIT_OK) {
            return fail("allocate", status);
        }
        void *local = NULL;
        status = shmkit_heap_pointer(heap, offset, size, &local);
        if (status != SHMKIT_OK) {
            return fail("pointer", status);
        }
        uint8_t *bytes = local;
        for (uint64_t i = 0; i < size; i++) {
            bytes[i] = tag_byte(writer, seq, i);
        }
        live[n].offset = offset;
        live[n].size = size;
        live[n].seq = seq;
        n++;
        if (n > TAGGER_LIVE) {
            size_t pick = tagger_next(&rng) % n;
            if (verify(heap, writer, &live[pick]) != 0) {
                return 1;
            }
            status = shmkit_heap_free(heap, live[pick].offset);
            if (status != SHMKIT_OK) {
                return fail("free", status);
            }
            live[pick] = live[--n];
        }
    }
    for (size_t k = 0; k < n; k++) {
        if (verify(heap, writer, &live[k]) != 0) {
            return 1;
        }
        printf("%llu %llu %llu %llu\n", (unsigned long long)writer,
               (unsigned long long)live[k].offset, (unsigned long long)live[k].size,
               (unsigned long long)live[k].seq);
    }
    shmkit_heap_close(heap);
    return 0;
}
