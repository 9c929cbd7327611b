// shmkit for C++17: RAII handles and typed pointers over the C API
// (shmkit.h), in the vocabulary of Hermes SHM (Allocate, Free, NewObj,
// DelObj, FullPtr).
//
//     shmkit::Heap heap = shmkit::Heap::OpenOrCreate("jobs", shmkit::Kind::ThreadLocal);
//     shmkit::FullPtr<Job> job = heap.NewObj<Job>(42);
//     heap.SetRoot("first job", job.offset());    // other processes find it
//     heap.DelObj(job);
//
// Failures throw shmkit::Error (a std::runtime_error with the status and
// the library's message). Every member is inline and calls the C API once:
// nothing is added on the way.
#ifndef SHMKIT_HPP
#define SHMKIT_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "shmkit.h"

namespace shmkit {

/// A failed call: its status and the library's message.
class Error : public std::runtime_error {
public:
    Error(shmkit_status status, const char *message)
        : std::runtime_error(std::string(shmkit_status_name(status)) + ": " + message),
          status_(status) {}

    /// The C API's status code.
    shmkit_status status() const noexcept { return status_; }

private:
    shmkit_status status_;
};

namespace detail {
[[noreturn]] inline void fail(shmkit_status status) { throw Error(status, shmkit_last_error()); }

inline void check(shmkit_status status) {
    if (status != SHMKIT_OK) {
        fail(status);
    }
}
}  // namespace detail

/// The allocator that manages a segment.
enum class Kind : int32_t {
    Bump = SHMKIT_KIND_BUMP,
    Stack = SHMKIT_KIND_STACK,
    Pool = SHMKIT_KIND_POOL,
    FreeList = SHMKIT_KIND_FREE_LIST,
    Buddy = SHMKIT_KIND_BUDDY,
    SizeClass = SHMKIT_KIND_SIZE_CLASS,
    ThreadLocal = SHMKIT_KIND_THREAD_LOCAL,
};

/// Where a segment lives.
enum class Backend : int32_t {
    Shm = SHMKIT_BACKEND_SHM,
    File = SHMKIT_BACKEND_FILE,
};

/// A block in a segment: its address here and its offset, which means the
/// same in every process that maps the segment.
template <typename T>
class FullPtr {
public:
    FullPtr() noexcept = default;
    FullPtr(T *local, uint64_t offset) noexcept : local_(local), offset_(offset) {}

    T *get() const noexcept { return local_; }
    template <typename U = T>
    std::enable_if_t<!std::is_void<U>::value, U &> operator*() const noexcept {
        return *local_;
    }
    T *operator->() const noexcept { return local_; }
    template <typename U = T>
    std::enable_if_t<!std::is_void<U>::value, U &> operator[](std::size_t index) const noexcept {
        return local_[index];
    }
    /// The offset in the segment (what to send to another process).
    uint64_t offset() const noexcept { return offset_; }
    explicit operator bool() const noexcept { return local_ != nullptr; }
    bool operator==(const FullPtr &other) const noexcept { return offset_ == other.offset_; }
    bool operator!=(const FullPtr &other) const noexcept { return offset_ != other.offset_; }

    /// The same block seen as another type.
    template <typename U>
    FullPtr<U> cast() const noexcept {
        return FullPtr<U>(reinterpret_cast<U *>(local_), offset_);
    }

private:
    T *local_ = nullptr;
    uint64_t offset_ = 0;
};

/// How to create a segment.
struct Options {
    uint64_t size = 64ull << 20;
    uint64_t max_size = 0;
    uint32_t mode = 0600;
    uint32_t custom_header_len = 0;
    bool zero_on_free = false;

    shmkit_options raw() const noexcept {
        shmkit_options options = shmkit_options_default();
        options.size = size;
        options.max_size = max_size;
        options.mode = mode;
        options.custom_header_len = custom_header_len;
        options.flags = zero_on_free ? SHMKIT_ZERO_ON_FREE : 0;
        return options;
    }
};

/// A segment and its allocator, open in this process; closed when the
/// object goes. Move-only; one Heap may be used by many threads at once.
class Heap {
public:
    /// Creates the segment `name` (it must not exist).
    static Heap Create(const std::string &name, Kind kind, const Options &options = Options(),
                       Backend backend = Backend::Shm) {
        shmkit_options raw = options.raw();
        shmkit_heap *heap = nullptr;
        detail::check(shmkit_heap_create(name.c_str(), static_cast<int32_t>(backend),
                                         static_cast<int32_t>(kind), &raw, &heap));
        return Heap(heap);
    }

