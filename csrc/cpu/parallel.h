// Threading over the machine's cores with OpenMP, sized by fastconv.set_num_threads().
#pragma once
#include <algorithm>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastconv::cpu {

int num_threads();         // threads for the running call; defined once, in bindings.cpp
int configured_threads();  // fastconv.set_num_threads(), or OpenMP's default

// Within its scope, the calling thread's kernels run serially if `work` < `threshold`.
class SerialIfSmall {
 public:
  SerialIfSmall(int64_t work, int64_t threshold);
  ~SerialIfSmall();
  SerialIfSmall(const SerialIfSmall&) = delete;
  SerialIfSmall& operator=(const SerialIfSmall&) = delete;

 private:
  bool previous_;
};

// body(i) for i in [0, count), items handed out one at a time (they may differ in cost).
template <class Body>
void parallel_for(int64_t count, Body&& body) {
#ifdef _OPENMP
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), count));
  if (threads > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t i = 0; i < count; ++i) body(i);
    return;
  }
#endif
  for (int64_t i = 0; i < count; ++i) body(i);
}

// body(begin, end) for the runs of `per` consecutive indices that cover [0, count), one
// item each: for work whose single indices are too small to hand out one at a time.
template <class Body>
void parallel_runs(int64_t count, int64_t per, Body&& body) {
  parallel_for((count + per - 1) / per,
               [&](int64_t item) { body(item * per, std::min(count, item * per + per)); });
}

// body(t, threads) once per thread, for partial results that are then reduced in a fixed
// order, so that a sum does not depend on scheduling.
template <class Body>
void parallel_threads(int threads, Body&& body) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    body(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  body(0, 1);
}

// Sums per-thread partial results in thread order into out[0, size), so the result does
// not depend on which thread finished first; out may be partials[0] itself. The threads
// split the elements.
template <class Partials>
void reduce_partials(const Partials& partials, float* out, int64_t size) {
  parallel_runs(size, 16384, [&](int64_t begin, int64_t end) {
    if (out != partials[0].data())
      std::copy(partials[0].begin() + begin, partials[0].begin() + end, out + begin);
    for (size_t t = 1; t < partials.size(); ++t)
      for (int64_t i = begin; i < end; ++i) out[i] += partials[t][i];
  });
}

}  // namespace fastconv::cpu
