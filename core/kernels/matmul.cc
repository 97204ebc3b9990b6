#include "core/kernels/matmul.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/kernels/amx.h"
#include "core/kernels/ops.h"
#include "core/kernels/small_m_bf16.h"
#include "core/util/round_up.h"
#include "core/util/status_macros.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace matformer {
namespace {

using dnnl::memory;
using kernels_internal::kMaxPieceRows;
using kernels_internal::kPackBlockK;
using kernels_internal::kPackBlockN;
using kernels_internal::Bf16Kernel;
using kernels_internal::ChooseBf16Kernel;
using kernels_internal::kSmallMMaxRows;

// oneDNN 2.6 only picks its brgemm kernel for a fixed M, so bf16 primitives are
// made per row count. Rows are rounded up to a multiple of kRowGranule and
// large m is cut into pieces of kMaxPieceRows, which bounds the cache to
// kMaxPieceRows / kRowGranule primitives per shape; 256-row pieces run within
// 2% of a single 512-row call.
constexpr int64_t kRowGranule = 16;
// Element count below which a pass over x or y is cheaper than starting a
// parallel region.
constexpr int64_t kParallelConvertElements = int64_t{1} << 16;

size_t Bf16PackedBytes(int64_t n, int64_t k) {
  return RoundUp(n, kPackBlockN) * RoundUp(k, kPackBlockK) * sizeof(uint16_t);
}

// MatMul has no error channel: failures here are bugs or exhausted memory.
[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "matmul: %s\n", message.c_str());
  std::abort();
}

const char* Name(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "f32"; }

// A 64-byte aligned heap buffer; big ones are backed by transparent huge pages
// so that streaming the weights does not thrash the TLB.
class AlignedBuffer {
 public:
  void Reserve(size_t bytes) {
    if (bytes <= size_) return;
    constexpr size_t kHugePage = size_t{2} << 20;
    const size_t align = bytes >= kHugePage ? kHugePage : 64;
    const size_t size = RoundUp(static_cast<int64_t>(bytes), static_cast<int64_t>(align));
    data_.reset(static_cast<std::byte*>(std::aligned_alloc(align, size)));
    if (data_ == nullptr) Die(absl::StrCat("out of memory allocating ", size, " bytes"));
    if (align == kHugePage) madvise(data_.get(), size, MADV_HUGEPAGE);
    size_ = size;
  }
  std::byte* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
  size_t size_ = 0;
};

