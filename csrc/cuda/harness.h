// Execution header that lets the CUDA kernel sources compile with a host C++ compiler
// (g++ -x c++ -DFASTCONV_CUDA_HARNESS) and run on the CPU, so CI checks their indexing,
// tiling and barriers against the NumPy reference without a GPU.
//
// Model: a launch runs its blocks one after another. The threads of a block are ucontext
// fibers on the calling OS thread; __syncthreads() switches back to the scheduler, which
// resumes every fiber once all have arrived, so it is a real barrier. Between two barriers
// each fiber runs alone from start to finish, in ascending thread order in even phases and
// descending order in odd ones: a missing barrier lets one thread overwrite or read a shared
// tile before another is done with it, which shows up as a wrong result. A fiber that ends
// while others wait at a barrier is reported as barrier divergence (undefined on a GPU).
// __shared__ variables become function-local statics: one copy at a time, which is exactly
// one block's worth since blocks never overlap. Warp-level primitives are not provided: the
// kernels use shared memory instead.
//
// Not modelled: timing, concurrent blocks, the GPU memory model (a race between blocks or
// within a warp without a barrier can pass here), shared-memory capacity and bank conflicts.
#pragma once
#ifndef FASTCONV_CUDA_HARNESS
#error "harness.h is only for the CPU build of the CUDA kernels"
#endif

#include <math.h>  // fmaf, as device code has it
#include <ucontext.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in variables of the running fiber (one OS thread runs a launch at a time: the
// Python bindings keep the GIL).
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace fastconv::harness {

class BlockRunner {
 public:
  static BlockRunner& current() {
    static BlockRunner runner;
    return runner;
  }

  template <class Body>
  void launch(dim3 grid, dim3 block, Body body) {
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024)
      throw std::invalid_argument("harness: block size must be 1..1024 threads");
    if (grid.y > 65535 || grid.z > 65535)
      throw std::invalid_argument("harness: grid.y and grid.z must be <= 65535");
    fibers_.resize(threads);
    for (auto& f : fibers_)
      if (!f.stack) f.stack.reset(new char[kStackBytes]);
    body_ = [&body] { body(); };
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) run_block(dim3(bx, by, bz), threads);
  }

  void sync() {
    Fiber& f = fibers_[running_];
    f.state = State::kAtBarrier;
    swapcontext(&f.context, &scheduler_);
  }

 private:
  static constexpr size_t kStackBytes = 256 * 1024;
  enum class State { kReady, kAtBarrier, kDone };
  struct Fiber {
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    State state = State::kReady;
  };

  static void trampoline() {
    BlockRunner& r = current();
    r.body_();
    r.fibers_[r.running_].state = State::kDone;
    // Returning resumes uc_link, the scheduler.
  }

  void run_block(dim3 block_index, unsigned threads) {
    blockIdx = block_index;
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = fibers_[t];
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &scheduler_;
      makecontext(&f.context, &BlockRunner::trampoline, 0);
      f.state = State::kReady;
    }
    for (unsigned phase = 0;; ++phase) {
      for (unsigned i = 0; i < threads; ++i) {
        const unsigned t = phase % 2 ? threads - 1 - i : i;
        if (fibers_[t].state == State::kDone) continue;
        running_ = t;
        threadIdx =
            dim3(t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y));
        fibers_[t].state = State::kReady;
        swapcontext(&scheduler_, &fibers_[t].context);
      }
      unsigned done = 0;
      for (unsigned t = 0; t < threads; ++t) done += fibers_[t].state == State::kDone;
      if (done == threads) return;
      if (done != 0)
        throw std::logic_error("harness: barrier divergence: " + std::to_string(done) + " of " +
                               std::to_string(threads) +
                               " threads exited while others wait at "
                               "__syncthreads()");
    }
  }

  std::vector<Fiber> fibers_;
  ucontext_t scheduler_;
  unsigned running_ = 0;
  std::function<void()> body_;
};

}  // namespace fastconv::harness

inline void __syncthreads() { fastconv::harness::BlockRunner::current().sync(); }

// kernel<<<grid, block, 0, stream>>>(args...) becomes FC_LAUNCH(kernel, grid, block,
// stream)(args...).
namespace fastconv::harness {
template <class Kernel>
struct Launch {
  Kernel kernel;
  dim3 grid, block;
  template <class... Args>
  void operator()(Args... args) const {
    BlockRunner::current().launch(grid, block, [&] { kernel(args...); });
  }
};
template <class Kernel>
Launch<Kernel> launch(Kernel k, dim3 grid, dim3 block) {
  return {k, grid, block};
}
}  // namespace fastconv::harness

#define FC_LAUNCH(kernel, grid, block, stream) ::fastconv::harness::launch(kernel, grid, block)
