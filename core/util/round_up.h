#ifndef MATFORMER_CORE_UTIL_ROUND_UP_H_
#define MATFORMER_CORE_UTIL_ROUND_UP_H_

#include <cstdint>

namespace matformer {

// The smallest multiple of `multiple` (> 0) that is >= value (>= 0).
constexpr int64_t RoundUp(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

}  // namespace matformer

#endif  // MATFORMER_CORE_UTIL_ROUND_UP_H_
