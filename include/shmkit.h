/*
 * shmkit's C API: C and C++ processes share segments, allocators and
 * offsets with Rust and Python ones.
 *
 * Generated from crates/shmkit-c with cbindgen; do not edit by hand
 * (`SHMKIT_BLESS=1 cargo test -p shmkit-c --test header` rewrites it).
 *
 * Every call returns a shmkit_status (SHMKIT_OK is 0); after a failure,
 * shmkit_last_error() gives the message on the calling thread.
 */

#ifndef SHMKIT_H
#define SHMKIT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* An open segment and its allocator (opaque). */
typedef struct shmkit_heap shmkit_heap;
/* An open message queue (opaque). */
typedef struct shmkit_queue shmkit_queue;
/* One end of an open SPSC message queue (opaque). */
typedef struct shmkit_spsc shmkit_spsc;

// `shmkit_options.flags`: freed blocks are zeroed.
#define SHMKIT_ZERO_ON_FREE 1

// Where a segment lives.
typedef enum shmkit_backend {
  // POSIX shared memory (`/dev/shm`): `name` is the shm name.
  SHMKIT_BACKEND_SHM = 0,
  // A file: `name` is its path.
  SHMKIT_BACKEND_FILE = 1,
} shmkit_backend;

// The allocator that manages a segment (the code its header records).
typedef enum shmkit_kind {
  // Lock-free linear allocation; no single frees.
  SHMKIT_KIND_BUMP = 1,
  // Linear allocation, freed in reverse order.
  SHMKIT_KIND_STACK = 2,
  // Fixed-size slots.
  SHMKIT_KIND_POOL = 3,
  // General purpose (two-level segregated fit).
  SHMKIT_KIND_FREE_LIST = 4,
  // Power-of-two blocks that split and merge.
  SHMKIT_KIND_BUDDY = 5,
  // Size classes over a page heap.
  SHMKIT_KIND_SIZE_CLASS = 6,
  // Per-thread caches over the size classes: the fastest for small
  // blocks.
  SHMKIT_KIND_THREAD_LOCAL = 7,
} shmkit_kind;

// The end of an SPSC queue a handle holds.
typedef enum shmkit_spsc_role {
  // Pushes messages.
  SHMKIT_SPSC_PRODUCER = 0,
  // Pops them.
  SHMKIT_SPSC_CONSUMER = 1,
} shmkit_spsc_role;

