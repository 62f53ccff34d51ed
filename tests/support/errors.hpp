/// @file errors.hpp
/// @brief Checking a failing call: its Error, its message, and that it wrote nothing.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "cubn/error.hpp"
#include "support/device.hpp"

namespace cubn::test {

/// Fill byte of output buffers before a call that must fail.
constexpr unsigned char kSentinel = 0x5A;

/// Runs `call`, expects Error(status) whose message contains `needle`, then checks that every
/// byte of `outputs` still holds kSentinel.
inline void expect_error_and_no_writes(const std::function<void()>& call, Status status,
                                       const std::string& needle,
                                       const std::vector<const DeviceBytes*>& outputs) {
  bool thrown = false;
  try {
    call();
  } catch (const Error& e) {
    thrown = true;
    EXPECT_EQ(e.status(), status) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message does not name '" << needle << "': " << e.what();
  }
  EXPECT_TRUE(thrown) << "no error for a call that should fail with '" << needle << "'";
  device_sync();
  for (const DeviceBytes* b : outputs) {
    std::vector<unsigned char> bytes(b->bytes());
    b->download(bytes.data(), bytes.size());
    for (std::size_t i = 0; i < bytes.size(); ++i)
      ASSERT_EQ(bytes[i], kSentinel) << "a failed call wrote an output (" << needle << ")";
  }
}

}  // namespace cubn::test
