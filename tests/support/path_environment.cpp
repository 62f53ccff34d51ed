// Lets CTest run the kernel tests a second time on the persistent path: CUBN_TEST_PATH=persistent
// (or streaming) forces the training calls of the main test thread onto that path, and, on the
// executor, CUBN_TEST_SMS=n makes its device n SMs, so that cooperative grids stay small (a host
// thread per block; ThreadSanitizer counts each fiber as a thread) and blocks take several
// virtual blocks each, with slices that do not all fit on chip.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "plan.hpp"
#if defined(CUBN_SIM)
#include "cubn/sim/executor.hpp"
#endif

namespace {

class PathEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (const char* path = std::getenv("CUBN_TEST_PATH")) {
      const std::string p(path);
      if (p == "persistent") cubn::detail::force_path(cubn::detail::Path::kPersistent);
      if (p == "streaming") cubn::detail::force_path(cubn::detail::Path::kStreaming);
    }
#if defined(CUBN_SIM)
    if (const char* sms = std::getenv("CUBN_TEST_SMS")) cubn::sim::set_sm_count(std::atoi(sms));
#endif
  }
};

[[maybe_unused]] ::testing::Environment* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new PathEnvironment);

}  // namespace
