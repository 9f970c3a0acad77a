// Emulator stand-in for <cuda_runtime.h>: see emu_core.h.
#pragma once
#include "emu_core.h"
