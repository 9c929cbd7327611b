/* The smallest C program on shmkit: create a segment managed by the
 * thread-local allocator, allocate a block, publish it under a name, read
 * it back through a second handle, and remove the segment.
 *
 *     cc hello.c $(pkg-config --cflags --libs shmkit) -o hello && ./hello */
#include <stdio.h>
#include <string.h>

#include "shmkit.h"

#define CHECK(call)                                                                  \
    do {                                                                             \
        shmkit_status status_ = (call);                                              \
        if (status_ != SHMKIT_OK) {                                                  \
            fprintf(stderr, "%s: %s\n", shmkit_status_name(status_), shmkit_last_error()); \
            return 1;                                                                \
        }                                                                            \
    } while (0)

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "shmkit-hello";
    shmkit_options options = shmkit_options_default();
    options.size = 4 << 20;
    shmkit_heap *heap = NULL;
    CHECK(shmkit_heap_create(name, SHMKIT_BACKEND_SHM, SHMKIT_KIND_THREAD_LOCAL, &options, &heap));
    uint64_t offset = 0;
    void *block = NULL;
    CHECK(shmkit_heap_allocate(heap, 64, &offset));
    CHECK(shmkit_heap_pointer(heap, offset, 64, &block));
    strcpy(block, "hello from C");
    CHECK(shmkit_heap_set_root(heap, "greeting", offset));

    /* Any process would do the same: attach by name, find the root. */
    shmkit_heap *other = NULL;
    uint64_t found = 0;
    void *bytes = NULL;
    CHECK(shmkit_heap_attach(name, SHMKIT_BACKEND_SHM, &other));
    CHECK(shmkit_heap_get_root(other, "greeting", &found));
    CHECK(shmkit_heap_pointer(other, found, 64, &bytes));
    printf("%s\n", (const char *)bytes);

    CHECK(shmkit_heap_close(other));
    CHECK(shmkit_heap_close(heap));
    CHECK(shmkit_unlink(name, SHMKIT_BACKEND_SHM));
    return 0;
}
