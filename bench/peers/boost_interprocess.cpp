// Boost.Interprocess under shmkit's benchmark workloads.
//
// The same workloads as `shmkit bench` (pair64, churn, bulk), on one thread,
// two threads and two processes, for `managed_shared_memory` with its default
// `rbtree_best_fit` and with `simple_seq_fit`. Rounds are calibrated and the
// median is reported exactly as shmkit does, so the rows can share a table.
//
// Output: one JSON object per line, e.g.
//   {"allocator":"boost-rbtree-best-fit","workload":"pair64","mode":"1t",
//    "ns_per_op":41.2,"ops_per_round":2400000,"samples":[41.0,41.2,41.9]}
// or, when a measurement fails, {"allocator":...,"error":"..."}.
//
// Usage: boost-interprocess-bench [--samples N] [--round-ms MS]
//          [--limit-ms MS] [--bulk-blocks N] [--workloads a,b] [--modes 1t,2t,2p]

#include <boost/interprocess/indexes/iset_index.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/mem_algo/simple_seq_fit.hpp>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

namespace bip = boost::interprocess;

using RbtreeSegment = bip::managed_shared_memory;
using SeqFitSegment = bip::basic_managed_shared_memory<
    char, bip::simple_seq_fit<bip::mutex_family>, bip::iset_index>;

namespace {

struct Settings {
    int samples = 5;
    double round_ms = 100.0;
    // A round that runs longer than this gives up (simple_seq_fit's free
    // list makes interleaved bulk frees quadratic).
    double limit_ms = 3000.0;
    uint64_t bulk_blocks = 1000000;
    std::vector<std::string> workloads = {"pair64", "churn", "bulk"};
    std::vector<std::string> modes = {"1t", "2t", "2p"};
};

struct Measurement {
    double ns_per_op = 0;
    std::vector<double> samples;
    uint64_t ops_per_round = 0;
};

constexpr uint64_t kFirstProbe = 1000;
constexpr uint64_t kMaxOps = 500000000;
constexpr size_t kChurnLive = 1024;
constexpr uint64_t kChurnMin = 16;
constexpr uint64_t kChurnMax = 4096;

// The same seeds and generator (xorshift64*) as shmkit's workloads.
uint64_t seed_of(uint64_t worker) { return 0x12345678ULL ^ (worker * 0x9e3779b97f4a7c15ULL); }

uint64_t next_random(uint64_t &state) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dULL;
}

size_t churn_size(uint64_t &rng) { return kChurnMin + next_random(rng) % (kChurnMax - kChurnMin + 1); }

// A round that ran past the limit.
struct GaveUp : std::runtime_error {
    explicit GaveUp(uint64_t limit_ns)
        : std::runtime_error("gave up: one round ran past " + std::to_string(limit_ns / 1000000) + " ms") {}
};

// What a worker process sends instead of a time when it fails.
constexpr uint64_t kGaveUp = UINT64_MAX;
constexpr uint64_t kFailed = UINT64_MAX - 1;

uint64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// One worker's workload on one segment, kept across rounds.
template <class Segment>
class Runner {
  public:
    Runner(Segment &segment, const std::string &workload, uint64_t seed, double limit_ms)
        : segment_(segment), workload_(workload), rng_(seed | 1), limit_ns_(uint64_t(limit_ms * 1e6)) {
        if (workload_ == "churn") {
            for (size_t i = 0; i < kChurnLive; ++i) {
                size_t size = churn_size(rng_);
                live_.emplace_back(alloc(size), size);
            }
        }
    }