    /// Attaches the existing segment `name`.
    static Heap Attach(const std::string &name, Backend backend = Backend::Shm) {
        shmkit_heap *heap = nullptr;
        detail::check(shmkit_heap_attach(name.c_str(), static_cast<int32_t>(backend), &heap));
        return Heap(heap);
    }

    /// Attaches `name` if it exists (managed by `kind`), creates it
    /// otherwise; `*created` says which.
    static Heap OpenOrCreate(const std::string &name, Kind kind, const Options &options = Options(),
                             Backend backend = Backend::Shm, bool *created = nullptr) {
        shmkit_options raw = options.raw();
        shmkit_heap *heap = nullptr;
        int32_t made = 0;
        detail::check(shmkit_heap_open_or_create(name.c_str(), static_cast<int32_t>(backend),
                                                 static_cast<int32_t>(kind), &raw, &heap, &made));
        if (created != nullptr) {
            *created = made != 0;
        }
        return Heap(heap);
    }

    /// Removes the segment's name (processes that map it keep it).
    static void Unlink(const std::string &name, Backend backend = Backend::Shm) {
        detail::check(shmkit_unlink(name.c_str(), static_cast<int32_t>(backend)));
    }

    Heap(Heap &&other) noexcept
        : heap_(std::exchange(other.heap_, nullptr)), base_(std::exchange(other.base_, nullptr)) {}
    Heap &operator=(Heap &&other) noexcept {
        if (this != &other) {
            reset();
            heap_ = std::exchange(other.heap_, nullptr);
            base_ = std::exchange(other.base_, nullptr);
        }
        return *this;
    }
    Heap(const Heap &) = delete;
    Heap &operator=(const Heap &) = delete;
    ~Heap() { reset(); }

    /// The C handle, for calls this header does not wrap.
    shmkit_heap *raw() const noexcept { return heap_; }

    Kind kind() const {
        int32_t kind = 0;
        detail::check(shmkit_heap_kind(heap_, &kind));
        return static_cast<Kind>(kind);
    }

    /// Allocates `size` bytes aligned to `align`; throws on failure.
    uint64_t AllocateOffset(std::size_t size, std::size_t align = 16) const {
        uint64_t offset = 0;
        shmkit_status status = shmkit_heap_allocate_aligned(heap_, size, align, &offset);
        if (status != SHMKIT_OK) {
            detail::fail(status);
        }
        return offset;
    }

    /// Allocates `size` bytes as a FullPtr.
    FullPtr<void> Allocate(std::size_t size, std::size_t align = 16) const {
        uint64_t offset = AllocateOffset(size, align);
        return FullPtr<void>(Fresh(offset), offset);
    }

    /// Frees the block at `offset` (a block that is not live throws, and
    /// nothing changes).
    void FreeOffset(uint64_t offset) const {
        shmkit_status status = shmkit_heap_free(heap_, offset);
        if (status != SHMKIT_OK) {
            detail::fail(status);
        }
    }

    template <typename T>
    void Free(const FullPtr<T> &ptr) const {
        FreeOffset(ptr.offset());
    }

    /// Resizes a block, keeping its bytes; the old FullPtr is spent.
    FullPtr<void> Reallocate(const FullPtr<void> &ptr, std::size_t new_size) const {
        uint64_t offset = 0;
        detail::check(shmkit_heap_reallocate(heap_, ptr.offset(), new_size, &offset));
        return FullPtr<void>(Fresh(offset), offset);
    }

    /// The bytes the block at `offset` can hold.
    std::size_t UsableSize(uint64_t offset) const {
        std::size_t size = 0;
        detail::check(shmkit_heap_usable_size(heap_, offset, &size));
        return size;
    }

