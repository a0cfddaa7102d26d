// Batch normalisation on the GPU: training-mode forward (batch statistics), inference (given
// statistics) and backward, with the fused activations. The per-element and per-channel
// formulas are those of the CPU kernels (batch_norm_math.h), so both round alike.
//
// Shape contract: x, y, dy and dx are C-contiguous arrays viewed as (outer, channels, inner)
// (NormGeometry: NHWC is (N*H*W, C, 1), NCHW (N, C, H*W), a Dense activation (N, C, 1)), with
// outer, channels, inner >= 1 and channels < 2^31 (one block column per channel);
// mean, var, gamma, beta, dgamma and dbeta hold `channels` floats. gamma and beta may be null
// (1 and 0); dx may be null (backward then computes dgamma and dbeta only). Element indices
// are 64-bit.
//
// Reductions over the outer*inner elements of a channel (forward's statistics, backward's
// sums of dz and dz * (x - mean)) are cut into splits whose length depends on the shape only,
// never on the GPU. A block sums one split of one channel, or of 32 neighbouring channels
// when inner == 1 (NHWC): there consecutive channels are consecutive floats, so 32 lanes read
// a row of channels and 8 rows of threads share the split's rows; otherwise the block's 256
// threads read consecutive elements of one channel. Threads sum in float (about kPerThread
// terms each), the block adds its threads in a fixed order and writes two partial sums per
// channel to the workspace; then one thread per channel adds the splits' partials in split
// order, in double, and derives the per-channel results. No atomics: a result is the same
// bits on every run, and the splits do not depend on the GPU.
//
// Forward makes two passes over x for the statistics, both summing d = x - pivot and d^2:
// the first with an element of the channel as the pivot, which moves the pivot to the mean
// (held in `mean` until the second pass ends); the second then sums about that pivot, so the
// variance comes from (x - mean)^2 rather than x^2 - mean^2 (the first pass's sum of squares
// goes unused: one kernel serves both passes, and the extra multiply-add should cost little
// next to the memory traffic). A third pass writes y = act(a * x + b). Backward recomputes
// the activation's input z = a * x + b from x, sums dz and dz * (x - mean), then writes dx.
//
// Workspace (from the launch): partial[2][splits][channels] (the two sums of every split), then
// per-channel coefficients: a and b of z = a * x + b, and for backward k_dz, k_x and k_0 of dx =
// k_dz * dz + k_x * x + k_0.
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"

#include "batch_norm_math.h"

