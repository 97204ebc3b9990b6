#include "bench/machine_limits.h"

#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "oneapi/dnnl/dnnl.hpp"

namespace matformer::bench {
namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Independent lanes keep the adds off one dependency chain, so the loop is
// limited by loads rather than add latency; target_clones picks AVX-512 where
// the CPU has it.
__attribute__((target_clones("avx512f", "default"))) float SumRange(const float* data,
                                                                    size_t count) {
  constexpr size_t kLanes = 64;
  float lanes[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) lanes[l] += data[i + l];
  }
  float sum = 0;
  for (; i < count; ++i) sum += data[i];
  for (float lane : lanes) sum += lane;
  return sum;
}

}  // namespace

double MeasureDramReadGbps(size_t bytes, int repeats) {
  constexpr size_t kHugePage = size_t{2} << 20;
  bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  std::unique_ptr<float, FreeDeleter> buffer(
      static_cast<float*>(std::aligned_alloc(kHugePage, bytes)));
  madvise(buffer.get(), bytes, MADV_HUGEPAGE);
  const size_t count = bytes / sizeof(float);
  float* data = buffer.get();
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < count; ++i) data[i] = static_cast<float>(i & 1023);

  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < repeats; ++r) {
    float sum = 0;
    const double start = Seconds();
#pragma omp parallel reduction(+ : sum)
    {
      // Each thread streams one contiguous slice, as the matmul kernels do.
      const size_t threads = omp_get_num_threads();
      const size_t slice = (count + threads - 1) / threads;
      const size_t begin = std::min(count, slice * omp_get_thread_num());
      sum += SumRange(data + begin, std::min(count, begin + slice) - begin);
    }
    const double seconds = Seconds() - start;
    sink = sink + sum;
    best = std::max(best, bytes / seconds * 1e-9);
  }
  return best;
}

double MeasureMatMulPeakGflops(DType dtype, int m, int n, int k, int repeats) {
  using dnnl::memory;
  const memory::data_type in_type =
      dtype == DType::kBF16 ? memory::data_type::bf16 : memory::data_type::f32;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const memory::desc src_md({m, k}, in_type, memory::format_tag::ab);
  const memory::desc dst_md({m, n}, memory::data_type::f32, memory::format_tag::ab);
  const dnnl::matmul::primitive_desc pd(
      dnnl::matmul::desc(src_md, memory::desc({k, n}, in_type, memory::format_tag::any), dst_md),
      engine);
  memory src(src_md, engine), weights(pd.weights_desc(), engine), dst(dst_md, engine);
  // Small values: no overflow, and zeros would not make the timing cheaper anyway.
  std::memset(src.get_data_handle(), 0x3c, src_md.get_size());
  std::memset(weights.get_data_handle(), 0x3c, pd.weights_desc().get_size());
  const dnnl::matmul matmul(pd);
  const auto run = [&] {
    matmul.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
    stream.wait();
  };
  run();
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    const double start = Seconds();
    run();
    best = std::max(best, 2.0 * m * n * k / (Seconds() - start) * 1e-9);
  }
  return best;
}

MachineLimits MeasureMachineLimits() {
  MachineLimits limits;
  limits.dram_read_gbps = MeasureDramReadGbps();
  limits.bf16_gflops = MeasureMatMulPeakGflops(DType::kBF16);
  limits.f32_gflops = MeasureMatMulPeakGflops(DType::kF32);
  return limits;
}

}  // namespace matformer::bench
