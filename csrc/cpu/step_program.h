// StepProgram: the compiled-core calls of one decode step, recorded once and replayed for every step
// after it in a single call (see step_program.cpp).
#pragma once

#include <pybind11/pybind11.h>

// Adds the class ``StepProgram`` to the module ``oxide._cpu`` (called from module.cpp).
void bind_step_program(pybind11::module_& m);