    // Runs `ops` operations; returns the elapsed nanoseconds.
    uint64_t round(uint64_t ops) {
        uint64_t start = now_ns();
        deadline_ = start + limit_ns_;
        if (workload_ == "pair64") {
            for (uint64_t i = 0; i < ops; ++i) {
                check_deadline(i);
                void *block = alloc(64);
                asm volatile("" : : "r"(block) : "memory");
                segment_.deallocate(block);
            }
        } else if (workload_ == "churn") {
            for (uint64_t i = 0; i < ops; ++i) {
                check_deadline(i);
                size_t slot = next_random(rng_) % kChurnLive;
                segment_.deallocate(live_[slot].first);
                size_t size = churn_size(rng_);
                live_[slot] = {alloc(size), size};
            }
        } else {
            bulk_.reserve(ops);
            for (uint64_t i = 0; i < ops; ++i) {
                check_deadline(i);
                bulk_.push_back(alloc(64));
            }
            for (uint64_t i = 0; i < bulk_.size(); ++i) {
                check_deadline(i);
                segment_.deallocate(bulk_[i]);
            }
            bulk_.clear();
        }
        return now_ns() - start;
    }

    void finish() {
        for (auto &entry : live_) segment_.deallocate(entry.first);
        live_.clear();
    }

  private:
    // Gives up a round past its limit; the caller drops the segment, so the
    // blocks still held need no freeing.
    void check_deadline(uint64_t i) {
        if ((i & 4095) == 0 && now_ns() > deadline_) {
            bulk_.clear();
            live_.clear();
            throw GaveUp(limit_ns_);
        }
    }

    void *alloc(size_t size) {
        void *block = segment_.allocate(size, std::nothrow);
        if (block == nullptr) throw std::runtime_error("out of memory");
        return block;
    }

    Segment &segment_;
    std::string workload_;
    uint64_t rng_;
    std::vector<std::pair<void *, size_t>> live_;
    std::vector<void *> bulk_;
    uint64_t limit_ns_;
    uint64_t deadline_ = 0;
};

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    size_t mid = values.size() / 2;
    return values.size() % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

// Calibrates, warms up and times rounds exactly as shmkit's driver does.
Measurement measure(const Settings &settings, const std::string &workload, uint64_t workers,
                    const std::function<uint64_t(uint64_t)> &round) {
    uint64_t ops;
    if (workload == "bulk") {
        round(settings.bulk_blocks);
        ops = settings.bulk_blocks;
    } else {
        double round_ns = settings.round_ms * 1e6;
        round(kFirstProbe);  // warm-up: lazy set-up must not skew the probe
        uint64_t probe = kFirstProbe;
        for (;;) {
            uint64_t elapsed = round(probe);
            if (elapsed >= round_ns / 8 || probe >= kMaxOps / 8) {
                double per_op = std::max(double(elapsed) / double(probe), 1e-3);
                ops = std::clamp<uint64_t>(uint64_t(round_ns / per_op), kFirstProbe, kMaxOps);
                break;
            }
            probe *= 8;
        }
    }
    Measurement m;
    m.ops_per_round = ops;
    for (int i = 0; i < std::max(settings.samples, 1); ++i) {
        m.samples.push_back(double(round(ops)) / double(ops * workers));
    }
    m.ns_per_op = median(m.samples);
    return m;
}

template <class Segment>
Measurement one_thread(Segment &segment, const Settings &settings, const std::string &workload) {
    Runner<Segment> runner(segment, workload, seed_of(0), settings.limit_ms);
    Measurement m = measure(settings, workload, 1, [&](uint64_t ops) { return runner.round(ops); });
    runner.finish();
    return m;
}

