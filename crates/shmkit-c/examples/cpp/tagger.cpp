// The C++ tagger: tagger_cpp NAME WRITER COUNT START_MS (see tagger.h), through the
// RAII wrapper.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "shmkit.hpp"

extern "C" {
#include "../c/tagger.h"
}

struct Block {
    shmkit::FullPtr<uint8_t> ptr;
    uint64_t size, seq;
};

static bool intact(uint64_t writer, const Block &b) {
    for (uint64_t i = 0; i < b.size; i++) {
        if (b.ptr[i] != tag_byte(writer, b.seq, i)) {
            std::fprintf(stderr, "tagger.cpp: block at %llu (seq %llu) byte %llu overwritten\n",
                         (unsigned long long)b.ptr.offset(), (unsigned long long)b.seq,
                         (unsigned long long)i);
            return false;
        }
    }
    return true;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: tagger_cpp NAME WRITER COUNT START_MS\n");
        return 2;
    }
    uint64_t writer = std::strtoull(argv[2], nullptr, 10);
    uint64_t count = std::strtoull(argv[3], nullptr, 10);
    try {
        shmkit::Heap heap = shmkit::Heap::Attach(argv[1]);
        tagger_wait_until(std::strtoull(argv[4], nullptr, 10));
        std::vector<Block> live;
        uint64_t rng = 0x9e3779b97f4a7c15ull ^ (writer * 0x100000001b3ull);
        for (uint64_t seq = 0; seq < count; seq++) {
            uint64_t size = 16 + tagger_next(&rng) % 2000;
            Block b{heap.Allocate(size).cast<uint8_t>(), size, seq};
            for (uint64_t i = 0; i < size; i++) {
                b.ptr[i] = tag_byte(writer, seq, i);
            }
            live.push_back(b);
            if (live.size() > TAGGER_LIVE) {
                size_t pick = tagger_next(&rng) % live.size();
                if (!intact(writer, live[pick])) {
                    return 1;
                }
                heap.Free(live[pick].ptr);
                live[pick] = live.back();
                live.pop_back();
            }
        }
        for (const Block &b : live) {
            if (!intact(writer, b)) {
                return 1;
            }
            std::printf("%llu %llu %llu %llu\n", (unsigned long long)writer,
                        (unsigned long long)b.ptr.offset(), (unsigned long long)b.size,
                        (unsigned long long)b.seq);
        }
    } catch (const shmkit::Error &error) {
        std::fprintf(stderr, "tagger.cpp: %s\n", error.what());
        return 1;
    }
    return 0;
}