dnnl::engine& Engine() {
  static dnnl::engine* const engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// A oneDNN CPU stream carries no state between executions, but the API does not
// promise concurrent use of one stream, so each calling thread keeps its own.
dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

bool HasAvx512Bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

struct PrimitiveKey {
  int64_t n;
  int64_t k;
  // Row count for bf16 (fixed-M primitives); 0 for f32 (runtime M). The
  // weights layout is not part of the key: it follows from n, k and dtype.
  int64_t m;
  DType dtype;
  bool sum;

  bool operator==(const PrimitiveKey&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const PrimitiveKey& key) {
    return H::combine(std::move(h), key.n, key.k, key.m, key.dtype, key.sum);
  }
};

struct Primitive {
  dnnl::matmul matmul;
  size_t scratchpad_bytes;
};

// Primitives are created once per key and never evicted; the scratchpad is
// user-owned so the same primitive may run on several threads at once.
class PrimitiveCache {
 public:
  static PrimitiveCache& Get() {
    static PrimitiveCache* const cache = new PrimitiveCache;
    return *cache;
  }

  const Primitive& Find(const PrimitiveKey& key, const memory::desc& weights_md) {
    std::lock_guard<std::mutex> lock(mu_);
    std::unique_ptr<Primitive>& slot = primitives_[key];
    if (slot == nullptr) slot = Create(key, weights_md);
    return *slot;
  }

 private:
  static std::unique_ptr<Primitive> Create(const PrimitiveKey& key,
                                           const memory::desc& weights_md) {
    constexpr memory::dim kRuntime = DNNL_RUNTIME_DIM_VAL;
    const bool bf16 = key.dtype == DType::kBF16;
    // brgemm in oneDNN 2.6 requires dense src and dst with a fixed M; the f32
    // gemm path takes runtime M and strides, so one primitive serves all calls.
    const memory::dim m = bf16 ? key.m : kRuntime;
    const memory::desc src({m, key.k}, bf16 ? memory::data_type::bf16 : memory::data_type::f32,
                           bf16 ? memory::dims{key.k, 1} : memory::dims{kRuntime, 1});
    const memory::desc dst({m, key.n}, memory::data_type::f32,
                           bf16 ? memory::dims{key.n, 1} : memory::dims{kRuntime, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (key.sum) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    try {
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights_md, dst), attr, Engine());
      return std::make_unique<Primitive>(
          Primitive{dnnl::matmul(pd), pd.scratchpad_desc().get_size()});
    } catch (const dnnl::error& e) {
      Die(absl::StrCat("oneDNN matmul ", Name(key.dtype), " m=", key.m, " n=", key.n, " k=", key.k,
                       ": ", e.what()));
    }
  }

  std::mutex mu_;  // std::mutex: visible to ThreadSanitizer (scheduler.h says why)
  absl::flat_hash_map<PrimitiveKey, std::unique_ptr<Primitive>> primitives_ ABSL_GUARDED_BY(mu_);
};

// Per-thread scratch, grown to the largest call seen and kept.
struct Scratch {
  AlignedBuffer x_bf16;
  AlignedBuffer dst;
  AlignedBuffer onednn;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

void Execute(const Primitive& primitive, const memory& src, const memory& weights,
             const memory& dst) {
  AlignedBuffer& pad = ThreadScratch().onednn;
  pad.Reserve(std::max<size_t>(primitive.scratchpad_bytes, 1));
  const memory scratchpad(memory::desc({static_cast<memory::dim>(pad.size())},
                                       memory::data_type::u8, memory::format_tag::a),
                          Engine(), pad.data());
  primitive.matmul.execute(Stream(), {{DNNL_ARG_SRC, src},
                                      {DNNL_ARG_WEIGHTS, weights},
                                      {DNNL_ARG_DST, dst},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad}});
  Stream().wait();
}

}  // namespace

namespace kernels_internal {

Bf16Kernel ChooseBf16Kernel(int64_t rows) {
  if (rows >= kAmxMinRows && AmxEnabled()) return Bf16Kernel::kAmx;
  if (rows <= kSmallMMaxRows && HasAvx512Bf16()) return Bf16Kernel::kAvx512;
  return Bf16Kernel::kOnednn;
}

const char* Bf16KernelName(Bf16Kernel kernel) {
  switch (kernel) {
    case Bf16Kernel::kAmx:
      return "amx";
    case Bf16Kernel::kAvx512:
      return "avx512-small-m";
    case Bf16Kernel::kOnednn:
      break;
  }
  return "onednn-brg";
}

}  // namespace kernels_internal

namespace {

// Rows [0, m) of x into a dense bf16 copy.
void ConvertRows(const float* x, int64_t m, int64_t ldx, int64_t k, uint16_t* out, int64_t ld_out) {
  const bool avx512 = HasAvx512Bf16();
#pragma omp parallel for schedule(static) if (m * k >= kParallelConvertElements)
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * ldx;
    uint16_t* dst = out + i * ld_out;
    if (avx512) {
      kernels_internal::ConvertRowToBf16(row, k, dst);
    } else {
      for (int64_t j = 0; j < k; ++j) dst[j] = F32ToBf16(row[j]);
    }
  }
}

}  // namespace

struct PackedMatrix::Impl {
  int64_t n = 0;
  int64_t k = 0;
  DType dtype = DType::kF32;
  // Owned, or shared with the other slabs packed with it (PackSlabs).
  std::shared_ptr<AlignedBuffer> buffer;
  const std::byte* data = nullptr;  // this matrix's bytes within buffer
  size_t bytes = 0;
  // f32 only: oneDNN's chosen layout. bf16 is BA16a64b2a (Bf16Weights).
  memory::desc weights_md;
  memory weights;
};

