/// @file executor_checks.hpp
/// @brief What the executor's own tests share (CPU build only): catching a kernel fault, a smaller
/// executor device, and whether the build runs under ThreadSanitizer.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "cubn/error.hpp"
#include "cubn/sim/executor.hpp"

#if defined(__SANITIZE_THREAD__)
#define CUBN_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUBN_TEST_TSAN 1
#endif
#endif

namespace cubn::test {

/// Runs f, expects an Error with `status` (a kernel fault unless said), returns its message.
template <class F>
std::string fault_of(F&& f, Status status = Status::kKernelFault) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), status) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected an error, got none";
  return "";
}

/// A smaller executor device for the calling thread while alive.
struct SmallDevice {
  explicit SmallDevice(int sms) { sim::set_sm_count(sms); }
  ~SmallDevice() { sim::set_sm_count(0); }
  SmallDevice(const SmallDevice&) = delete;
  SmallDevice& operator=(const SmallDevice&) = delete;
};

/// ThreadSanitizer's exit code after it reported (death tests expect it).
constexpr int kTsanReportExit = 66;

}  // namespace cubn::test