// The outcome of a call. `SHMKIT_OK` is 0; every other value is a failure
// whose message `shmkit_last_error()` gives on the same thread.
typedef enum shmkit_status {
  // Success.
  SHMKIT_OK = 0,
  // An argument was null, or not valid UTF-8 where a name is expected.
  SHMKIT_E_NULL_ARGUMENT = 1,
  // A handle that is not a live handle of this API (closed, or another
  // object).
  SHMKIT_E_BAD_HANDLE = 2,
  // The named segment does not exist.
  SHMKIT_E_NOT_FOUND = 3,
  // A segment with that name exists already.
  SHMKIT_E_ALREADY_EXISTS = 4,
  // The operating system refused access.
  SHMKIT_E_PERMISSION_DENIED = 5,
  // The object is not a shmkit segment (a foreign file, say).
  SHMKIT_E_NOT_SHMKIT = 6,
  // A segment of a format version this build does not read.
  SHMKIT_E_UNSUPPORTED_VERSION = 7,
  // A header or structure in the segment is damaged.
  SHMKIT_E_CORRUPT = 8,
  // A process died mid-operation: `shmkit_heap_recover` mends it.
  SHMKIT_E_NEEDS_RECOVERY = 9,
  // The segment is managed by another kind of allocator (or other
  // parameters).
  SHMKIT_E_WRONG_ALLOCATOR = 10,
  // The creator died, or creation failed, or the segment never became
  // ready.
  SHMKIT_E_NOT_READY = 11,
  // The allocator has no room for the request.
  SHMKIT_E_OUT_OF_MEMORY = 12,
  // The backing file system has no room to grow the segment.
  SHMKIT_E_NO_SPACE = 13,
  // A size or alignment that cannot be served.
  SHMKIT_E_INVALID_SIZE = 14,
  // A name that is too long or holds a forbidden character.
  SHMKIT_E_INVALID_NAME = 15,
  // The segment is in use by others (a recovery refused while they run).
  SHMKIT_E_IN_USE = 16,
  // The operation is not supported (by this allocator or backend).
  SHMKIT_E_UNSUPPORTED = 17,
  // An offset or pointer outside the segment, misaligned, or null.
  SHMKIT_E_OUT_OF_BOUNDS = 18,
  // A free of a block that is not live: a double free, a stale offset.
  SHMKIT_E_INVALID_FREE = 19,
  // A wait ran out: a lock stayed held, or a queue stayed full or empty,
  // past the time allowed.
  SHMKIT_E_TIMEOUT = 20,
  // A named root or object that does not exist.
  SHMKIT_E_NAME_NOT_FOUND = 21,
  // A named root or object that exists already.
  SHMKIT_E_NAME_EXISTS = 22,
  // A named object of another size or type.
  SHMKIT_E_WRONG_TYPE = 23,
  // A system call failed (the message names it and the reason).
  SHMKIT_E_IO = 24,
  // A Rust panic was caught at the boundary (a bug in shmkit: please
  // report the message).
  SHMKIT_E_PANIC = 25,
  // A failure this version of the C API has no code for (see the
  // message).
  SHMKIT_E_OTHER = 26,
} shmkit_status;

// How to create a segment. Start from `shmkit_options_default()`.
typedef struct shmkit_options {
  // Bytes mapped and backed at creation.
  uint64_t size;
  // The most the segment may grow to (0: `size`).
  uint64_t max_size;
  // Permission bits of a new shm object or file (as for `open`).
  uint32_t mode;
  // Bytes of the application's custom header (`shmkit_heap_custom_header`).
  uint32_t custom_header_len;
  // `SHMKIT_ZERO_ON_FREE`: freed blocks are zeroed.
  uint32_t flags;
} shmkit_options;

// An allocator's accounting (see `shmkit::AllocStats`).
typedef struct shmkit_stats {
  // Bytes in live allocations, as requested.
  uint64_t allocated_bytes;
  // The most `allocated_bytes` has been.
  uint64_t peak_bytes;
  // Live allocations.
  uint64_t live_allocations;
  // Bytes that could still be handed out (growth included).
  uint64_t free_bytes;
  // The largest single request that would succeed now.
  uint64_t largest_free_block;
  // Bytes managed once the segment has grown to its maximum.
  uint64_t capacity;
} shmkit_stats;

// What a recovery pass mended (see `shmkit::RecoveryReport`).
typedef struct shmkit_recovery_report {
  // Locks taken over from dead holders.
  uint64_t locks_taken_over;
  // Per-thread caches of dead threads given back.
  uint64_t caches_reclaimed;
  // Blocks freed that nobody could reach any more.
  uint64_t blocks_reclaimed;
  // Bytes fenced off as damaged.
  uint64_t bytes_quarantined;
  // Non-zero when the structure was rebuilt.
  uint32_t rebuilt;
  // Live allocations before and after.
  uint64_t live_before;
  // See `live_before`.
  uint64_t live_after;
} shmkit_recovery_report;

// The type of a named object: its size, alignment and a type name the
// program chooses ("job_queue v2", say). All three must match to find it.
typedef struct shmkit_named_type {
  // Bytes of the object.
  uint64_t size;
  // Its alignment (a power of two).
  uint64_t align;
  // The type's name (NUL-terminated).
  const char *type_name;
} shmkit_named_type;

// Fills a fresh object: `object` holds `size` bytes; `context` is the
// caller's pointer, passed through.
typedef void (*shmkit_named_init)(void *object, size_t size, void *context);

