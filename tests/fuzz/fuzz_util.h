#ifndef MATFORMER_TESTS_FUZZ_FUZZ_UTIL_H_
#define MATFORMER_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstdio>
#include <cstdlib>

// A broken invariant: print it and abort, which libFuzzer reports as a crash
// (with the input saved). Used instead of assert, which release builds drop.
#define FUZZ_CHECK(condition)                                                                 \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)

#endif  // MATFORMER_TESTS_FUZZ_FUZZ_UTIL_H_