template <class Segment>
Measurement two_threads(Segment &segment, const Settings &settings, const std::string &workload) {
    std::barrier start(3), end(3);
    uint64_t ops = 0;  // 0 tells the threads to stop; published by the barrier
    std::mutex failure_lock;
    std::string failure;
    auto fail = [&](const char *what) {
        std::lock_guard<std::mutex> guard(failure_lock);
        if (failure.empty()) failure = what;
    };
    std::vector<std::thread> threads;
    for (uint64_t worker = 0; worker < 2; ++worker) {
        threads.emplace_back([&, worker] {
            std::unique_ptr<Runner<Segment>> runner;
            try {
                runner = std::make_unique<Runner<Segment>>(segment, workload, seed_of(worker), settings.limit_ms);
            } catch (const std::exception &e) {
                fail(e.what());
            }
            for (;;) {
                start.arrive_and_wait();
                if (ops == 0) break;
                try {
                    if (runner) runner->round(ops);
                } catch (const std::exception &e) {
                    fail(e.what());
                    runner.reset();
                }
                end.arrive_and_wait();
            }
            if (runner) runner->finish();
        });
    }
    Measurement m;
    std::string error;
    try {
        m = measure(settings, workload, 2, [&](uint64_t count) {
            ops = count;
            uint64_t began = now_ns();
            start.arrive_and_wait();
            end.arrive_and_wait();
            uint64_t elapsed = now_ns() - began;
            std::lock_guard<std::mutex> guard(failure_lock);
            if (!failure.empty()) throw std::runtime_error(failure);
            return elapsed;
        });
    } catch (const std::exception &e) {
        error = e.what();
    }
    ops = 0;
    start.arrive_and_wait();
    for (auto &t : threads) t.join();
    if (!error.empty()) throw std::runtime_error(error);
    return m;
}

// Pipes to and from one forked worker process.
struct Child {
    pid_t pid;
    int command_fd;
    int reply_fd;
};

bool read_all(int fd, void *buf, size_t len) {
    auto *p = static_cast<char *>(buf);
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n <= 0) return false;
        p += n;
        len -= size_t(n);
    }
    return true;
}

bool write_all(int fd, const void *buf, size_t len) {
    auto *p = static_cast<const char *>(buf);
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0) return false;
        p += n;
        len -= size_t(n);
    }
    return true;
}

// In the child: open the segment by name, as a separate program would, and
// answer each command (operations, 0 to stop) with the elapsed nanoseconds
// (UINT64_MAX on failure).
template <class Segment>
[[noreturn]] void child_main(const char *name, const Settings &settings, const std::string &workload,
                             uint64_t worker, int command_fd, int reply_fd) {
    int code = 0;
    try {
        Segment segment(bip::open_only, name);
        Runner<Segment> runner(segment, workload, seed_of(worker), settings.limit_ms);
        uint64_t ready = 0;
        write_all(reply_fd, &ready, sizeof ready);
        uint64_t ops;
        while (read_all(command_fd, &ops, sizeof ops) && ops != 0) {
            uint64_t elapsed = runner.round(ops);
            write_all(reply_fd, &elapsed, sizeof elapsed);
        }
        runner.finish();
    } catch (const GaveUp &) {
        write_all(reply_fd, &kGaveUp, sizeof kGaveUp);
        code = 1;
    } catch (const std::exception &) {
        write_all(reply_fd, &kFailed, sizeof kFailed);
        code = 1;
    }
    _exit(code);
}

template <class Segment>
Measurement two_processes(const char *name, const Settings &settings, const std::string &workload) {
    std::vector<Child> children;
    for (uint64_t worker = 0; worker < 2; ++worker) {
        int commands[2], replies[2];
        if (pipe(commands) != 0 || pipe(replies) != 0) throw std::runtime_error("pipe failed");
        pid_t pid = fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid == 0) {
            close(commands[1]);
            close(replies[0]);
            child_main<Segment>(name, settings, workload, worker, commands[0], replies[1]);
        }
        close(commands[0]);
        close(replies[1]);
        children.push_back({pid, commands[1], replies[0]});
    }
    auto reply = [&](const Child &child) {
        uint64_t value;
        if (!read_all(child.reply_fd, &value, sizeof value) || value == kFailed)
            throw std::runtime_error("a worker process failed");
        if (value == kGaveUp) throw GaveUp(uint64_t(settings.limit_ms * 1e6));
        return value;
    };
    auto stop = [&] {
        uint64_t zero = 0;
        for (auto &child : children) {
            write_all(child.command_fd, &zero, sizeof zero);
            close(child.command_fd);
            close(child.reply_fd);
            int status = 0;
            waitpid(child.pid, &status, 0);
        }
    };
    Measurement m;
    try {
        for (auto &child : children) reply(child);  // ready
        m = measure(settings, workload, 2, [&](uint64_t ops) {
            uint64_t began = now_ns();
            for (auto &child : children) write_all(child.command_fd, &ops, sizeof ops);
            for (auto &child : children) reply(child);
            return now_ns() - began;
        });
    } catch (...) {
        stop();
        throw;
    }
    stop();
    return m;
}

