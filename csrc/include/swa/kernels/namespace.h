// The namespace of the kernel-level API (params structs, launchers, index math).
// A project that vendors these headers can rename it by defining
// SWA_KERNEL_NS before including them (and when building the kernels).
#pragma once

#ifndef SWA_KERNEL_NS
#define SWA_KERNEL_NS swa::kernels
#endif
