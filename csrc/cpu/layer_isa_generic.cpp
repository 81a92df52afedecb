// Portable build of the layer kernels (layer_kernels.inc): plain C++ that the compiler vectorises for
// the target's baseline (SSE2 on x86-64, NEON on AArch64).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "layer_kernels.h"

namespace oxide_cpu {
namespace generic {

#define OXIDE_LAYER_ISA_NAME "generic"
#define OXIDE_LAYER_LANES 8
#define OXIDE_LAYER_COLUMNS 32
#include "layer_kernels.inc"
#undef OXIDE_LAYER_ISA_NAME
#undef OXIDE_LAYER_LANES
#undef OXIDE_LAYER_COLUMNS

}  // namespace generic
}  // namespace oxide_cpu