void print_row(const std::string &allocator, const std::string &workload, const std::string &mode,
               const Measurement &m) {
    std::printf("{\"allocator\":\"%s\",\"workload\":\"%s\",\"mode\":\"%s\",\"ns_per_op\":%.4f,"
                "\"ops_per_round\":%llu,\"samples\":[",
                allocator.c_str(), workload.c_str(), mode.c_str(), m.ns_per_op,
                (unsigned long long)m.ops_per_round);
    for (size_t i = 0; i < m.samples.size(); ++i) std::printf("%s%.4f", i ? "," : "", m.samples[i]);
    std::printf("]}\n");
    std::fflush(stdout);
}

void print_error(const std::string &allocator, const std::string &workload, const std::string &mode,
                 const std::string &error) {
    std::printf("{\"allocator\":\"%s\",\"workload\":\"%s\",\"mode\":\"%s\",\"error\":\"%s\"}\n",
                allocator.c_str(), workload.c_str(), mode.c_str(), error.c_str());
    std::fflush(stdout);
}

// Every workload and mode on one memory algorithm, each in a fresh segment
// (a round that gives up leaves blocks behind).
template <class Segment>
void run_algorithm(const std::string &allocator, const Settings &settings) {
    std::string name = "shmkit-bench-boost-" + std::to_string(getpid());
    uint64_t size = std::max<uint64_t>(64ULL << 20, settings.bulk_blocks * 2 * 256);
    for (const auto &workload : settings.workloads) {
        for (const auto &mode : settings.modes) {
            bip::shared_memory_object::remove(name.c_str());
            try {
                Segment segment(bip::create_only, name.c_str(), size);
                Measurement m = mode == "1t"   ? one_thread(segment, settings, workload)
                                : mode == "2t" ? two_threads(segment, settings, workload)
                                               : two_processes<Segment>(name.c_str(), settings, workload);
                print_row(allocator, workload, mode, m);
            } catch (const std::exception &e) {
                print_error(allocator, workload, mode, e.what());
            }
            bip::shared_memory_object::remove(name.c_str());
        }
    }
}

std::vector<std::string> split(const std::string &text) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (start <= text.size()) {
        size_t comma = text.find(',', start);
        if (comma == std::string::npos) comma = text.size();
        if (comma > start) parts.push_back(text.substr(start, comma - start));
        start = comma + 1;
    }
    return parts;
}

}  // namespace

int main(int argc, char **argv) {
    // A worker that gave up has closed its pipe: a write then fails, not kills.
    std::signal(SIGPIPE, SIG_IGN);
    Settings settings;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string flag = argv[i], value = argv[i + 1];
        if (flag == "--samples") settings.samples = std::stoi(value);
        else if (flag == "--round-ms") settings.round_ms = std::stod(value);
        else if (flag == "--limit-ms") settings.limit_ms = std::stod(value);
        else if (flag == "--bulk-blocks") settings.bulk_blocks = std::stoull(value);
        else if (flag == "--workloads") settings.workloads = split(value);
        else if (flag == "--modes") settings.modes = split(value);
        else {
            std::fprintf(stderr, "boost-interprocess-bench: unknown option %s\n", flag.c_str());
            return 2;
        }
    }
    if (argc % 2 == 0) {
        std::fprintf(stderr, "boost-interprocess-bench: option %s needs a value\n", argv[argc - 1]);
        return 2;
    }
    run_algorithm<RbtreeSegment>("boost-rbtree-best-fit", settings);
    run_algorithm<SeqFitSegment>("boost-simple-seq-fit", settings);
    return 0;
}
