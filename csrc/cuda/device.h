// What only the GPU module (fastconv._cuda) needs around the kernels: workspace from the
// device's stream-ordered allocator, zeroing on a stream, and a check that a pointer is
// device memory of the current GPU.
#pragma once
#include <memory>

#include "cuda/kernels.h"

namespace fastconv::cuda {

std::unique_ptr<Launch> device_launch(Stream stream);
void zero(float* p, int64_t count, Stream stream);
// Throws std::invalid_argument naming `name` unless p is device memory of the current GPU.
void require_current_device(const void* p, const char* name);
// Throws std::runtime_error with `what` and the CUDA error if the last call failed.
void check_cuda(const char* what);

}  // namespace fastconv::cuda
