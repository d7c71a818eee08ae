// A minimal parallel-for on std::thread (no OpenMP: no second runtime next to
// torch's or faiss's, and nothing that breaks after fork).  Threads are started
// per call and joined before returning; the first exception is rethrown.
#pragma once
#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace hn {

// Calls fn(begin, end, thread_id) over [0, n) in chunks of `grain`, handed out
// dynamically to at most num_threads threads (the calling thread is one of them).
template <class F>
void parallel_for(size_t n, int num_threads, size_t grain, F&& fn) {
    if (n == 0) return;
    grain = std::max<size_t>(grain, 1);
    size_t chunks = (n + grain - 1) / grain;
    size_t nt = std::max(1, num_threads);
    nt = std::min(nt, chunks);
    if (nt <= 1) {
        fn(size_t(0), n, 0);
        return;
    }
    std::atomic<size_t> next{0};
    std::exception_ptr err;
    std::mutex err_mu;
    auto worker = [&](int tid) {
        try {
            for (;;) {
                size_t c = next.fetch_add(1);
                if (c >= chunks) break;
                size_t b = c * grain, e = std::min(n, b + grain);
                fn(b, e, tid);
            }
        } catch (...) {
            std::lock_guard<std::mutex> g(err_mu);
            if (!err) err = std::current_exception();
            next.store(chunks);
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(nt - 1);
    for (size_t t = 1; t < nt; ++t) {
        // Out of threads (a huge num_threads, a process limit): the threads already
        // started share the chunks; an escaping exception here would destroy
        // joinable threads, i.e. std::terminate.
        try {
            pool.emplace_back(worker, (int)t);
        } catch (const std::system_error&) {
            break;
        }
    }
    worker(0);
    for (auto& t : pool) t.join();
    if (err) std::rethrow_exception(err);
}

// Static split of [0, n) into num_threads nearly equal ranges, one per thread.
template <class F>
void parallel_ranges(size_t n, int num_threads, F&& fn) {
    size_t nt = std::max<size_t>(1, std::min<size_t>(std::max(1, num_threads), n));
    parallel_for(nt, (int)nt, 1, [&](size_t b, size_t e, int tid) {
        for (size_t t = b; t < e; ++t) fn(n * t / nt, n * (t + 1) / nt, tid);
    });
}

}  // namespace hn
