// Emulator stand-in for <cuda_fp16.h>: see emu_core.h.
#pragma once
#include "emu_core.h"
