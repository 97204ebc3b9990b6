#ifndef MATFORMER_CORE_UTIL_HUGE_PAGE_ARRAY_H_
#define MATFORMER_CORE_UTIL_HUGE_PAGE_ARRAY_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstring>
#include <new>

namespace matformer {

// A zero-filled array of T in anonymous memory asking for transparent huge
// pages (MADV_HUGEPAGE: the default THP mode "madvise" grants them only on
// request). For large buffers read in scattered 4 KiB pieces, such as the KV
// pool, where 4 KiB pages cost a TLB miss on nearly every piece. Every page is
// touched once here, so the memory is committed up front, like the
// std::vector it replaces, and no engine step pays for zeroing a 2 MiB page
// (measured: that made a 512-token prefill's K/V writes take 11.7 ms).
// Throws std::bad_alloc if the mapping fails.
template <typename T>
class HugePageArray {
 public:
  explicit HugePageArray(size_t count) : count_(count) {
    if (count_ == 0) return;
    void* memory = mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) throw std::bad_alloc();
    madvise(memory, bytes(), MADV_HUGEPAGE);  // advisory: without THP the array still works
    std::memset(memory, 0, bytes());
    data_ = static_cast<T*>(memory);
  }
  ~HugePageArray() {
    if (data_ != nullptr) munmap(data_, bytes());
  }
  HugePageArray(const HugePageArray&) = delete;
  HugePageArray& operator=(const HugePageArray&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  size_t count_;
  T* data_ = nullptr;
};

}  // namespace matformer

#endif  // MATFORMER_CORE_UTIL_HUGE_PAGE_ARRAY_H_
