/// @file error.hpp
/// @brief cubn's one error model: every failing call throws cubn::Error.
///
/// A call that throws has written nothing: arguments are checked before any kernel is launched.
/// The message names the call, the argument and what is wrong with it.
#pragma once

#include <stdexcept>
#include <string>

namespace cubn {

/// What kind of failure a cubn::Error reports.
enum class Status {
  kSuccess = 0,
  kInvalidArgument,     ///< a null pointer, a bad size, an out-of-range parameter
  kInvalidDataType,     ///< a dtype the call does not support
  kInvalidLayout,       ///< a memory order or rank the call does not support
  kMisalignedOperand,   ///< a pointer without the alignment its dtype requires
  kWorkspaceTooSmall,   ///< the caller's workspace is smaller than the size query asked for
  kSizeOverflow,        ///< a size product that does not fit in 64 bits
  kInvalidLaunch,       ///< a launch shape the device cannot run (threads, shared memory, grid)
  kCudaError,           ///< the CUDA runtime reported an error (launch or device query)
  kKernelFault,         ///< the CPU executor caught a kernel breaking a CUDA rule
  kCommunicationError,  ///< the collective library (NCCL, cubn/nccl.hpp) reported an error
};

/// A readable name for a Status, e.g. "invalid argument".
inline const char* to_string(Status s) noexcept {
  switch (s) {
    case Status::kSuccess: return "success";
    case Status::kInvalidArgument: return "invalid argument";
    case Status::kInvalidDataType: return "invalid data type";
    case Status::kInvalidLayout: return "invalid layout";
    case Status::kMisalignedOperand: return "misaligned operand";
    case Status::kWorkspaceTooSmall: return "workspace too small";
    case Status::kSizeOverflow: return "size overflow";
    case Status::kInvalidLaunch: return "invalid launch";
    case Status::kCudaError: return "CUDA error";
    case Status::kKernelFault: return "kernel fault";
    case Status::kCommunicationError: return "communication error";
  }
  return "unknown status";
}

/// The exception every cubn call throws on failure. what() holds the full message.
class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  /// The kind of failure.
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

}  // namespace cubn
