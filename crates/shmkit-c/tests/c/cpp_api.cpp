// The C++ header beyond allocation: named objects (FindOrConstruct, Find,
// Destroy), the MPMC Queue and the SPSC queue with RAII messages. Run by
// tests/c_programs.rs. Argument: a unique name prefix.
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "shmkit.hpp"

static int failures = 0;

#define CHECK(condition)                                                         \
    do {                                                                         \
        if (!(condition)) {                                                      \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #condition); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

// Expects `statement` to throw shmkit::Error with `status`.
#define THROWS(statement, expected)                                              \
    do {                                                                         \
        try {                                                                    \
            statement;                                                           \
            std::fprintf(stderr, "%s:%d: %s did not throw\n", __FILE__, __LINE__, \
                         #statement);                                            \
            failures++;                                                          \
        } catch (const shmkit::Error &error) {                                   \
            CHECK(error.status() == (expected));                                 \
        }                                                                        \
    } while (0)

struct Counter {
    uint64_t count;
    uint32_t tag;
    Counter(uint64_t count, uint32_t tag) noexcept : count(count), tag(tag) {}
};

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: cpp_api NAME\n");
        return 2;
    }
    const std::string name = argv[1];
    {
        shmkit::Heap heap = shmkit::Heap::Create(name, shmkit::Kind::FreeList);
        // Made once, then found: the second constructor's arguments are not used.
        shmkit::FullPtr<Counter> made = heap.FindOrConstruct<Counter>("counter", "Counter v1", 7, 3);
        const uint64_t live_with = heap.Stats().live_allocations;
        shmkit::FullPtr<Counter> again = heap.FindOrConstruct<Counter>("counter", "Counter v1", 99, 9);
        CHECK(heap.Stats().live_allocations == live_with);
        CHECK(made.offset() == again.offset());
        CHECK(again->count == 7 && again->tag == 3);
        made->count += 1;
        auto found = heap.Find<Counter>("counter", "Counter v1");
        CHECK(found.has_value() && (*found)->count == 8);
        CHECK(!heap.Find<Counter>("no such", "Counter v1").has_value());
        THROWS(heap.Find<Counter>("counter", "Counter v2"), SHMKIT_E_WRONG_TYPE);
        THROWS(heap.Find<uint64_t>("counter", "Counter v1"), SHMKIT_E_WRONG_TYPE);
        heap.Destroy<Counter>("counter", "Counter v1");
        CHECK(!heap.Find<Counter>("counter", "Counter v1").has_value());
        THROWS(heap.Destroy<Counter>("counter", "Counter v1"), SHMKIT_E_NAME_NOT_FOUND);
        // The object's blocks went back (the directory itself stays).
        CHECK(heap.Stats().live_allocations < live_with);
    }
    shmkit::Heap::Unlink(name);

    {
        // The MPMC queue: messages in order, given back when they go.
        const std::string queue_name = name + "-queue";
        shmkit::Queue queue = shmkit::Queue::Create(queue_name, 1 << 16, 4);
        for (int i = 0; i < 4; i++) {
            CHECK(queue.Put("message " + std::to_string(i), 0));
        }
        CHECK(!queue.Put("one too many", 0));
        CHECK(queue.Size() == 4);
        for (int i = 0; i < 4; i++) {
            std::optional<shmkit::Message> message = queue.Get(0);
            CHECK(message.has_value() && message->str() == "message " + std::to_string(i));
        }
        CHECK(!queue.Get(10).has_value());
        // Alone and holding no message: the pass frees nothing.
        CHECK(queue.Recover().blocks_reclaimed == 0);
        // Every message went back: four more fit again.
        for (int i = 0; i < 4; i++) {
            CHECK(queue.Put("again", 0));
        }
        shmkit::Heap::Unlink(queue_name);
    }

    {
        // The SPSC queue: one end of each role.
        const std::string spsc_name = name + "-spsc";
        using Role = shmkit::SpscQueue::Role;
        shmkit::SpscQueue producer = shmkit::SpscQueue::Create(spsc_name, 1 << 16, 8, Role::Producer);
        THROWS(shmkit::SpscQueue::Attach(spsc_name, Role::Producer), SHMKIT_E_IN_USE);
        shmkit::SpscQueue consumer = shmkit::SpscQueue::Attach(spsc_name, Role::Consumer);
        THROWS(consumer.Put("wrong end", 0), SHMKIT_E_UNSUPPORTED);
        THROWS(producer.Get(0), SHMKIT_E_UNSUPPORTED);
        for (int i = 0; i < 8; i++) {
            CHECK(producer.Put(std::to_string(i), 0));
        }
        CHECK(!producer.Put("full", 0));
        CHECK(consumer.Size() == 8);
        for (int i = 0; i < 8; i++) {
            std::optional<shmkit::Message> message = consumer.Get(0);
            CHECK(message.has_value() && message->str() == std::to_string(i));
        }
        CHECK(!consumer.Get(0).has_value());

        // A pointer and a length put that many bytes, whatever the types.
        const char *text = "hello, world";
        int five = 5;
        CHECK(producer.Put(text, five, 0));
        std::vector<char> bytes = {'a', 'b', 'c'};
        CHECK(producer.Put(bytes.data(), bytes.size(), 0));
        std::optional<shmkit::Message> hello = consumer.Get(0);
        CHECK(hello.has_value() && hello->str() == "hello");
        CHECK(consumer.Get(0)->str() == "abc");

        // A message is given back from another thread while the consumer
        // waits in Get on its own.
        std::thread waiter([&consumer] {
            std::optional<shmkit::Message> late = consumer.Get(5000);
            CHECK(late.has_value() && late->str() == "late");
        });
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        hello->Done();
        CHECK(producer.Put("late", 0));
        waiter.join();

        // A message outlives its queue object: the handle stays open until
        // it goes.
        CHECK(producer.Put("kept", 0));
        std::optional<shmkit::Message> kept = consumer.Get(0);
        { shmkit::SpscQueue gone = std::move(consumer); }
        CHECK(kept.has_value() && kept->str() == "kept");
        kept.reset();
        shmkit::Heap::Unlink(spsc_name);
    }

    if (failures == 0) {
        std::printf("cpp_api: all checks passed\n");
    }
    return failures == 0 ? 0 : 1;
}
