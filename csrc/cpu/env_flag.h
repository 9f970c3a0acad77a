// The CPU kernels' SWA_* switches read from the environment (once per call
// site: the value is cached by the caller's static).
#pragma once

#include <cstdlib>

namespace swa::cpu {

// Is the variable set to something other than empty or "0"?
inline bool env_flag(const char* name) {
  const char* env = std::getenv(name);
  return env != nullptr && env[0] != '\0' && env[0] != '0';
}

}  // namespace swa::cpu