namespace fastconv::FASTCONV_CUDA_NS {
namespace {

constexpr int kThreads = 256, kLanes = 32, kRows = kThreads / kLanes;
constexpr int64_t kPerThread = 32;

// Elements of a channel per split: kPerThread for each thread along a channel's elements
// (8 rows when inner == 1, else 256), more only where 65535 splits (gridDim.y) would not
// cover the channel.
int64_t split_length(const NormGeometry& s) {
  return pixel_chunk(s.per_channel(), (s.inner == 1 ? kRows : kThreads) * kPerThread);
}
int64_t split_count(const NormGeometry& s) { return ceil_div(s.per_channel(), split_length(s)); }

// Sums of d = x - pivot and d^2; pivot[c * pivot_stride] is the pivot of channel c.
struct CentredTerms {
  const float* x;
  const float* pivot;
  int64_t pivot_stride;
  __device__ void operator()(int64_t c, int64_t i, float& sum, float& sum_squares) const {
    const float d = x[i] - pivot[c * pivot_stride];
    sum += d;
    sum_squares += d * d;
  }
};

// Backward's sums of dz and dz * (x - mean); dz, the gradient at the activation's input
// z = a * x + b, comes from dy and z recomputed from x.
template <Activation act>
struct GradientTerms {
  const float *dy, *x, *mean, *a, *b;
  __device__ float dz(int64_t c, int64_t i) const {
    return activation_backward<act>(x[i] * a[c] + b[c], dy[i]);
  }
  __device__ void operator()(int64_t c, int64_t i, float& sum_dz, float& sum_dz_x) const {
    const float d = dz(c, i);
    sum_dz += d;
    sum_dz_x += d * (x[i] - mean[c]);
  }
};

// partial[k][split][c]: the two sums (k = 0, 1) of `terms` over split blockIdx.y of channel c.
template <class Terms, bool kChannelsInner>
__global__ void __launch_bounds__(kThreads)
    partials_kernel(const NormGeometry s, const Terms terms, int64_t length, float* partial) {
  __shared__ float scratch[2][kThreads];
  int64_t begin, end;
  split_range(blockIdx.y, length, s.per_channel(), begin, end);
  const int t = static_cast<int>(threadIdx.x);
  float* first = partial + static_cast<int64_t>(blockIdx.y) * s.channels;
  float* second = first + static_cast<int64_t>(gridDim.y) * s.channels;
  float sum = 0.f, sum2 = 0.f;
  if (kChannelsInner) {  // element p of channel c is x[p * channels + c]
    const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + t % kLanes;
    if (c < s.channels)
      for (int64_t p = begin + t / kLanes; p < end; p += kRows)
        terms(c, p * s.channels + c, sum, sum2);
    scratch[0][t] = sum;
    scratch[1][t] = sum2;
    __syncthreads();
    if (t < kLanes && c < s.channels) {
      float total = 0.f, total2 = 0.f;
      for (int r = 0; r < kRows; ++r) {
        total += scratch[0][r * kLanes + t];
        total2 += scratch[1][r * kLanes + t];
      }
      first[c] = total;
      second[c] = total2;
    }
  } else {
    const int64_t c = blockIdx.x;
    for (int64_t p = begin + t; p < end; p += kThreads) terms(c, s.offset(c, p), sum, sum2);
    const float total = block_sum(sum, scratch[0]), total2 = block_sum(sum2, scratch[1]);
    if (t == 0) {
      first[c] = total;
      second[c] = total2;
    }
  }
}

// The two sums of channel c over all splits, added in split order in double.
__device__ void channel_totals(const float* partial, int64_t splits, int64_t channels, int64_t c,
                               double& sum, double& sum2) {
  sum = sum2 = 0.0;
  for (int64_t k = 0; k < splits; ++k) {
    sum += partial[k * channels + c];
    sum2 += partial[(splits + k) * channels + c];
  }
}

// After the first pass: pivot[c] = the pivot x[c * inner] moved to the channel's mean.
__global__ void moved_pivot_kernel(const NormGeometry s, const float* x, const float* partial,
                                   int64_t splits, float* pivot) {
  const double count = static_cast<double>(s.per_channel());
  for (int64_t c = first_element(); c < s.channels; c += element_step()) {
    double sum, unused;
    channel_totals(partial, splits, s.channels, c, sum, unused);
    pivot[c] = moved_pivot(x[c * s.inner], sum, count);
  }
}

// After the second pass: mean (which holds the pivot until now), var, and a, b.
__global__ void statistics_kernel(const NormGeometry s, const float* partial, int64_t splits,
                                  const float* gamma, const float* beta, float eps, float* mean,
                                  float* var, float* a, float* b) {
  const double count = static_cast<double>(s.per_channel());
  for (int64_t c = first_element(); c < s.channels; c += element_step()) {
    double sum, sum_squares;
    channel_totals(partial, splits, s.channels, c, sum, sum_squares);
    channel_statistics(mean[c], sum, sum_squares, count, mean[c], var[c]);
    affine_coefficients(c, mean, var, gamma, beta, eps, a[c], b[c]);
  }
}

__global__ void affine_kernel(const NormGeometry s, const float* mean, const float* var,
                              const float* gamma, const float* beta, float eps, float* a,
                              float* b) {
  for (int64_t c = first_element(); c < s.channels; c += element_step())
    affine_coefficients(c, mean, var, gamma, beta, eps, a[c], b[c]);
}

// k holds k_dz, k_x and k_0, `channels` floats each.
__global__ void backward_coefficients_kernel(const NormGeometry s, const float* partial,
                                             int64_t splits, const float* mean, const float* var,
                                             const float* gamma, float eps, float* dgamma,
                                             float* dbeta, float* k) {
  const double count = static_cast<double>(s.per_channel());
  for (int64_t c = first_element(); c < s.channels; c += element_step()) {
    double sum_dz, sum_dz_x;
    channel_totals(partial, splits, s.channels, c, sum_dz, sum_dz_x);
    const BackwardCoefficients r =
        backward_coefficients(c, sum_dz, sum_dz_x, mean, var, gamma, eps, count);
    dgamma[c] = r.dgamma;
    dbeta[c] = r.dbeta;
    k[c] = r.k_dz;
    k[s.channels + c] = r.k_x;
    k[2 * s.channels + c] = r.k_0;
  }
}

template <Activation act>
__global__ void normalize_kernel(const NormGeometry s, const float* x, const float* a,
                                 const float* b, float* y) {
  const int64_t total = s.size();
  for (int64_t i = first_element(); i < total; i += element_step()) {
    const int64_t c = s.channel(i);
    y[i] = activate<act>(x[i] * a[c] + b[c]);
  }
}

template <Activation act>
__global__ void input_gradient_kernel(const NormGeometry s, const GradientTerms<act> terms,
                                      const float* k, float* dx) {
  const int64_t total = s.size();
  for (int64_t i = first_element(); i < total; i += element_step()) {
    const int64_t c = s.channel(i);
    dx[i] = k[c] * terms.dz(c, i) + k[s.channels + c] * terms.x[i] + k[2 * s.channels + c];
  }
}

void require_launchable(const NormGeometry& s, const char* what) {
  if (s.channels >= (int64_t{1} << 31))  // gridDim.x of the partial sums
    throw std::invalid_argument(std::string(what) + ": more than 2^31 - 1 channels");
}

// partial[2][splits][channels]: the sums of `terms` over every split of every channel.
template <class Terms>
void channel_partials(const NormGeometry& s, const Terms& terms, float* partial, Stream stream) {
  const unsigned splits = static_cast<unsigned>(split_count(s));
  const int64_t length = split_length(s);
  if (s.inner == 1) {
    auto* kernel = &partials_kernel<Terms, true>;
    const dim3 grid(static_cast<unsigned>(ceil_div(s.channels, kLanes)), splits);
    FC_LAUNCH(kernel, grid, dim3(kThreads), stream)(s, terms, length, partial);
  } else {
    auto* kernel = &partials_kernel<Terms, false>;
    const dim3 grid(static_cast<unsigned>(s.channels), splits);
    FC_LAUNCH(kernel, grid, dim3(kThreads), stream)(s, terms, length, partial);
  }
  check_launch("batch_norm partial sums");
}

void normalize(const NormGeometry& s, const float* x, const float* a, const float* b, float* y,
               Stream stream) {
  with_activation(s.act(), [&](auto kind) {
    FC_LAUNCH(normalize_kernel<decltype(kind)::value>, element_grid(s.size()),
              dim3(kElementThreads), stream)
    (s, x, a, b, y);
  });
  check_launch("batch_norm normalize");
}

}  // namespace

void batch_norm_forward(const NormGeometry& s, const float* x, const float* gamma,
                        const float* beta, float* y, float* mean, float* var, Launch& launch) {
  require_launchable(s, "batch_norm_forward");
  const Stream stream = launch.stream;
  const int64_t splits = split_count(s);
  float* workspace = launch.workspace((2 * splits + 2) * s.channels);
  float* a = workspace + 2 * splits * s.channels;
  float* b = a + s.channels;
  const dim3 grid = element_grid(s.channels), block(kElementThreads);
  channel_partials(s, CentredTerms{x, x, s.inner}, workspace, stream);  // pivot: x[c * inner]
  FC_LAUNCH(moved_pivot_kernel, grid, block, stream)(s, x, workspace, splits, mean);
  check_launch("batch_norm_forward");
  channel_partials(s, CentredTerms{x, mean, 1}, workspace, stream);
  FC_LAUNCH(statistics_kernel, grid, block, stream)
  (s, workspace, splits, gamma, beta, s.epsilon(), mean, var, a, b);
  check_launch("batch_norm_forward");
  normalize(s, x, a, b, y, stream);
}

void batch_norm_inference(const NormGeometry& s, const float* x, const float* mean,
                          const float* var, const float* gamma, const float* beta, float* y,
                          Launch& launch) {
  const Stream stream = launch.stream;
  float* a = launch.workspace(2 * s.channels);
  float* b = a + s.channels;
  FC_LAUNCH(affine_kernel, element_grid(s.channels), dim3(kElementThreads), stream)
  (s, mean, var, gamma, beta, s.epsilon(), a, b);
  check_launch("batch_norm_inference");
  normalize(s, x, a, b, y, stream);
}

void batch_norm_backward(const NormGeometry& s, const float* dy, const float* x, const float* mean,
                         const float* var, const float* gamma, const float* beta, float* dx,
                         float* dgamma, float* dbeta, Launch& launch) {
  require_launchable(s, "batch_norm_backward");
  const Stream stream = launch.stream;
  const int64_t splits = split_count(s);
  float* workspace = launch.workspace((2 * splits + 5) * s.channels);
  float* a = workspace + 2 * splits * s.channels;
  float* b = a + s.channels;
  float* k = b + s.channels;
  const float eps = s.epsilon();
  const dim3 grid = element_grid(s.channels), block(kElementThreads);
  FC_LAUNCH(affine_kernel, grid, block, stream)(s, mean, var, gamma, beta, eps, a, b);
  check_launch("batch_norm_backward");
  with_activation(s.act(), [&](auto kind) {
    const GradientTerms<decltype(kind)::value> terms{dy, x, mean, a, b};
    channel_partials(s, terms, workspace, stream);
    FC_LAUNCH(backward_coefficients_kernel, grid, block, stream)
    (s, workspace, splits, mean, var, gamma, eps, dgamma, dbeta, k);
    check_launch("batch_norm_backward");
    if (!dx) return;
    FC_LAUNCH(input_gradient_kernel<decltype(kind)::value>, element_grid(s.size()), block, stream)
    (s, terms, k, dx);
    check_launch("batch_norm_backward");
  });
}

}  // namespace fastconv::FASTCONV_CUDA_NS