// A message taken from a queue: its bytes, in place in the segment, until
// `shmkit_queue_done` (or `shmkit_spsc_done`) gives them back.
typedef struct shmkit_message {
  // The bytes (in the segment, valid until the message is done).
  const void *data;
  // How many.
  size_t len;
  // Non-zero when a Python producer pickled an object (the bytes are a
  // pickle, not raw bytes).
  int32_t pickled;
  // The block's offset (what done frees).
  uint64_t offset;
} shmkit_message;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The default options: 64 MiB, no growth, mode 0600, no custom header.
struct shmkit_options shmkit_options_default(void);

// Creates the segment `name` managed by an allocator of `kind` (fails with
// `SHMKIT_E_ALREADY_EXISTS` if it exists). `options` may be null for the
// defaults.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_create(const char *name,
                                      int32_t backend,
                                      int32_t kind,
                                      const struct shmkit_options *options,
                                      shmkit_heap **out);

// Attaches the existing segment `name`, whatever allocator manages it.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_attach(const char *name, int32_t backend, shmkit_heap **out);

// Attaches `name` if it exists (it must be managed by `kind`), creates it
// otherwise; `*created` (if not null) says which.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_open_or_create(const char *name,
                                              int32_t backend,
                                              int32_t kind,
                                              const struct shmkit_options *options,
                                              shmkit_heap **out,
                                              int32_t *created);

// Closes a handle (the segment stays, for other processes and for
// `shmkit_heap_attach`; `shmkit_unlink` removes its name). Null is a no-op.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_close(shmkit_heap *heap);

// Removes the name of segment `name` (processes that map it keep it).
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_unlink(const char *name, int32_t backend);

// The allocator kind of a heap (a `shmkit_kind` value).
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_kind(const shmkit_heap *heap, int32_t *out);

// Allocates `size` bytes (aligned to 16) and stores the block's offset in
// `*offset`. `SHMKIT_E_OUT_OF_MEMORY` when there is no room.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_allocate(const shmkit_heap *heap, size_t size, uint64_t *offset);

// Allocates `size` bytes aligned to `align` (a power of two).
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_allocate_aligned(const shmkit_heap *heap,
                                                size_t size,
                                                size_t align,
                                                uint64_t *offset);

// Frees the block at `offset`. A block that is not live (a double free, a
// stale or made-up offset) is refused with `SHMKIT_E_INVALID_FREE` and
// changes nothing.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_free(const shmkit_heap *heap, uint64_t offset);

// Resizes the block at `offset` to `new_size` bytes, in place or by moving
// it (its bytes are kept up to the smaller size); `*new_offset` is where it
// is now. On failure the old block is untouched.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_reallocate(const shmkit_heap *heap,
                                          uint64_t offset,
                                          size_t new_size,
                                          uint64_t *new_offset);

// The bytes the block at `offset` can hold.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_usable_size(const shmkit_heap *heap, uint64_t offset, size_t *size);

// The allocator's accounting.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_stats(const shmkit_heap *heap, struct shmkit_stats *out);

// Walks the allocator's structure: `SHMKIT_OK`, `SHMKIT_E_NEEDS_RECOVERY`
// (a process died mid-operation) or `SHMKIT_E_CORRUPT`.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_check(const shmkit_heap *heap);

// The recovery pass: mends what processes killed mid-operation left. It
// runs alone: no other thread of this process may use the segment's
// allocator meanwhile, and unless `force` is non-zero it refuses
// (`SHMKIT_E_IN_USE`) while other live processes map the segment.
// `report` may be null.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_recover(const shmkit_heap *heap,
                                       int32_t force,
                                       struct shmkit_recovery_report *report);

// The local address of `len` bytes at `offset`, checked to lie inside the
// segment.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_pointer(const shmkit_heap *heap,
                                       uint64_t offset,
                                       size_t len,
                                       void **out);

// The offset of a local address inside the segment (one that any process
// turns back into its own address).
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_offset(const shmkit_heap *heap, const void *ptr, uint64_t *out);