namespace {

// bf16 weights in the small-M kernel's layout (small_m_bf16.h), which is
// oneDNN's BA16a64b2a: one matrix, or adjacent row slabs read as one.
struct Bf16Weights {
  const uint16_t* data;
  int64_t n, k;

  memory::desc Desc() const { return memory::desc({k, n}, memory::data_type::bf16, memory::format_tag::BA16a64b2a); }
};

// Runs rows [0, rows) of the bf16 copy of x through a fixed-M oneDNN primitive.
// Row counts off the granule and strided y go through a dense f32 scratch,
// which brgemm needs; the copy-out costs one pass over y.
void OnednnBf16Piece(const Bf16Weights& w, const uint16_t* xb, int64_t rows, float* y, int64_t ldy,
                     bool accumulate) {
  const int64_t rows_padded = RoundUp(rows, kRowGranule);
  const bool direct = rows_padded == rows && ldy == w.n;
  const memory::desc weights_md = w.Desc();
  const Primitive& primitive = PrimitiveCache::Get().Find(
      {w.n, w.k, rows_padded, DType::kBF16, direct && accumulate}, weights_md);
  const memory weights(weights_md, Engine(), const_cast<uint16_t*>(w.data));
  const memory src(memory::desc({rows_padded, w.k}, memory::data_type::bf16, {w.k, 1}), Engine(),
                   const_cast<uint16_t*>(xb));
  const memory::desc dst_md({rows_padded, w.n}, memory::data_type::f32, {w.n, 1});
  if (direct) {
    Execute(primitive, src, weights, memory(dst_md, Engine(), y));
    return;
  }
  AlignedBuffer& scratch = ThreadScratch().dst;
  scratch.Reserve(rows_padded * w.n * sizeof(float));
  float* out = reinterpret_cast<float*>(scratch.data());
  Execute(primitive, src, weights, memory(dst_md, Engine(), out));
  const int64_t n = w.n;
#pragma omp parallel for schedule(static) if (rows * n >= kParallelConvertElements)
  for (int64_t i = 0; i < rows; ++i) {
    float* dst = y + i * ldy;
    const float* from = out + i * n;
    if (accumulate) {
      for (int64_t j = 0; j < n; ++j) dst[j] += from[j];
    } else {
      std::memcpy(dst, from, n * sizeof(float));
    }
  }
}

void MatMulBf16(const float* x, int64_t m, int64_t ldx, const Bf16Weights& w, float* y, int64_t ldy,
                bool accumulate) {
  // oneDNN and the AMX tiles read whole granules of rows: zero the rows they
  // read past m.
  const int64_t m_alloc = RoundUp(m, kRowGranule);
  // oneDNN's pieces read rows of exactly k. The kernels get a padded stride:
  // with k a multiple of 1024 the rows were a multiple of 2 KiB apart,
  // crowding into one or two L1 sets (build/bench/matmul_bench 1024x4096
  // 1024x1024 8192x1024, hot: 32 rows 282-288 vs 327 us, 72 vs 87-90, 558-570
  // vs 593-599; 16 rows of 1024x4096 142 vs 145-167); the AMX tiles also read
  // x in whole 32-column blocks, so the padding is zeroed for them.
  const Bf16Kernel first = ChooseBf16Kernel(std::min(m, kMaxPieceRows));
  const bool padded = first != Bf16Kernel::kOnednn;
  const int64_t k_padded = RoundUp(w.k, kPackBlockK);
  const int64_t ld = padded ? k_padded + 32 : w.k;
  AlignedBuffer& xb_buffer = ThreadScratch().x_bf16;
  xb_buffer.Reserve(m_alloc * ld * sizeof(uint16_t));
  uint16_t* xb = reinterpret_cast<uint16_t*>(xb_buffer.data());
  ConvertRows(x, m, ldx, w.k, xb, ld);
  std::memset(xb + m * ld, 0, (m_alloc - m) * ld * sizeof(uint16_t));
  if (padded && k_padded != w.k) {
    for (int64_t i = 0; i < m; ++i) std::fill(xb + i * ld + w.k, xb + i * ld + k_padded, 0);
  }
  for (int64_t i = 0; i < m; i += kMaxPieceRows) {
    const int64_t rows = std::min(kMaxPieceRows, m - i);
    switch (ChooseBf16Kernel(rows)) {
      case Bf16Kernel::kAmx:
        kernels_internal::AmxBf16MatMul(xb + i * ld, rows, ld, w.data, w.n, w.k, y + i * ldy, ldy,
                                        accumulate);
        break;
      case Bf16Kernel::kAvx512:
        kernels_internal::SmallMBf16MatMul(xb + i * ld, rows, ld, w.data, w.n, w.k, y + i * ldy,
                                           ldy, accumulate);
        break;
      case Bf16Kernel::kOnednn:
        OnednnBf16Piece(w, xb + i * ld, rows, y + i * ldy, ldy, accumulate);
        break;
    }
  }
}

void MatMulF32(const float* x, int64_t m, int64_t ldx, const PackedMatrix::Impl& w, float* y,
               int64_t ldy, bool accumulate) {
  const Primitive& primitive =
      PrimitiveCache::Get().Find({w.n, w.k, 0, DType::kF32, accumulate}, w.weights_md);
  const memory src(memory::desc({m, w.k}, memory::data_type::f32, {ldx, 1}), Engine(),
                   const_cast<float*>(x));
  const memory dst(memory::desc({m, w.n}, memory::data_type::f32, {ldy, 1}), Engine(), y);
  Execute(primitive, src, w.weights, dst);
}

// Writes rows [n0, n1) x cols [k0, k1) of the bf16 tensor in the layout
// documented in small_m_bf16.h. `out` is zeroed, which provides the padding.
void PackBf16(const TensorView& w, int64_t n0, int64_t n1, int64_t k0, int64_t k1, int64_t k_padded,
              uint16_t* out) {
  const int64_t row_stride = w.shape[1];
  const auto* src = reinterpret_cast<const uint16_t*>(w.data);
  const int64_t n = n1 - n0;
  const int64_t k = k1 - k0;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* row = src + (n0 + i) * row_stride + k0;
    uint16_t* block = out + (i / kPackBlockN) * k_padded * kPackBlockN + (i % kPackBlockN) * 2;
    for (int64_t j = 0; j < k; ++j) block[(j / 2) * kPackBlockN * 2 + j % 2] = row[j];
  }
}

}  // namespace

