#ifndef MATFORMER_CORE_UTIL_STATUS_MACROS_H_
#define MATFORMER_CORE_UTIL_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Early-return helpers for absl::Status(Or), as in Abseil-style codebases
// that predate absl's own macros.
#define MF_RETURN_IF_ERROR(expr)                        \
  do {                                                  \
    if (absl::Status mf_status_ = (expr); !mf_status_.ok()) return mf_status_; \
  } while (0)

#define MF_STATUS_CONCAT_INNER(a, b) a##b
#define MF_STATUS_CONCAT(a, b) MF_STATUS_CONCAT_INNER(a, b)
#define MF_ASSIGN_OR_RETURN_IMPL(lhs, expr, var) \
  auto var = (expr);                             \
  if (!var.ok()) return var.status();            \
  lhs = *std::move(var)
// MF_ASSIGN_OR_RETURN(auto x, F()) declares x; MF_ASSIGN_OR_RETURN(x, F()) assigns.
#define MF_ASSIGN_OR_RETURN(lhs, expr) \
  MF_ASSIGN_OR_RETURN_IMPL(lhs, expr, MF_STATUS_CONCAT(mf_status_or_, __LINE__))

#endif  // MATFORMER_CORE_UTIL_STATUS_MACROS_H_
