// Times MatMul on prepacked weights against the machine's measured limits.
//
//   matmul_bench [--f32] [NxK ...]
//
// Without NxK arguments it runs the fixed list of weight shapes below.
// "cold" rotates over enough copies of the weights (>= 256 MiB, 8x the L3) that
// every call streams them from DRAM, as in a model whose layers do not fit in
// cache; "hot" repeats one copy. "onednn" is oneDNN 2.6's fixed-M brgemm
// primitive on the same packed layout, timed cold, for comparison with the
// small-M kernel. Rates are for the cold column; %DRAM is against a read
// bandwidth measured just before each shape, %peak against the oneDNN matmul
// peak measured at start.

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/machine_limits.h"
#include "core/kernels/matmul.h"
#include "core/kernels/small_m_bf16.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace matformer::bench {
namespace {

constexpr size_t kColdBytes = size_t{256} << 20;

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Mean seconds per call of `call(i)` for i cycling over [0, copies): best of 3
// batches, each at least one full rotation and 20 calls.
template <typename Call>
double TimePerCall(int copies, Call call) {
  const int calls = std::max(20, copies);
  for (int i = 0; i < std::min(copies, 3); ++i) call(i);
  double best = 1e30;
  for (int batch = 0; batch < 3; ++batch) {
    const double start = Seconds();
    for (int i = 0; i < calls; ++i) call(i % copies);
    best = std::min(best, (Seconds() - start) / calls);
  }
  return best;
}

std::string PathName(DType dtype, int64_t m) {
  if (dtype == DType::kF32) return "onednn-gemm";
  std::string path;
  for (int64_t i = 0; i < m; i += kernels_internal::kMaxPieceRows) {
    const int64_t rows = std::min(kernels_internal::kMaxPieceRows, m - i);
    if (!path.empty()) path += "+";
    path += kernels_internal::Bf16KernelName(kernels_internal::ChooseBf16Kernel(rows));
  }
  return path;
}

uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// The cold oneDNN time of the fixed-M brgemm primitive on BA16a64b2a weights,
// what MatMul would cost without the small-M kernel.
double OnednnBf16Seconds(int64_t m, int64_t n, int64_t k, int copies) {
  using dnnl::memory;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const memory::desc weights_md({k, n}, memory::data_type::bf16, memory::format_tag::BA16a64b2a);
  const memory::desc src_md({m, k}, memory::data_type::bf16, memory::format_tag::ab);
  const memory::desc dst_md({m, n}, memory::data_type::f32, memory::format_tag::ab);
  const dnnl::matmul matmul(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, weights_md, dst_md), engine));
  std::vector<memory> weights;
  for (int c = 0; c < copies; ++c) {
    weights.emplace_back(weights_md, engine);
    std::memset(weights.back().get_data_handle(), 0x3c, weights_md.get_size());
  }
  memory src(src_md, engine), dst(dst_md, engine);
  std::memset(src.get_data_handle(), 0x3c, src_md.get_size());
  return TimePerCall(copies, [&](int c) {
    matmul.execute(stream,
                   {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights[c]}, {DNNL_ARG_DST, dst}});
    stream.wait();
  });
}

struct Shape {
  int64_t n;
  int64_t k;
};