    /// Constructs a T in a new block. Only types that hold no addresses
    /// belong in a segment; trivially copyable ones are what C++ can check.
    template <typename T, typename... Args>
    FullPtr<T> NewObj(Args &&...args) const {
        static_assert(std::is_trivially_copyable<T>::value,
                      "a T in a segment must be trivially copyable (no addresses, no vtable)");
        uint64_t offset = AllocateOffset(sizeof(T), alignof(T));
        T *local = new (Fresh(offset)) T(std::forward<Args>(args)...);
        return FullPtr<T>(local, offset);
    }

    /// Destroys and frees an object NewObj made.
    template <typename T>
    void DelObj(const FullPtr<T> &ptr) const {
        ptr.get()->~T();
        FreeOffset(ptr.offset());
    }

    /// The block at `offset` as a T in this process (checked to lie in the
    /// segment).
    template <typename T>
    FullPtr<T> Resolve(uint64_t offset, std::size_t count = 1) const {
        return FullPtr<T>(Local<T>(offset, sizeof(T) * count), offset);
    }

    /// The offset of a local address in the segment.
    uint64_t OffsetOf(const void *local) const {
        uint64_t offset = 0;
        detail::check(shmkit_heap_offset(heap_, local, &offset));
        return offset;
    }

    /// Publishes `offset` under `name`, once.
    void SetRoot(const std::string &name, uint64_t offset) const {
        detail::check(shmkit_heap_set_root(heap_, name.c_str(), offset));
    }

    /// The offset published under `name`, if any.
    std::optional<uint64_t> Root(const std::string &name) const {
        uint64_t offset = 0;
        shmkit_status status = shmkit_heap_get_root(heap_, name.c_str(), &offset);
        if (status == SHMKIT_E_NAME_NOT_FOUND) {
            return std::nullopt;
        }
        detail::check(status);
        return offset;
    }

    /// The object `name` of type T filed as `type_name`, made if there is
    /// none (constructed from `args`, with no lock held); racing callers,
    /// in any process and language, all get the same object. The
    /// constructor must not throw: it runs inside the C call.
    template <typename T, typename... Args>
    FullPtr<T> FindOrConstruct(const std::string &name, const char *type_name,
                               Args &&...args) const {
        static_assert(std::is_trivially_copyable<T>::value,
                      "a T in a segment must be trivially copyable (no addresses, no vtable)");
        static_assert(std::is_nothrow_constructible<T, Args...>::value,
                      "the constructor runs inside a C call: it must be noexcept");
        shmkit_named_type type{sizeof(T), alignof(T), type_name};
        auto make = [&](void *object) noexcept { new (object) T(std::forward<Args>(args)...); };
        using Make = decltype(make);
        uint64_t offset = 0;
        detail::check(shmkit_named_find_or_construct(
            heap_, name.c_str(), &type,
            [](void *object, std::size_t, void *context) {
                (*static_cast<Make *>(context))(object);
            },
            &make, &offset));
        return Resolve<T>(offset);
    }

    /// The object `name` of type T filed as `type_name`, if there is one
    /// (an object filed as another type throws SHMKIT_E_WRONG_TYPE).
    template <typename T>
    std::optional<FullPtr<T>> Find(const std::string &name, const char *type_name) const {
        shmkit_named_type type{sizeof(T), alignof(T), type_name};
        uint64_t offset = 0;
        shmkit_status status = shmkit_named_find(heap_, name.c_str(), &type, &offset);
        if (status == SHMKIT_E_NAME_NOT_FOUND) {
            return std::nullopt;
        }
        detail::check(status);
        return Resolve<T>(offset);
    }

    /// Removes `name` and frees its object (nothing may use it afterwards).
    template <typename T>
    void Destroy(const std::string &name, const char *type_name) const {
        shmkit_named_type type{sizeof(T), alignof(T), type_name};
        detail::check(shmkit_named_destroy(heap_, name.c_str(), &type));
    }

    shmkit_stats Stats() const {
        shmkit_stats stats{};
        detail::check(shmkit_heap_stats(heap_, &stats));
        return stats;
    }

    /// The integrity walk (throws Error with SHMKIT_E_NEEDS_RECOVERY or
    /// SHMKIT_E_CORRUPT).
    void Check() const { detail::check(shmkit_heap_check(heap_)); }