PackedMatrix::PackedMatrix() = default;
PackedMatrix::PackedMatrix(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PackedMatrix::PackedMatrix(PackedMatrix&&) noexcept = default;
PackedMatrix& PackedMatrix::operator=(PackedMatrix&&) noexcept = default;
PackedMatrix::~PackedMatrix() = default;

int64_t PackedMatrix::n() const { return impl_ ? impl_->n : 0; }
int64_t PackedMatrix::k() const { return impl_ ? impl_->k : 0; }
DType PackedMatrix::dtype() const { return impl_->dtype; }
size_t PackedMatrix::bytes() const { return impl_ ? impl_->bytes : 0; }

absl::StatusOr<PackedMatrix> PackedMatrix::PackAll(const TensorView& w) {
  if (w.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("matmul weights ", w.name, ": expected 2 dimensions, got ", w.shape.size()));
  }
  return Pack(w, 0, w.shape[0], 0, w.shape[1]);
}

absl::StatusOr<PackedMatrix> PackedMatrix::Pack(const TensorView& w, int64_t n_begin, int64_t n_end,
                                                int64_t k_begin, int64_t k_end) {
  const char* dtype_name = Name(w.dtype);
  if (w.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("matmul weights ", w.name, ": expected 2 dimensions, got ", w.shape.size()));
  }
  const int64_t rows = w.shape[0];
  const int64_t cols = w.shape[1];
  if (rows <= 0 || cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("matmul weights ", w.name, ": empty shape [", rows, ", ", cols, "]"));
  }
  if (n_begin < 0 || n_begin >= n_end || n_end > rows) {
    return absl::InvalidArgumentError(absl::StrCat("matmul weights ", w.name, ": row range [",
                                                   n_begin, ", ", n_end,
                                                   ") is empty or outside [0, ", rows, ")"));
  }
  if (k_begin < 0 || k_begin >= k_end || k_end > cols) {
    return absl::InvalidArgumentError(absl::StrCat("matmul weights ", w.name, ": column range [",
                                                   k_begin, ", ", k_end,
                                                   ") is empty or outside [0, ", cols, ")"));
  }
  const size_t element_size = w.dtype == DType::kBF16 ? 2 : 4;
  if (w.data == nullptr || w.nbytes < static_cast<size_t>(rows * cols) * element_size) {
    return absl::InvalidArgumentError(absl::StrCat("matmul weights ", w.name, ": ", w.nbytes,
                                                   " bytes of data for a ", dtype_name, " [", rows,
                                                   ", ", cols, "] tensor"));
  }

  auto impl = std::make_unique<Impl>();
  impl->n = n_end - n_begin;
  impl->k = k_end - k_begin;
  impl->dtype = w.dtype;
  impl->buffer = std::make_shared<AlignedBuffer>();
  try {
    if (w.dtype == DType::kBF16) {
      const int64_t k_padded = RoundUp(impl->k, kPackBlockK);
      impl->bytes = Bf16PackedBytes(impl->n, impl->k);
      // The small-M kernel and oneDNN read the same buffer: the layouts must agree.
      const size_t onednn_bytes = Bf16Weights{nullptr, impl->n, impl->k}.Desc().get_size();
      if (onednn_bytes != impl->bytes) {
        return absl::InternalError(absl::StrCat("matmul weights ", w.name, ": oneDNN sizes BA16a64b2a at ",
                                                onednn_bytes, " bytes, expected ", impl->bytes));
      }
      impl->buffer->Reserve(impl->bytes);
      std::memset(impl->buffer->data(), 0, impl->bytes);
      PackBf16(w, n_begin, n_end, k_begin, k_end, k_padded, reinterpret_cast<uint16_t*>(impl->buffer->data()));
      impl->data = impl->buffer->data();
    } else {
      // Let the runtime-M primitive pick its weights layout, then reorder the
      // block (a strided view of the source) into it.
      constexpr memory::dim kRuntime = DNNL_RUNTIME_DIM_VAL;
      const dnnl::matmul::primitive_desc pd(
          dnnl::matmul::desc(
              memory::desc({kRuntime, impl->k}, memory::data_type::f32, {kRuntime, 1}),
              memory::desc({impl->k, impl->n}, memory::data_type::f32, memory::format_tag::any),
              memory::desc({kRuntime, impl->n}, memory::data_type::f32, {kRuntime, 1})),
          Engine());
      impl->weights_md = pd.weights_desc();
      impl->bytes = impl->weights_md.get_size();
      impl->buffer->Reserve(impl->bytes);
      impl->data = impl->buffer->data();
      impl->weights = memory(impl->weights_md, Engine(), impl->buffer->data());
      const float* first = reinterpret_cast<const float*>(w.data) + n_begin * cols + k_begin;
      memory source(memory::desc({impl->k, impl->n}, memory::data_type::f32, memory::dims{1, cols}),
                    Engine(), const_cast<float*>(first));
      dnnl::reorder(source, impl->weights).execute(Stream(), source, impl->weights);
      Stream().wait();
    }
  } catch (const dnnl::error& e) {
    return absl::InternalError(
        absl::StrCat("matmul weights ", w.name, ": oneDNN packing failed: ", e.what()));
  }
  return PackedMatrix(std::move(impl));
}

