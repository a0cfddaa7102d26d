// The GPU side of fastconv._cuda's bindings (see device.h).
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/device.h"

namespace fastconv::cuda {
namespace {

void throw_on(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) throw std::runtime_error(what + ": " + cudaGetErrorString(err));
}

// Workspace blocks are freed in stream order when the launch ends: the kernels queued
// before on the same stream still see them, and nothing waits.
class DeviceLaunch final : public Launch {
 public:
  explicit DeviceLaunch(Stream s) : Launch(s) {}
  ~DeviceLaunch() override {
    for (void* p : blocks_) cudaFreeAsync(p, static_cast<cudaStream_t>(stream));
  }
  float* workspace(int64_t floats) override {
    void* p = nullptr;
    throw_on(cudaMallocAsync(&p, static_cast<size_t>(floats) * sizeof(float),
                             static_cast<cudaStream_t>(stream)),
             "workspace of " + std::to_string(floats) + " floats");
    blocks_.push_back(p);
    return static_cast<float*>(p);
  }

 private:
  std::vector<void*> blocks_;
};

}  // namespace

std::unique_ptr<Launch> device_launch(Stream stream) {
  return std::make_unique<DeviceLaunch>(stream);
}

void zero(float* p, int64_t count, Stream stream) {
  throw_on(cudaMemsetAsync(p, 0, static_cast<size_t>(count) * sizeof(float),
                           static_cast<cudaStream_t>(stream)),
           "zeroing an output");
}

void require_current_device(const void* p, const char* name) {
  cudaPointerAttributes attributes{};
  const cudaError_t err = cudaPointerGetAttributes(&attributes, p);
  if (err != cudaSuccess) {
    cudaGetLastError();  // the query's error must not stick to the next launch
    throw std::invalid_argument(std::string(name) + " is not usable CUDA memory (" +
                                cudaGetErrorString(err) + ")");
  }
  int current = 0;
  throw_on(cudaGetDevice(&current), "cudaGetDevice");
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(std::string(name) + " is not in GPU memory");
  if (attributes.device != current)
    throw std::invalid_argument(std::string(name) + " is on GPU " +
                                std::to_string(attributes.device) + ", the call runs on GPU " +
                                std::to_string(current));
}

void check_cuda(const char* what) { throw_on(cudaGetLastError(), what); }

}  // namespace fastconv::cuda
