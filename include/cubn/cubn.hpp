/// @file cubn.hpp
/// @brief cubn's umbrella header: include this.
#pragma once

#include "cubn/batch_norm.hpp"
#include "cubn/distributed.hpp"
#include "cubn/error.hpp"
#include "cubn/tensor.hpp"
