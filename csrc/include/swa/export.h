// SWA_API marks the functions libswa_cuda.so exports to C++ callers.
#pragma once

#if defined(_WIN32)
#if defined(SWA_BUILDING_LIBRARY)
#define SWA_API __declspec(dllexport)
#else
#define SWA_API __declspec(dllimport)
#endif
#else
#define SWA_API __attribute__((visibility("default")))
#endif