// Where the segment is mapped in this process, and its current size.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_base(const shmkit_heap *heap, void **base, uint64_t *size);

// The application's custom header (reserved with
// `shmkit_options.custom_header_len`): its address and length (0 if none).
// Other processes may write it at any time.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_custom_header(const shmkit_heap *heap, void **bytes, size_t *len);

// Publishes `offset` under `name` (1 to 48 bytes), once: other processes
// find it with `shmkit_heap_get_root`.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_set_root(const shmkit_heap *heap, const char *name, uint64_t offset);

// The offset published under `name`; `SHMKIT_E_NAME_NOT_FOUND` if none.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; a handle is one this API made (or any readable object).
enum shmkit_status shmkit_heap_get_root(const shmkit_heap *heap,
                                        const char *name,
                                        uint64_t *offset);

// The offset of the object `name` of type `*type`;
// `SHMKIT_E_NAME_NOT_FOUND` if there is none, `SHMKIT_E_WRONG_TYPE` if it
// was filed as another type.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_named_find(const shmkit_heap *heap,
                                     const char *name,
                                     const struct shmkit_named_type *kind,
                                     uint64_t *offset);

// The object `name` of type `*type`, made if there is none: `init` (if not
// null) fills its fresh bytes first (else they are zero), with no lock
// held. Racing callers, in any process, all get the same object.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; `init` writes at most `size` bytes at `object`.
enum shmkit_status shmkit_named_find_or_construct(const shmkit_heap *heap,
                                                  const char *name,
                                                  const struct shmkit_named_type *kind,
                                                  shmkit_named_init init,
                                                  void *context,
                                                  uint64_t *offset);

// Removes `name` and frees its object (nothing may use it afterwards).
// `SHMKIT_E_NAME_NOT_FOUND` or `SHMKIT_E_WRONG_TYPE` change nothing.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents; nothing in this process uses the object afterwards.
enum shmkit_status shmkit_named_destroy(const shmkit_heap *heap,
                                        const char *name,
                                        const struct shmkit_named_type *kind);

// Creates the queue `name` (shared memory): `capacity` bytes for the
// messages waiting, at most `maxsize` of them (rounded up to a power of
// two; 0: 65,536). Python attaches it with `shmkit.Queue(name,
// create=False)`.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_queue_create(const char *name,
                                       uint64_t capacity,
                                       size_t maxsize,
                                       shmkit_queue **out);

// Attaches the queue `name` that another process (C, Python, Rust) made.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_queue_attach(const char *name, shmkit_queue **out);

// Closes a queue handle (the segment stays until `shmkit_unlink`). Null is
// a no-op.
//
// # Safety
//
// `queue` is null or a handle this API made, used by no other thread
// meanwhile.
enum shmkit_status shmkit_queue_close(shmkit_queue *queue);

// Puts a copy of `len` bytes. Waits for room (a free cell, and memory for
// the bytes) at most `timeout_ms` milliseconds (negative: for ever; 0: not
// at all), then fails with `SHMKIT_E_TIMEOUT`, having put nothing.
//
// # Safety
//
// Every pointer argument is null or valid for the call (`data` for `len`
// bytes), as the C API documents.
enum shmkit_status shmkit_queue_put(const shmkit_queue *queue,
                                    const void *data,
                                    size_t len,
                                    int64_t timeout_ms);

// Takes the next message, waiting at most `timeout_ms` milliseconds for
// one (negative: for ever; 0: not at all), else `SHMKIT_E_TIMEOUT`. The
// bytes stay in the segment until `shmkit_queue_done(queue, message)`.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_queue_get(const shmkit_queue *queue,
                                    int64_t timeout_ms,
                                    struct shmkit_message *message);

// Gives a message's bytes back to the queue's memory (its `data` is
// invalid afterwards). `SHMKIT_E_INVALID_FREE` for a message of another
// queue, or one given back already (unless its block was handed out
// again in between: give each message back once).
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_queue_done(const shmkit_queue *queue,
                                     const struct shmkit_message *message);

