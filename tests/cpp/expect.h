// EXPECT(cond, printf-style context): counts a failure and prints the first
// 20 with their context. The C++ unit tests return failures != 0 from main.
#pragma once

#include <cstdio>

inline int failures = 0;

#define EXPECT(cond, ...)                                            \
  do {                                                               \
    if (!(cond)) {                                                   \
      ++failures;                                                    \
      if (failures <= 20) {                                          \
        std::printf("FAIL %s:%d: %s | ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                    \
        std::printf("\n");                                           \
      }                                                              \
    }                                                                \
  } while (0)

// The end of a test's main: prints the outcome, returns the exit status.
inline int report(const char* test) {
  if (failures) {
    std::printf("%s: %d failure(s)\n", test, failures);
    return 1;
  }
  std::printf("%s: all passed\n", test);
  return 0;
}