absl::StatusOr<std::vector<PackedMatrix>> PackedMatrix::PackSlabs(const TensorView& w, absl::Span<const int64_t> ends,
                                                                  bool split_rows) {
  if (w.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("matmul weights ", w.name, ": expected 2 dimensions, got ", w.shape.size()));
  }
  const int64_t rows = w.shape[0], cols = w.shape[1];
  std::vector<PackedMatrix> slabs;
  const bool shared = split_rows && w.dtype == DType::kBF16 && !ends.empty() &&
                      std::all_of(ends.begin(), ends.end() - 1, [](int64_t end) { return end % kPackBlockN == 0; });
  if (shared) {
    // Slabs on whole 64-row blocks are the column blocks of the packed rows
    // [0, ends.back()): pack those once and point each slab at its blocks.
    MF_ASSIGN_OR_RETURN(PackedMatrix whole, Pack(w, 0, ends.back(), 0, cols));
    const Impl& all = whole.impl();
    const int64_t k_padded = RoundUp(all.k, kPackBlockK);
    int64_t begin = 0;
    for (int64_t end : ends) {
      auto impl = std::make_unique<Impl>();
      impl->n = end - begin;
      impl->k = all.k;
      impl->dtype = all.dtype;
      impl->buffer = all.buffer;
      impl->data = all.data + (begin / kPackBlockN) * k_padded * kPackBlockN * sizeof(uint16_t);
      impl->bytes = Bf16PackedBytes(impl->n, impl->k);
      slabs.push_back(PackedMatrix(std::move(impl)));
      begin = end;
    }
    return slabs;
  }
  int64_t begin = 0;
  for (int64_t end : ends) {
    MF_ASSIGN_OR_RETURN(PackedMatrix slab, split_rows ? Pack(w, begin, end, 0, cols) : Pack(w, 0, rows, begin, end));
    slabs.push_back(std::move(slab));
    begin = end;
  }
  return slabs;
}