// How many messages wait in the queue now.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_queue_len(const shmkit_queue *queue, size_t *out);

// The queue's recovery pass, after processes that used it died: the
// allocator's own, then every message block no waiting message names (one
// a dead process was filling or reading) is freed; `report` (may be null)
// counts those in `blocks_reclaimed`. It runs alone: no other thread of
// this process may use the queue meanwhile, a message this process took
// and has not given back is freed too, and unless `force` is non-zero it
// refuses (`SHMKIT_E_IN_USE`) while other live processes map the segment.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_queue_recover(const shmkit_queue *queue,
                                        int32_t force,
                                        struct shmkit_recovery_report *report);

// Creates the SPSC queue `name` (shared memory), with `capacity` bytes
// for the messages waiting and at most `maxsize` of them (rounded up to a
// power of two; 0: 65,536), and takes `role` (a `shmkit_spsc_role`).
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_spsc_create(const char *name,
                                      uint64_t capacity,
                                      size_t maxsize,
                                      int32_t role,
                                      shmkit_spsc **out);

// Attaches the SPSC queue `name` another process made and takes `role`
// (`SHMKIT_E_IN_USE` while a live handle holds it).
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_spsc_attach(const char *name, int32_t role, shmkit_spsc **out);

// Closes a handle and gives its role back (the segment stays until
// `shmkit_unlink`). Null is a no-op.
//
// # Safety
//
// `queue` is null or a handle this API made, used by no other thread
// meanwhile.
enum shmkit_status shmkit_spsc_close(shmkit_spsc *queue);

// Pushes a copy of `len` bytes (a producer's call; on a consumer handle,
// `SHMKIT_E_UNSUPPORTED`; in a child forked from the holder of the role,
// `SHMKIT_E_IN_USE`). Waits for room (a
// free cell, and memory for the bytes) at most `timeout_ms` milliseconds
// (negative: for ever; 0: not at all), then fails with
// `SHMKIT_E_TIMEOUT`, having pushed nothing.
//
// # Safety
//
// Every pointer argument is null or valid for the call (`data` for `len`
// bytes), as the C API documents.
enum shmkit_status shmkit_spsc_push(const shmkit_spsc *queue,
                                    const void *data,
                                    size_t len,
                                    int64_t timeout_ms);

// Pops the next message (a consumer's call, refused elsewhere as a push
// is), waiting at most `timeout_ms`
// milliseconds for one (negative: for ever; 0: not at all), else
// `SHMKIT_E_TIMEOUT`. The bytes stay in the segment until
// `shmkit_spsc_done(queue, message)`.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_spsc_pop(const shmkit_spsc *queue,
                                   int64_t timeout_ms,
                                   struct shmkit_message *message);

// Gives a popped message's bytes back to the queue's memory (its `data`
// is invalid afterwards), from any thread, through either end; refused
// as `shmkit_queue_done` refuses.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_spsc_done(const shmkit_spsc *queue, const struct shmkit_message *message);

// How many messages wait in the queue now.
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_spsc_len(const shmkit_spsc *queue, size_t *out);

// The SPSC queue's recovery pass, as `shmkit_queue_recover`: through
// either end, once the other end's process is gone (unless `force`: it
// refuses while other live processes map the segment).
//
// # Safety
//
// Every pointer argument is null or valid for the call, as the C API
// documents.
enum shmkit_status shmkit_spsc_recover(const shmkit_spsc *queue,
                                       int32_t force,
                                       struct shmkit_recovery_report *report);

// The message of the last call that failed on this thread ("" if none
// has). The string stays valid until the next failing call on this
// thread.
const char *shmkit_last_error(void);

// The name of a status ("SHMKIT_E_OUT_OF_MEMORY"), or "SHMKIT_E_UNKNOWN"
// for a value that is none.
const char *shmkit_status_name(int32_t status);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* SHMKIT_H */