void RunShape(DType dtype, Shape shape, const MachineLimits& limits) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const size_t element = dtype == DType::kBF16 ? 2 : 4;
  std::vector<std::byte> source(shape.n * shape.k * element);
  for (int64_t i = 0; i < shape.n * shape.k; ++i) {
    const float v = dist(rng);
    if (dtype == DType::kBF16) {
      const uint16_t h = ToBf16(v);
      std::memcpy(source.data() + i * 2, &h, 2);
    } else {
      std::memcpy(source.data() + i * 4, &v, 4);
    }
  }
  TensorView view;
  view.name = "bench";
  view.dtype = dtype;
  view.shape = {shape.n, shape.k};
  view.data = source.data();
  view.nbytes = source.size();

  std::vector<PackedMatrix> packed;
  absl::StatusOr<PackedMatrix> first = PackedMatrix::PackAll(view);
  if (!first.ok()) {
    std::fprintf(stderr, "%s\n", std::string(first.status().message()).c_str());
    std::exit(1);
  }
  const size_t bytes = first->bytes();
  const int copies = static_cast<int>(std::max<size_t>(1, (kColdBytes + bytes - 1) / bytes));
  packed.push_back(*std::move(first));
  while (static_cast<int>(packed.size()) < copies) packed.push_back(*PackedMatrix::PackAll(view));

  const double peak = dtype == DType::kBF16 ? limits.bf16_gflops : limits.f32_gflops;
  // DRAM bandwidth on a shared host drifts (48 vs 83 GB/s within minutes was
  // seen on the dev VM), so the ratio uses a measurement taken next to the rows.
  const double dram_gbps = MeasureDramReadGbps(size_t{1} << 30, 3);
  std::printf("# %s %" PRId64 "x%" PRId64 ": DRAM read %.1f GB/s now\n",
              dtype == DType::kBF16 ? "bf16" : "f32", shape.n, shape.k, dram_gbps);
  for (int64_t m : {1, 2, 4, 16, 32, 128, 512}) {
    std::vector<float> x(m * shape.k);
    for (float& v : x) v = dist(rng);
    std::vector<float> y(m * shape.n);
    const double cold = TimePerCall(
        copies, [&](int c) { MatMul(x.data(), m, shape.k, packed[c], y.data(), shape.n, false); });
    const double hot = TimePerCall(
        1, [&](int) { MatMul(x.data(), m, shape.k, packed[0], y.data(), shape.n, false); });
    const double gbps = bytes / cold * 1e-9;
    const double gflops = 2.0 * m * shape.n * shape.k / cold * 1e-9;
    std::printf("%-4s %5" PRId64 "x%-5" PRId64 " %4" PRId64
                " %-22s %9.1f %7.1f %5.0f%% %7.0f %5.0f%% %9.1f",
                dtype == DType::kBF16 ? "bf16" : "f32", shape.n, shape.k, m,
                PathName(dtype, m).c_str(), cold * 1e6, gbps, 100 * gbps / dram_gbps, gflops,
                100 * gflops / peak, hot * 1e6);
    if (dtype == DType::kBF16) {
      std::printf(" %9.1f", OnednnBf16Seconds(m, shape.n, shape.k, copies) * 1e6);
    }
    std::printf("\n");
    std::fflush(stdout);
  }
}

int Main(int argc, char** argv) {
  bool f32 = false;
  std::vector<Shape> shapes;
  for (int i = 1; i < argc; ++i) {
    Shape shape;
    if (std::strcmp(argv[i], "--f32") == 0) {
      f32 = true;
    } else if (std::sscanf(argv[i], "%" SCNd64 "x%" SCNd64, &shape.n, &shape.k) == 2 &&
               shape.n > 0 && shape.k > 0) {
      shapes.push_back(shape);
    } else {
      std::fprintf(stderr, "usage: %s [--f32] [NxK ...]\n", argv[0]);
      return 2;
    }
  }
  if (shapes.empty()) shapes = {{2048, 8192}, {8192, 2048}, {384, 1536}, {1536, 384}, {4096, 384}};
  const MachineLimits limits = MeasureMachineLimits();
  std::printf("threads %d  DRAM read %.1f GB/s  bf16 peak %.0f GFLOP/s  f32 peak %.0f GFLOP/s\n",
              omp_get_max_threads(), limits.dram_read_gbps, limits.bf16_gflops, limits.f32_gflops);
  std::printf("%-4s %11s %4s %-22s %9s %7s %6s %7s %6s %9s %9s\n", "type", "W [NxK]", "M", "path",
              "cold_us", "GB/s", "%DRAM", "GFLOP/s", "%peak", "hot_us", "onednn_us");
  for (const Shape& shape : shapes) RunShape(DType::kBF16, shape, limits);
  if (f32) {
    for (const Shape& shape : shapes) RunShape(DType::kF32, shape, limits);
  }
  return 0;
}

}  // namespace
}  // namespace matformer::bench

int main(int argc, char** argv) { return matformer::bench::Main(argc, argv); }
