// AVX2 + FMA build of the layer kernels (layer_kernels.inc), chosen at run time when the CPU has them;
// the rest of the extension is compiled for the x86-64 baseline, so the module loads on any x86-64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "layer_kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif

namespace oxide_cpu {
namespace avx2 {

#define OXIDE_LAYER_ISA_NAME "avx2"
#define OXIDE_LAYER_LANES 16
#define OXIDE_LAYER_COLUMNS 32
#include "layer_kernels.inc"
#undef OXIDE_LAYER_ISA_NAME
#undef OXIDE_LAYER_LANES
#undef OXIDE_LAYER_COLUMNS

}  // namespace avx2
}  // namespace oxide_cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
