/// @file config.hpp
/// @brief Which build of cubn a translation unit calls.
///
/// The CUDA library (cubn::cubn) and the CPU executor library (cubn::sim) implement the same
/// calls. Each puts them in its own inline namespace, cubn::cuda_backend or cubn::sim_backend, so
/// both can be linked into one program; `cubn::forward_training` names the one this translation
/// unit was built for (cubn::sim's users get CUBN_SIM from its CMake target). cubn/backends.hpp
/// declares both for a program that chooses at run time.
#pragma once

#if defined(CUBN_SIM)
#define CUBN_BACKEND_NAMESPACE sim_backend
#else
#define CUBN_BACKEND_NAMESPACE cuda_backend
#endif
