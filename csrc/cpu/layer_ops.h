// The float32 layer ops of the compiled CPU core (everything but the quantized matmul): RMS norm,
// fused add + RMS norm, rotary embedding, attention, gated activations and soft-capping. Each has
// exactly the semantics of its PyTorch reference in oxide/ops/reference.py; the Python wrappers in
// oxide/ops/cpu/layers.py check shapes, dtypes and strides before handing raw addresses over.
#pragma once

#include <pybind11/pybind11.h>

// Adds the layer ops to the module ``oxide._cpu`` (called from module.cpp).
void bind_layer_ops(pybind11::module_& m);
