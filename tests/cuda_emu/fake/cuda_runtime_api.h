// Emulator stand-in for <cuda_runtime_api.h>: see emu_core.h.
#pragma once
#include "emu_core.h"
