#ifndef MATFORMER_CORE_KERNELS_MATMUL_H_
#define MATFORMER_CORE_KERNELS_MATMUL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/model/config.h"
#include "core/model/safetensors.h"

namespace matformer {

// A block of a weight matrix W [N, K] (nn.Linear layout: out x in), reordered
// once at load time into the layout the matmul kernels read fastest. The block
// is rows [n_begin, n_end) x cols [k_begin, k_end) of the source tensor, so the
// nested FFN can keep each granularity increment as its own slab: gate/up are
// split by rows, down by columns. The source (usually the mmap) is not kept.
class PackedMatrix {
 public:
  static absl::StatusOr<PackedMatrix> Pack(const TensorView& w, int64_t n_begin, int64_t n_end,
                                           int64_t k_begin, int64_t k_end);
  static absl::StatusOr<PackedMatrix> PackAll(const TensorView& w);
  // The nested FFN's slabs of w: rows [ends[j-1], ends[j]) (split_rows: gate
  // and up) or columns (down). bf16 row slabs whose ends fall on 64-row
  // blocks share one buffer, in order, so MatMulRowSlabs runs adjacent ones
  // as one matmul (measured: the four XL slabs of a 4096x1024 gate took 25-30%
  // longer as four calls than as one, at 1 and at 16 rows).
  static absl::StatusOr<std::vector<PackedMatrix>> PackSlabs(const TensorView& w, absl::Span<const int64_t> ends,
                                                             bool split_rows);

  PackedMatrix();  // empty until a packed one is assigned
  PackedMatrix(PackedMatrix&&) noexcept;
  PackedMatrix& operator=(PackedMatrix&&) noexcept;
  ~PackedMatrix();

  int64_t n() const;
  int64_t k() const;
  DType dtype() const;
  // Bytes of packed weights read by one full pass (for bandwidth accounting).
  size_t bytes() const;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  explicit PackedMatrix(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// y[i, 0:n) = (accumulate ? y[i, 0:n) : 0) + x[i, 0:k) · W^T  for i in [0, m).
// x and y are f32, row-major with leading dimensions ldx / ldy (in elements).
// bf16 weights: x is rounded to bf16, products accumulate in f32. Runs on the
// process's OpenMP threads. m may be 0 (no-op).
void MatMul(const float* x, int64_t m, int64_t ldx, const PackedMatrix& w, float* y, int64_t ldy,
            bool accumulate);

// The nested FFN's gate or up: row slab j of one matrix (PackSlabs) runs on
// rows [0, slab_rows[j]) of x (rows sorted widest first, so slab_rows does not
// increase; slabs past slab_rows' end do not run), its outputs in y's columns
// after the previous slabs'. Slabs on the same rows run as one matmul when
// they are adjacent in memory.
void MatMulNestedRowSlabs(const float* x, int64_t ldx, absl::Span<const int64_t> slab_rows,
                          absl::Span<const PackedMatrix> slabs, float* y, int64_t ldy);

}  // namespace matformer

#endif  // MATFORMER_CORE_KERNELS_MATMUL_H_