    /// The recovery pass: alone (no other thread of this process uses the
    /// heap meanwhile); refused while other processes map the segment
    /// unless `force`.
    shmkit_recovery_report Recover(bool force = false) const {
        shmkit_recovery_report report{};
        detail::check(shmkit_heap_recover(heap_, force ? 1 : 0, &report));
        return report;
    }

private:
    explicit Heap(shmkit_heap *heap) : heap_(heap) {
        // The mapping never moves (the segment grows in place), so a block
        // the allocator just handed out is at base + offset.
        shmkit_status status = shmkit_heap_base(heap_, &base_, nullptr);
        if (status != SHMKIT_OK) {
            shmkit_heap_close(heap_);
            heap_ = nullptr;
            detail::fail(status);
        }
    }

    /// A block the allocator just handed out, in this process.
    void *Fresh(uint64_t offset) const noexcept { return static_cast<char *>(base_) + offset; }

    void reset() noexcept {
        if (heap_ != nullptr) {
            shmkit_heap_close(heap_);
            heap_ = nullptr;
        }
    }

    template <typename T>
    T *Local(uint64_t offset, std::size_t len) const {
        void *local = nullptr;
        detail::check(shmkit_heap_pointer(heap_, offset, len, &local));
        return static_cast<T *>(local);
    }

    shmkit_heap *heap_ = nullptr;
    void *base_ = nullptr;
};

namespace detail {
template <typename Handle, typename Calls>
class QueueBase;
}  // namespace detail

/// A message taken from a queue: its bytes, in place in the segment, given
/// back to the queue's memory when the Message goes. It keeps its queue's
/// handle open until then. Move-only.
class Message {
public:
    Message(Message &&other) noexcept = default;
    Message &operator=(Message &&other) noexcept {
        if (this != &other) {
            reset();
            message_ = other.message_;
            owner_ = std::move(other.owner_);
            done_ = other.done_;
        }
        return *this;
    }
    Message(const Message &) = delete;
    Message &operator=(const Message &) = delete;
    ~Message() { reset(); }

    const void *data() const noexcept { return message_.data; }
    std::size_t size() const noexcept { return message_.len; }
    /// True when a Python producer pickled an object.
    bool pickled() const noexcept { return message_.pickled != 0; }
    std::string str() const { return std::string(static_cast<const char *>(data()), size()); }

    /// Gives the bytes back now (the Message is empty afterwards); throws
    /// if the queue refuses.
    void Done() {
        if (owner_) {
            std::shared_ptr<const void> owner = std::move(owner_);
            detail::check(done_(owner.get(), &message_));
        }
    }

private:
    template <typename, typename>
    friend class detail::QueueBase;
    using DoneCall = shmkit_status (*)(const void *, const shmkit_message *);
    Message(const shmkit_message &message, std::shared_ptr<const void> owner, DoneCall done)
        : message_(message), owner_(std::move(owner)), done_(done) {}
    void reset() noexcept {
        if (owner_) {
            // A destructor cannot throw: a refusal (a message given back
            // already) changes nothing, so there is nothing to undo.
            done_(owner_.get(), &message_);
            owner_.reset();
        }
    }

    shmkit_message message_{};
    std::shared_ptr<const void> owner_;
    DoneCall done_ = nullptr;
};

namespace detail {

/// What both queues share: the handle (closed when the queue and every
/// Message taken from it have gone), put and get.
template <typename Handle, typename Calls>
class QueueBase {
public:
    QueueBase(QueueBase &&) noexcept = default;
    QueueBase &operator=(QueueBase &&) noexcept = default;
    QueueBase(const QueueBase &) = delete;
    QueueBase &operator=(const QueueBase &) = delete;

    /// The C handle, for calls this header does not wrap.
    Handle *raw() const noexcept { return handle_.get(); }

    /// Puts a copy of `len` bytes, waiting at most `timeout_ms` (negative:
    /// for ever); false if the queue stayed full (or without memory).
    bool Put(const void *data, std::size_t len, int64_t timeout_ms = -1) const {
        shmkit_status status = Calls::put(handle_.get(), data, len, timeout_ms);
        if (status == SHMKIT_E_TIMEOUT) {
            return false;
        }
        check(status);
        return true;
    }
    /// Puts text: a std::string, a string_view or a string literal (its
    /// bytes without the final NUL).
    bool Put(std::string_view text, int64_t timeout_ms = -1) const {
        return Put(static_cast<const void *>(text.data()), text.size(), timeout_ms);
    }
    template <std::size_t N>
    bool Put(const char (&text)[N], int64_t timeout_ms = -1) const {
        return Put(std::string_view(text, N - 1), timeout_ms);
    }

