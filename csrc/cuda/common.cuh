// Helpers shared by the CUDA kernels: activation dtypes, read-only loads, warp reductions, launch checks.
// Only the CUDA toolkit's headers: no torch, so every .cu file compiles with nvcc alone.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace oxide_cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;

// Activation dtype codes, as oxide/ops/cuda_kernels.py passes them.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// An IEEE half stored little-endian at a 2-byte-aligned address, as float.
__device__ __forceinline__ float load_half(const uint8_t* p) {
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

// 16 activations starting at p (16-byte aligned), as float: four 128-bit loads for float32, two for 16-bit types.
__device__ __forceinline__ void load16(const float* p, float (&v)[16]) {
    const float4* q = reinterpret_cast<const float4*>(p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float4 f = __ldg(q + i);
        v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
    }
}

template <class T>   // __half or __nv_bfloat16
__device__ __forceinline__ void load16(const T* p, float (&v)[16]) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const uint4 raw = __ldg(q + i);
        const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[8 * i + j] = to_float(h[j]);
    }
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

// Throws std::runtime_error naming what was launched and the CUDA error, if the last launch failed.
inline void check_launch(const char* what) {
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess)
        throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorName(status) + " (" +
                                 cudaGetErrorString(status) + ")");
}

// Throws std::invalid_argument(what) unless ok.
inline void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

}  // namespace oxide_cuda