void MatMul(const float* x, int64_t m, int64_t ldx, const PackedMatrix& w, float* y, int64_t ldy,
            bool accumulate) {
  if (m == 0) return;
  const PackedMatrix::Impl& impl = w.impl();
  if (impl.dtype == DType::kBF16) {
    MatMulBf16(x, m, ldx, {reinterpret_cast<const uint16_t*>(impl.data), impl.n, impl.k}, y, ldy, accumulate);
  } else {
    MatMulF32(x, m, ldx, impl, y, ldy, accumulate);
  }
}

namespace {

// y[i, :) = x[i, 0:k) · [slabs[0]; slabs[1]; ...]^T, the slabs' outputs side by side.
void MatMulRowSlabs(const float* x, int64_t m, int64_t ldx, absl::Span<const PackedMatrix> slabs, float* y,
                    int64_t ldy) {
  if (m == 0 || slabs.empty()) return;
  const PackedMatrix::Impl& first = slabs[0].impl();
  bool adjacent = first.dtype == DType::kBF16;
  int64_t n = first.n;
  for (size_t j = 1; j < slabs.size() && adjacent; ++j) {
    const PackedMatrix::Impl& previous = slabs[j - 1].impl();
    const PackedMatrix::Impl& slab = slabs[j].impl();
    adjacent = previous.n % kPackBlockN == 0 && slab.k == first.k && previous.data + previous.bytes == slab.data;
    n += slab.n;
  }
  if (adjacent) {
    MatMulBf16(x, m, ldx, {reinterpret_cast<const uint16_t*>(first.data), n, first.k}, y, ldy, false);
    return;
  }
  int64_t column = 0;
  for (const PackedMatrix& slab : slabs) {
    MatMul(x, m, ldx, slab, y + column, ldy, false);
    column += slab.n();
  }
}

}  // namespace

void MatMulNestedRowSlabs(const float* x, int64_t ldx, absl::Span<const int64_t> slab_rows,
                          absl::Span<const PackedMatrix> slabs, float* y, int64_t ldy) {
  int64_t column = 0;
  for (size_t j = 0; j < slab_rows.size() && j < slabs.size() && slab_rows[j] > 0;) {
    size_t end = j + 1;
    int64_t width = slabs[j].n();
    for (; end < slab_rows.size() && end < slabs.size() && slab_rows[end] == slab_rows[j]; ++end) {
      width += slabs[end].n();
    }
    MatMulRowSlabs(x, slab_rows[j], ldx, slabs.subspan(j, end - j), y + column, ldy);
    column += width;
    j = end;
  }
}

}  // namespace matformer