    /// The next message, waiting at most `timeout_ms` (negative: for
    /// ever); nullopt if none came.
    std::optional<Message> Get(int64_t timeout_ms = -1) const {
        shmkit_message message{};
        shmkit_status status = Calls::get(handle_.get(), timeout_ms, &message);
        if (status == SHMKIT_E_TIMEOUT) {
            return std::nullopt;
        }
        check(status);
        return Message(message, handle_, [](const void *owner, const shmkit_message *taken) {
            return Calls::done(static_cast<const Handle *>(owner), taken);
        });
    }

    /// The queue's recovery pass once the processes that used it died
    /// (see shmkit_queue_recover): alone, with no Message of this process
    /// still held.
    shmkit_recovery_report Recover(bool force = false) const {
        shmkit_recovery_report report{};
        check(Calls::recover(handle_.get(), force ? 1 : 0, &report));
        return report;
    }

    /// Messages waiting now.
    std::size_t Size() const {
        std::size_t waiting = 0;
        check(Calls::len(handle_.get(), &waiting));
        return waiting;
    }

protected:
    explicit QueueBase(Handle *handle) : handle_(handle, [](Handle *h) { Calls::close(h); }) {}

private:
    std::shared_ptr<Handle> handle_;
};

struct QueueCalls {
    static constexpr auto put = shmkit_queue_put;
    static constexpr auto get = shmkit_queue_get;
    static constexpr auto done = shmkit_queue_done;
    static constexpr auto len = shmkit_queue_len;
    static constexpr auto close = shmkit_queue_close;
    static constexpr auto recover = shmkit_queue_recover;
};

struct SpscCalls {
    static constexpr auto put = shmkit_spsc_push;
    static constexpr auto get = shmkit_spsc_pop;
    static constexpr auto done = shmkit_spsc_done;
    static constexpr auto len = shmkit_spsc_len;
    static constexpr auto close = shmkit_spsc_close;
    static constexpr auto recover = shmkit_spsc_recover;
};

}  // namespace detail

/// The MPMC message queue of raw bytes (Python's shmkit.Queue is the same
/// format): any number of processes put and get.
class Queue : public detail::QueueBase<shmkit_queue, detail::QueueCalls> {
public:
    /// Creates the queue `name`: `capacity` bytes of messages waiting, at
    /// most `maxsize` of them (0: 65,536).
    static Queue Create(const std::string &name, uint64_t capacity, std::size_t maxsize = 0) {
        shmkit_queue *queue = nullptr;
        detail::check(shmkit_queue_create(name.c_str(), capacity, maxsize, &queue));
        return Queue(queue);
    }
    static Queue Attach(const std::string &name) {
        shmkit_queue *queue = nullptr;
        detail::check(shmkit_queue_attach(name.c_str(), &queue));
        return Queue(queue);
    }

private:
    using QueueBase::QueueBase;
};

/// One end of an SPSC message queue: Put on the producer, Get on the
/// consumer; one live end of each role across all processes.
class SpscQueue : public detail::QueueBase<shmkit_spsc, detail::SpscCalls> {
public:
    enum class Role : int32_t { Producer = SHMKIT_SPSC_PRODUCER, Consumer = SHMKIT_SPSC_CONSUMER };

    static SpscQueue Create(const std::string &name, uint64_t capacity, std::size_t maxsize,
                            Role role) {
        shmkit_spsc *queue = nullptr;
        detail::check(shmkit_spsc_create(name.c_str(), capacity, maxsize,
                                         static_cast<int32_t>(role), &queue));
        return SpscQueue(queue);
    }
    static SpscQueue Attach(const std::string &name, Role role) {
        shmkit_spsc *queue = nullptr;
        detail::check(shmkit_spsc_attach(name.c_str(), static_cast<int32_t>(role), &queue));
        return SpscQueue(queue);
    }

private:
    using QueueBase::QueueBase;
};

}  // namespace shmkit

#endif  // SHMKIT_HPP
