// parallel_workers: see cpu/parallel.h.
#include "cpu/parallel.h"

#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

namespace swa::cpu {
namespace {

// State shared by the caller and the helpers that join its call.
struct Shared {
  int64_t n, grain, threads;
  std::atomic<int64_t> next{0};  // first unclaimed task
  std::mutex mutex;
  std::condition_variable all_done;
  int64_t done = 0;  // tasks finished (or abandoned by an exception), under mutex
  std::exception_ptr error;
  // Valid while some task is claimed and unfinished: the caller waits for
  // done == n before it returns.
  const c10::function_ref<void(TaskQueue&)>* worker = nullptr;
  // Under the helper pool's mutex: places still open to helpers, helpers in
  // the call, and the signal that the last of them left.
  int64_t places = 0, joined = 0;
  std::condition_variable helpers_left;

  // Claims the next chunk [begin, end): grain tasks, fewer near the end
  // (guided: at most a 2 * threads-th of what is left), so that the
  // workers run out of work together instead of up to a chunk apart.
  bool claim(int64_t& begin, int64_t& end) {
    int64_t first = next.load(std::memory_order_relaxed);
    while (first < n) {
      const int64_t size = std::clamp<int64_t>((n - first) / (2 * threads), 1, grain);
      if (next.compare_exchange_weak(first, first + size)) {
        begin = first;
        end = first + size;
        return true;
      }
    }
    return false;
  }

  void finish(int64_t count, std::exception_ptr e = nullptr) {
    std::lock_guard<std::mutex> lock(mutex);
    if (e && !error) error = e;
    done += count;
    if (done == n) all_done.notify_all();
  }
};

class SharedQueue final : public TaskQueue {
 public:
  SharedQueue(Shared& s, int64_t begin, int64_t end) : s_(s), begin_(begin), end_(end) {}
  // A chunk still held (the worker stopped early or threw) is released.
  ~SharedQueue() override {
    if (begin_ < end_) s_.finish(end_ - begin_);
  }
  bool next(int64_t& begin, int64_t& end) override {
    if (handed_out_) {  // the previous chunk is done; claim another
      s_.finish(end_ - begin_);
      begin_ = end_ = 0;
      if (!s_.claim(begin_, end_)) return false;
    }
    handed_out_ = true;  // the first call hands out the chunk claimed at start
    begin = begin_;
    end = end_;
    return true;
  }

 private:
  Shared& s_;
  int64_t begin_, end_;
  bool handed_out_ = false;
};

// Claims a first chunk and, if there was one, runs the worker on it and on
// the chunks after it. After an exception the unclaimed tasks are abandoned
// (counted as done) so that nobody waits for them.
void run_worker(Shared& s) {
  int64_t begin, end;
  if (!s.claim(begin, end)) return;
  try {
    SharedQueue queue(s, begin, end);
    (*s.worker)(queue);
  } catch (...) {
    s.finish(0, std::current_exception());
    while (s.claim(begin, end)) s.finish(end - begin);
  }
}

// Runs everything on the calling thread.
class SerialQueue final : public TaskQueue {
 public:
  SerialQueue(int64_t n, int64_t grain) : n_(n), grain_(grain) {}
  bool next(int64_t& begin, int64_t& end) override {
    if (next_ >= n_) return false;
    begin = next_;
    end = next_ = std::min(n_, next_ + grain_);
    return true;
  }

 private:
  int64_t n_, grain_, next_ = 0;
};

// Helper threads shared by every call. A call posts its Shared with the
// number of helpers it wants; an idle helper takes one place, works, and
// leaves. When the caller has seen every task done it withdraws the places
// nobody took and waits for the helpers that joined to leave, so no helper
// touches a call's state after it returned. The pool is never destroyed
// (helpers sleep on its condition variable until the process ends); a child
// process after fork() gets a new, empty pool (its parent's threads are gone).
class HelperPool {
 public:
  static HelperPool& get() { return *instance(); }

  void run(const std::shared_ptr<Shared>& job, int64_t helpers) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (started_ < helpers) {
        std::thread([this] { helper_loop(); }).detach();
        ++started_;
      }
      job->places = helpers;
      jobs_.push_back(job);
    }
    wake_.notify_all();
    {
      c10::ParallelGuard guard(true);
      run_worker(*job);
    }
    {
      std::unique_lock<std::mutex> lock(job->mutex);
      job->all_done.wait(lock, [&] { return job->done == job->n; });
    }
    std::unique_lock<std::mutex> lock(mutex_);
    withdraw(job);  // nobody joins from now on
    job->helpers_left.wait(lock, [&] { return job->joined == 0; });
  }

 private:
  static HelperPool*& instance() {
    static HelperPool* pool = [] {
      pthread_atfork(nullptr, nullptr, [] { instance() = new HelperPool(); });  // the old one is leaked
      return new HelperPool();
    }();
    return pool;
  }

  void withdraw(const std::shared_ptr<Shared>& job) {
    job->places = 0;
    jobs_.erase(std::remove(jobs_.begin(), jobs_.end(), job), jobs_.end());
  }

  void helper_loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return !jobs_.empty(); });
      std::shared_ptr<Shared> job = jobs_.front();
      if (--job->places == 0) jobs_.pop_front();
      ++job->joined;
      lock.unlock();
      {
        c10::ParallelGuard guard(true);
        run_worker(*job);
      }
      lock.lock();
      if (--job->joined == 0) job->helpers_left.notify_all();
    }
  }

  std::mutex mutex_;  // guards jobs_, started_, and every job's places and joined
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Shared>> jobs_;
  int64_t started_ = 0;
};

}  // namespace

int64_t default_grain(int64_t n) {
  const int64_t threads = std::max(1, at::get_num_threads());
  return std::max<int64_t>(1, n / (32 * threads));
}

void parallel_workers(int64_t n, int64_t grain, c10::function_ref<void(TaskQueue&)> worker) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = (n + grain - 1) / grain;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), chunks);
  if (threads <= 1 || at::in_parallel_region() || c10::ParallelGuard::is_enabled()) {
    c10::ParallelGuard guard(true);
    SerialQueue queue(n, grain);
    worker(queue);
    return;
  }
  auto shared = std::make_shared<Shared>();
  shared->n = n;
  shared->grain = grain;
  shared->threads = threads;
  shared->worker = &worker;
  HelperPool::get().run(shared, threads - 1);
  if (shared->error) std::rethrow_exception(shared->error);
}

}  // namespace swa::cpu
