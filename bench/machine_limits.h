#ifndef MATFORMER_BENCH_MACHINE_LIMITS_H_
#define MATFORMER_BENCH_MACHINE_LIMITS_H_

#include <cstddef>

#include "core/model/config.h"

namespace matformer::bench {

// Measured ceilings of this machine, taken in the calling process so that the
// thread count, frequency and memory placement match what the engine sees.
// Benchmarks report their results as fractions of these.
struct MachineLimits {
  double dram_read_gbps = 0;  // 1e9 bytes/s
  double bf16_gflops = 0;
  double f32_gflops = 0;
};

// Read bandwidth from DRAM on all OpenMP threads: the best of `repeats` summing
// passes over a `bytes` buffer. Keep `bytes` far above the last-level cache
// (the default 1 GiB is 32x a 32 MiB L3).
double MeasureDramReadGbps(size_t bytes = size_t{1} << 30, int repeats = 5);

// Best-of-`repeats` GFLOP/s of oneDNN's matmul on prepacked weights for
// m x n x k, bf16 (x rounded to bf16, f32 output) or f32: the compute ceiling.
double MeasureMatMulPeakGflops(DType dtype, int m = 1024, int n = 2048, int k = 2048,
                               int repeats = 5);

MachineLimits MeasureMachineLimits();

}  // namespace matformer::bench

#endif  // MATFORMER_BENCH_MACHINE_LIMITS_H_
