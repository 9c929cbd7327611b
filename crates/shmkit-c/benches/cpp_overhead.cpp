// The C++ wrapper against the C API: allocate + free pairs of 64 bytes on
// the thread-local allocator, each way in turn, the median of 15 rounds of
// 2,000,000 pairs. Run by benches/overhead.rs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "shmkit.hpp"

using Clock = std::chrono::steady_clock;

template <typename F>
static double ns_per_pair(F &&body) {
    const int pairs = 2000000;
    auto start = Clock::now();
    for (int i = 0; i < pairs; i++) {
        body();
    }
    return std::chrono::duration<double, std::nano>(Clock::now() - start).count() / pairs;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: cpp_overhead NAME\n");
        return 2;
    }
    shmkit::Options options;
    options.size = 64 << 20;
    shmkit::Heap heap = shmkit::Heap::Create(argv[1], shmkit::Kind::ThreadLocal, options);
    shmkit_heap *raw = heap.raw();
    volatile uint64_t sink = 0;
    std::vector<double> c_api, cpp_offset, cpp_full;
    for (int round = 0; round < 15; round++) {
        c_api.push_back(ns_per_pair([&] {
            uint64_t offset = 0;
            if (shmkit_heap_allocate(raw, 64, &offset) != SHMKIT_OK ||
                shmkit_heap_free(raw, offset) != SHMKIT_OK) {
                std::abort();
            }
            sink = offset;
        }));
        cpp_offset.push_back(ns_per_pair([&] {
            uint64_t offset = heap.AllocateOffset(64);
            heap.FreeOffset(offset);
            sink = offset;
        }));
        cpp_full.push_back(ns_per_pair([&] {
            shmkit::FullPtr<void> block = heap.Allocate(64);
            heap.Free(block);
            sink = block.offset();
        }));
    }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    std::printf("cpp_overhead (thread-local, 64 B allocate+free, median of 15 x 2M):\n");
    std::printf("  C API                    %6.2f ns/pair\n", median(c_api));
    std::printf("  C++ AllocateOffset/Free  %6.2f ns/pair\n", median(cpp_offset));
    std::printf("  C++ Allocate/Free        %6.2f ns/pair (FullPtr)\n", median(cpp_full));
    (void)sink;
    return 0;
}
