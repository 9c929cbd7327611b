/* A C process killed inside an allocator operation: killed NAME POINT
 * OPERATION arms the named crash point (so the kill lands inside the
 * operation, not around it), says which blocks it holds, and runs the
 * operation: "allocate-large" or "free-large". It never returns from it. */
#include <stdio.h>
#include <string.h>

#include "shmkit.h"

/* Test only: exported by the library built with the crash-points feature. */
shmkit_status shmkit_test_crash_at(const char *point);

#define LARGE 8192

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: killed NAME POINT OPERATION\n");
        return 2;
    }
    shmkit_heap *heap = NULL;
    if (shmkit_heap_attach(argv[1], SHMKIT_BACKEND_SHM, &heap) != SHMKIT_OK) {
        fprintf(stderr, "attach: %s\n", shmkit_last_error());
        return 1;
    }
    uint64_t kept = 0;
    if (shmkit_heap_allocate(heap, LARGE, &kept) != SHMKIT_OK) {
        fprintf(stderr, "allocate: %s\n", shmkit_last_error());
        return 1;
    }
    printf("held %llu\n", (unsigned long long)kept);
    if (strcmp(argv[3], "free-large") == 0) {
        printf("freeing %llu\n", (unsigned long long)kept);
    }
    fflush(stdout);
    if (shmkit_test_crash_at(argv[2]) != SHMKIT_OK) {
        fprintf(stderr, "arm: %s\n", shmkit_last_error());
        return 1;
    }
    uint64_t offset = 0;
    if (strcmp(argv[3], "free-large") == 0) {
        shmkit_heap_free(heap, kept);
    } else {
        shmkit_heap_allocate(heap, LARGE, &offset);
    }
    fprintf(stderr, "killed.c: the operation returned: the point %s was not reached\n", argv[2]);
    return 3;
}
