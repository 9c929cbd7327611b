/* Every error path of the C API returns its code and a message, and
 * changes nothing: a null or foreign handle, null out-pointers, a bad
 * backend or kind, a stale offset, a double free, an out-of-memory request,
 * a wrong allocator, a missing name. Run by tests/c_programs.rs, under
 * valgrind when it is installed. Argument: a unique segment name. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shmkit.h"

static int failures = 0;

/* A named object's initializer: fills it with its context's byte. */
static void fill_with(void *object, size_t size, void *context) {
    memset(object, *(const unsigned char *)context, size);
}

#define EXPECT(call, status)                                                    \
    do {                                                                        \
        shmkit_status got_ = (call);                                            \
        if (got_ != (status)) {                                                 \
            fprintf(stderr, "%s:%d: %s gave %s, expected %s (%s)\n", __FILE__,  \
                    __LINE__, #call, shmkit_status_name(got_),                  \
                    shmkit_status_name(status), shmkit_last_error());           \
            failures++;                                                         \
        } else if ((status) != SHMKIT_OK && shmkit_last_error()[0] == '\0') {   \
            fprintf(stderr, "%s:%d: %s failed without a message\n", __FILE__,   \
                    __LINE__, #call);                                           \
            failures++;                                                         \
        }                                                                       \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: errors NAME\n");
        return 2;
    }
    const char *name = argv[1];
    shmkit_heap *heap = NULL;
    uint64_t offset = 0;
    size_t size = 0;
    int32_t kind = 0;

    /* Nothing exists yet. */
    EXPECT(shmkit_heap_attach(name, SHMKIT_BACKEND_SHM, &heap), SHMKIT_E_NOT_FOUND);
    /* Null and bad arguments. */
    EXPECT(shmkit_heap_attach(NULL, SHMKIT_BACKEND_SHM, &heap), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_heap_attach(name, SHMKIT_BACKEND_SHM, NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_heap_attach(name, 42, &heap), SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_heap_create(name, SHMKIT_BACKEND_SHM, 99, NULL, &heap), SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_heap_create(name, SHMKIT_BACKEND_SHM, -1, NULL, &heap), SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_heap_create("bad/name", SHMKIT_BACKEND_SHM, SHMKIT_KIND_FREE_LIST, NULL, &heap),
           SHMKIT_E_INVALID_NAME);
    EXPECT(shmkit_heap_allocate(NULL, 64, &offset), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_heap_free(NULL, 64), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_heap_check(NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_heap_close(NULL), SHMKIT_OK);

    /* A foreign object passed as a heap: refused, not followed. */
    uint64_t not_a_heap[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    EXPECT(shmkit_heap_allocate((shmkit_heap *)not_a_heap, 64, &offset), SHMKIT_E_BAD_HANDLE);
    EXPECT(shmkit_heap_free((shmkit_heap *)not_a_heap, 64), SHMKIT_E_BAD_HANDLE);
    EXPECT(shmkit_heap_close((shmkit_heap *)not_a_heap), SHMKIT_E_BAD_HANDLE);

    shmkit_options options = shmkit_options_default();
    options.size = 1 << 20;
    options.custom_header_len = 64;
    EXPECT(shmkit_heap_create(name, SHMKIT_BACKEND_SHM, SHMKIT_KIND_FREE_LIST, &options, &heap),
           SHMKIT_OK);
    if (heap == NULL) {
        fprintf(stderr, "no heap: %s\n", shmkit_last_error());
        return 1;
    }
    EXPECT(shmkit_heap_create(name, SHMKIT_BACKEND_SHM, SHMKIT_KIND_FREE_LIST, &options, &heap),
           SHMKIT_E_ALREADY_EXISTS);
    shmkit_heap *other = NULL;
    int32_t created = -1;
    EXPECT(shmkit_heap_open_or_create(name, SHMKIT_BACKEND_SHM, SHMKIT_KIND_BUDDY, &options,
                                      &other, &created),
           SHMKIT_E_WRONG_ALLOCATOR);
    EXPECT(shmkit_heap_open_or_create(name, SHMKIT_BACKEND_SHM, SHMKIT_KIND_FREE_LIST, &options,
                                      &other, &created),
           SHMKIT_OK);
    if (created != 0) {
        fprintf(stderr, "open_or_create made an existing segment again\n");
        failures++;
    }
    EXPECT(shmkit_heap_close(other), SHMKIT_OK);
    EXPECT(shmkit_heap_kind(heap, &kind), SHMKIT_OK);
    if (kind != SHMKIT_KIND_FREE_LIST) {
        fprintf(stderr, "kind %d\n", kind);
        failures++;
    }

    /* Allocation, usable size, offsets and pointers both ways. */
    EXPECT(shmkit_heap_allocate(heap, 100, NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_heap_allocate(heap, 100, &offset), SHMKIT_OK);
    EXPECT(shmkit_heap_usable_size(heap, offset, &size), SHMKIT_OK);
    if (size < 100) {
        fprintf(stderr, "usable size %zu\n", size);
        failures++;
    }
    void *block = NULL;
    EXPECT(shmkit_heap_pointer(heap, offset, 100, &block), SHMKIT_OK);
    memset(block, 0xab, 100);
    uint64_t back = 0;
    EXPECT(shmkit_heap_offset(heap, block, &back), SHMKIT_OK);
    if (back != offset) {
        fprintf(stderr, "offset %llu came back as %llu\n", (unsigned long long)offset,
                (unsigned long long)back);
        failures++;
    }
    int on_stack = 0;
    EXPECT(shmkit_heap_offset(heap, &on_stack, &back), SHMKIT_E_OUT_OF_BOUNDS);
    EXPECT(shmkit_heap_pointer(heap, (uint64_t)1 << 40, 8, &block), SHMKIT_E_OUT_OF_BOUNDS);
    EXPECT(shmkit_heap_allocate_aligned(heap, 64, 3, &back), SHMKIT_E_INVALID_SIZE);
    EXPECT(shmkit_heap_allocate(heap, (size_t)1 << 40, &back), SHMKIT_E_OUT_OF_MEMORY);

    /* Frees: a made-up offset, then a double free. */
    EXPECT(shmkit_heap_free(heap, offset + 8), SHMKIT_E_INVALID_FREE);
    EXPECT(shmkit_heap_free(heap, (uint64_t)1 << 40), SHMKIT_E_INVALID_FREE);
    EXPECT(shmkit_heap_free(heap, offset), SHMKIT_OK);
    EXPECT(shmkit_heap_free(heap, offset), SHMKIT_E_INVALID_FREE);
    EXPECT(shmkit_heap_usable_size(heap, offset, &size), SHMKIT_E_INVALID_FREE);

    /* Reallocation keeps the bytes. */
    EXPECT(shmkit_heap_allocate(heap, 32, &offset), SHMKIT_OK);
    EXPECT(shmkit_heap_pointer(heap, offset, 32, &block), SHMKIT_OK);
    memset(block, 0x5a, 32);
    uint64_t moved = 0;
    EXPECT(shmkit_heap_reallocate(heap, offset, 5000, &moved), SHMKIT_OK);
    EXPECT(shmkit_heap_pointer(heap, moved, 5000, &block), SHMKIT_OK);
    for (int i = 0; i < 32; i++) {
        if (((unsigned char *)block)[i] != 0x5a) {
            fprintf(stderr, "byte %d lost in the move\n", i);
            failures++;
            break;
        }
    }
    EXPECT(shmkit_heap_free(heap, moved), SHMKIT_OK);

    /* Roots and the custom header. */
    EXPECT(shmkit_heap_get_root(heap, "missing", &back), SHMKIT_E_NAME_NOT_FOUND);
    EXPECT(shmkit_heap_set_root(heap, NULL, 1), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_heap_allocate(heap, 8, &offset), SHMKIT_OK);
    EXPECT(shmkit_heap_set_root(heap, "answer", offset), SHMKIT_OK);
    EXPECT(shmkit_heap_set_root(heap, "answer", offset), SHMKIT_E_NAME_EXISTS);
    EXPECT(shmkit_heap_get_root(heap, "answer", &back), SHMKIT_OK);
    if (back != offset) {
        fprintf(stderr, "root came back as %llu\n", (unsigned long long)back);
        failures++;
    }
    void *custom = NULL;
    size_t custom_len = 0;
    EXPECT(shmkit_heap_custom_header(heap, &custom, &custom_len), SHMKIT_OK);
    if (custom == NULL || custom_len != 64) {
        fprintf(stderr, "custom header %p, %zu bytes\n", custom, custom_len);
        failures++;
    }

    /* Accounting and the walk. */
    shmkit_stats stats;
    EXPECT(shmkit_heap_stats(heap, &stats), SHMKIT_OK);
    if (stats.live_allocations != 1) {
        fprintf(stderr, "%llu live\n", (unsigned long long)stats.live_allocations);
        failures++;
    }
    EXPECT(shmkit_heap_check(heap), SHMKIT_OK);

    /* Named objects: made once, found by name and type, refused as
     * another type, destroyed. */
    shmkit_named_type job = {24, 8, "c:job"};
    shmkit_named_type wrong = {16, 8, "c:job"};
    shmkit_named_type nameless = {24, 8, NULL};
    unsigned char seven = 7;
    uint64_t made = 0, again = 0, named = 0;
    EXPECT(shmkit_named_find(heap, "job", &job, &named), SHMKIT_E_NAME_NOT_FOUND);
    EXPECT(shmkit_named_find_or_construct(heap, "job", &job, fill_with, &seven, &made), SHMKIT_OK);
    EXPECT(shmkit_named_find_or_construct(heap, "job", &job, NULL, NULL, &again), SHMKIT_OK);
    EXPECT(shmkit_named_find(heap, "job", &job, &named), SHMKIT_OK);
    if (made != again || made != named) {
        fprintf(stderr, "named object at %llu, %llu, %llu\n", (unsigned long long)made,
                (unsigned long long)again, (unsigned long long)named);
        failures++;
    }
    void *object = NULL;
    EXPECT(shmkit_heap_pointer(heap, named, 24, &object), SHMKIT_OK);
    if (((unsigned char *)object)[23] != 7) {
        fprintf(stderr, "the initializer did not run\n");
        failures++;
    }
    EXPECT(shmkit_named_find(heap, "job", &wrong, &named), SHMKIT_E_WRONG_TYPE);
    EXPECT(shmkit_named_find(heap, "job", &nameless, &named), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_named_find(heap, "job", NULL, &named), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_named_find(heap, "", &job, &named), SHMKIT_E_INVALID_NAME);
    EXPECT(shmkit_named_destroy(heap, "job", &wrong), SHMKIT_E_WRONG_TYPE);
    EXPECT(shmkit_named_destroy(heap, "job", &job), SHMKIT_OK);
    EXPECT(shmkit_named_destroy(heap, "job", &job), SHMKIT_E_NAME_NOT_FOUND);

    /* A second handle on the same segment sees the same block. */
    EXPECT(shmkit_heap_attach(name, SHMKIT_BACKEND_SHM, &other), SHMKIT_OK);
    EXPECT(shmkit_heap_free(other, offset), SHMKIT_OK);
    EXPECT(shmkit_heap_free(heap, offset), SHMKIT_E_INVALID_FREE);
    EXPECT(shmkit_heap_close(other), SHMKIT_OK);

    /* A bump allocator frees nothing single. */
    shmkit_heap *bump = NULL;
    char bump_name[256];
    snprintf(bump_name, sizeof bump_name, "%s-bump", name);
    EXPECT(shmkit_heap_create(bump_name, SHMKIT_BACKEND_SHM, SHMKIT_KIND_BUMP, &options, &bump),
           SHMKIT_OK);
    EXPECT(shmkit_heap_allocate(bump, 64, &offset), SHMKIT_OK);
    EXPECT(shmkit_heap_free(bump, offset), SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_named_find_or_construct(bump, "job", &job, NULL, NULL, &made),
           SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_heap_usable_size(bump, offset, &size), SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_heap_close(bump), SHMKIT_OK);
    EXPECT(shmkit_unlink(bump_name, SHMKIT_BACKEND_SHM), SHMKIT_OK);

    /* The message queue: timeouts, a full ring, a message given back
     * twice, a segment that holds no queue, handles that are not ones. */
    char queue_name[256];
    snprintf(queue_name, sizeof queue_name, "%s-queue", name);
    shmkit_queue *queue = NULL;
    shmkit_message message;
    size_t waiting = 0;
    EXPECT(shmkit_queue_attach(queue_name, &queue), SHMKIT_E_NOT_FOUND);
    EXPECT(shmkit_queue_attach(name, &queue), SHMKIT_E_WRONG_ALLOCATOR);
    EXPECT(shmkit_queue_create(queue_name, 1 << 16, 4, NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_queue_create(queue_name, 1 << 16, 4, &queue), SHMKIT_OK);
    EXPECT(shmkit_queue_get(queue, 0, &message), SHMKIT_E_TIMEOUT);
    EXPECT(shmkit_queue_get(queue, 20, &message), SHMKIT_E_TIMEOUT);
    EXPECT(shmkit_queue_get(queue, 0, NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_queue_put(queue, NULL, 5, 0), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_queue_put((shmkit_queue *)not_a_heap, "x", 1, 0), SHMKIT_E_BAD_HANDLE);
    EXPECT(shmkit_queue_get((shmkit_queue *)heap, 0, &message), SHMKIT_E_BAD_HANDLE);
    for (int i = 0; i < 4; i++) {
        char text[8];
        snprintf(text, sizeof text, "m%d", i);
        EXPECT(shmkit_queue_put(queue, text, strlen(text), 0), SHMKIT_OK);
    }
    EXPECT(shmkit_queue_put(queue, "full", 4, 0), SHMKIT_E_TIMEOUT);
    EXPECT(shmkit_queue_put(queue, "full", 4, 20), SHMKIT_E_TIMEOUT);
    EXPECT(shmkit_queue_len(queue, &waiting), SHMKIT_OK);
    if (waiting != 4) {
        fprintf(stderr, "%zu messages waiting\n", waiting);
        failures++;
    }
    EXPECT(shmkit_queue_get(queue, -1, &message), SHMKIT_OK);
    if (message.len != 2 || memcmp(message.data, "m0", 2) != 0 || message.pickled) {
        fprintf(stderr, "first message: %zu bytes\n", message.len);
        failures++;
    }
    EXPECT(shmkit_queue_done(queue, &message), SHMKIT_OK);
    EXPECT(shmkit_queue_done(queue, &message), SHMKIT_E_INVALID_FREE);
    EXPECT(shmkit_queue_done(queue, NULL), SHMKIT_E_NULL_ARGUMENT);
    for (int i = 1; i < 4; i++) {
        EXPECT(shmkit_queue_get(queue, 0, &message), SHMKIT_OK);
        EXPECT(shmkit_queue_done(queue, &message), SHMKIT_OK);
    }
    EXPECT(shmkit_queue_close(queue), SHMKIT_OK);
    EXPECT(shmkit_unlink(queue_name, SHMKIT_BACKEND_SHM), SHMKIT_OK);

    /* The SPSC queue: one live handle per role, the wrong role's call, a
     * bad role, timeouts, a full ring, a message given back twice, a
     * segment that holds another kind of queue. */
    char spsc_name[256];
    snprintf(spsc_name, sizeof spsc_name, "%s-spsc", name);
    shmkit_spsc *producer = NULL, *consumer = NULL, *second = NULL;
    EXPECT(shmkit_spsc_attach(spsc_name, SHMKIT_SPSC_CONSUMER, &consumer), SHMKIT_E_NOT_FOUND);
    EXPECT(shmkit_spsc_create(spsc_name, 1 << 16, 4, 7, &producer), SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_spsc_create(spsc_name, 1 << 16, 4, SHMKIT_SPSC_PRODUCER, NULL),
           SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_spsc_create(spsc_name, 1 << 16, 4, SHMKIT_SPSC_PRODUCER, &producer), SHMKIT_OK);
    EXPECT(shmkit_spsc_attach(spsc_name, SHMKIT_SPSC_PRODUCER, &second), SHMKIT_E_IN_USE);
    EXPECT(shmkit_spsc_attach(spsc_name, SHMKIT_SPSC_CONSUMER, &consumer), SHMKIT_OK);
    EXPECT(shmkit_spsc_attach(spsc_name, SHMKIT_SPSC_CONSUMER, &second), SHMKIT_E_IN_USE);
    EXPECT(shmkit_spsc_attach(name, SHMKIT_SPSC_CONSUMER, &second), SHMKIT_E_WRONG_ALLOCATOR);
    /* An MPMC queue is not an SPSC queue, nor the other way round. */
    EXPECT(shmkit_queue_create(queue_name, 1 << 16, 4, &queue), SHMKIT_OK);
    EXPECT(shmkit_spsc_attach(queue_name, SHMKIT_SPSC_CONSUMER, &second), SHMKIT_E_CORRUPT);
    EXPECT(shmkit_queue_attach(spsc_name, &queue), SHMKIT_E_CORRUPT);
    EXPECT(shmkit_queue_close(queue), SHMKIT_OK);
    EXPECT(shmkit_unlink(queue_name, SHMKIT_BACKEND_SHM), SHMKIT_OK);
    EXPECT(shmkit_spsc_pop(producer, 0, &message), SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_spsc_done(producer, NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_spsc_push(consumer, "x", 1, 0), SHMKIT_E_UNSUPPORTED);
    EXPECT(shmkit_spsc_pop(consumer, 0, &message), SHMKIT_E_TIMEOUT);
    EXPECT(shmkit_spsc_pop(consumer, 20, &message), SHMKIT_E_TIMEOUT);
    EXPECT(shmkit_spsc_pop(consumer, 0, NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_spsc_push(producer, NULL, 5, 0), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_spsc_push((shmkit_spsc *)heap, "x", 1, 0), SHMKIT_E_BAD_HANDLE);
    EXPECT(shmkit_spsc_pop(NULL, 0, &message), SHMKIT_E_NULL_ARGUMENT);
    for (int i = 0; i < 4; i++) {
        char text[8];
        snprintf(text, sizeof text, "s%d", i);
        EXPECT(shmkit_spsc_push(producer, text, strlen(text), 0), SHMKIT_OK);
    }
    EXPECT(shmkit_spsc_push(producer, "full", 4, 0), SHMKIT_E_TIMEOUT);
    EXPECT(shmkit_spsc_push(producer, "full", 4, 20), SHMKIT_E_TIMEOUT);
    EXPECT(shmkit_spsc_len(consumer, &waiting), SHMKIT_OK);
    EXPECT(shmkit_spsc_len(consumer, NULL), SHMKIT_E_NULL_ARGUMENT);
    if (waiting != 4) {
        fprintf(stderr, "%zu spsc messages waiting\n", waiting);
        failures++;
    }
    for (int i = 0; i < 4; i++) {
        char text[8];
        snprintf(text, sizeof text, "s%d", i);
        EXPECT(shmkit_spsc_pop(consumer, -1, &message), SHMKIT_OK);
        if (message.len != strlen(text) || memcmp(message.data, text, message.len) != 0) {
            fprintf(stderr, "spsc message %d: %zu bytes\n", i, message.len);
            failures++;
        }
        EXPECT(shmkit_spsc_done(consumer, &message), SHMKIT_OK);
    }
    EXPECT(shmkit_spsc_done(consumer, &message), SHMKIT_E_INVALID_FREE);
    EXPECT(shmkit_spsc_done(consumer, NULL), SHMKIT_E_NULL_ARGUMENT);
    /* A message that can never fit fails at once, even with no timeout. */
    EXPECT(shmkit_spsc_push(producer, &message, (size_t)1 << 40, -1), SHMKIT_E_OUT_OF_MEMORY);
    /* A forked child holds a copy of the handle, not the role. */
    pid_t child = fork();
    if (child == 0) {
        failures = 0;
        EXPECT(shmkit_spsc_push(producer, "child", 5, 0), SHMKIT_E_IN_USE);
        EXPECT(shmkit_spsc_pop(consumer, 0, &message), SHMKIT_E_IN_USE);
        _exit(failures == 0 ? 0 : 1);
    }
    int child_status = 0;
    if (child < 0 || waitpid(child, &child_status, 0) != child || !WIFEXITED(child_status) ||
        WEXITSTATUS(child_status) != 0) {
        fprintf(stderr, "the forked child's checks failed\n");
        failures++;
    }
    EXPECT(shmkit_spsc_push(producer, "parent", 6, 0), SHMKIT_OK);
    /* A message given back to another queue than its own is refused. */
    EXPECT(shmkit_queue_create(queue_name, 1 << 16, 4, &queue), SHMKIT_OK);
    EXPECT(shmkit_queue_put(queue, "mpmc", 4, 0), SHMKIT_OK);
    EXPECT(shmkit_spsc_pop(consumer, 0, &message), SHMKIT_OK);
    EXPECT(shmkit_queue_done(queue, &message), SHMKIT_E_INVALID_FREE);
    EXPECT(shmkit_spsc_done(consumer, &message), SHMKIT_OK);
    EXPECT(shmkit_queue_close(queue), SHMKIT_OK);
    EXPECT(shmkit_unlink(queue_name, SHMKIT_BACKEND_SHM), SHMKIT_OK);
    /* A role given back is free for the next handle. */
    EXPECT(shmkit_spsc_close(producer), SHMKIT_OK);
    EXPECT(shmkit_spsc_attach(spsc_name, SHMKIT_SPSC_PRODUCER, &producer), SHMKIT_OK);
    EXPECT(shmkit_spsc_close(producer), SHMKIT_OK);
    EXPECT(shmkit_spsc_close(consumer), SHMKIT_OK);
    EXPECT(shmkit_spsc_close(NULL), SHMKIT_OK);
    EXPECT(shmkit_spsc_recover(NULL, 0, NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_queue_recover(NULL, 0, NULL), SHMKIT_E_NULL_ARGUMENT);
    EXPECT(shmkit_queue_recover((shmkit_queue *)heap, 0, NULL), SHMKIT_E_BAD_HANDLE);
    EXPECT(shmkit_unlink(spsc_name, SHMKIT_BACKEND_SHM), SHMKIT_OK);

    EXPECT(shmkit_heap_close(heap), SHMKIT_OK);
    EXPECT(shmkit_unlink(name, SHMKIT_BACKEND_SHM), SHMKIT_OK);
    EXPECT(shmkit_unlink(name, SHMKIT_BACKEND_SHM), SHMKIT_E_NOT_FOUND);
    if (strcmp(shmkit_status_name(SHMKIT_E_OUT_OF_MEMORY), "SHMKIT_E_OUT_OF_MEMORY") != 0 ||
        strcmp(shmkit_status_name(12345), "SHMKIT_E_UNKNOWN") != 0) {
        fprintf(stderr, "status names\n");
        failures++;
    }
    if (failures == 0) {
        printf("errors: all checks passed\n");
    }
    return failures == 0 ? 0 : 1;
}
