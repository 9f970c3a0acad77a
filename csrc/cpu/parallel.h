// Dynamic fork-join for the CPU kernels: tasks [0, n) handed out in chunks to
// up to at::get_num_threads() workers (the calling thread is one of them).
//
// at::parallel_for is an inline template whose threads exist only when the
// including file is compiled with OpenMP; this library is not, so it would run
// serially. parallel_workers uses helper threads of its own (started on first
// use, sleeping between calls, never stopped), which need no compiler flags,
// and falls back to the calling thread alone inside a parallel region or with
// one thread. Not torch's inter-op pool: at::launch copies the caller's
// thread-local state into each task and drops it on the pool thread when the
// task ends, which may be after the call returned and Python began to shut
// down; dropping a Python object of that state then aborts the process
// ("terminate called without an active exception" at exit, seen after a
// backward). A call returns only after every helper that joined it has left.
#pragma once

#include <c10/util/FunctionRef.h>

#include <cstdint>

namespace swa::cpu {

// Hands out chunks of the task range to one worker.
class TaskQueue {
 public:
  virtual ~TaskQueue() = default;
  // The next chunk [begin, end); false when no task is left. Claiming a
  // chunk marks the worker's previous chunk as done.
  virtual bool next(int64_t& begin, int64_t& end) = 0;
};

// Calls worker(queue) on each participating thread (at most once per thread);
// each worker allocates its scratch once and drains the queue. Chunks of up
// to `grain` tasks (fewer near the end, so that the workers finish
// together). Exceptions of workers are rethrown here.
void parallel_workers(int64_t n, int64_t grain, c10::function_ref<void(TaskQueue&)> worker);

// A grain that gives each thread several chunks (dynamic load balance) while
// keeping consecutive tasks, which share K/V rows, together.
int64_t default_grain(int64_t n);

}  // namespace swa::cpu
