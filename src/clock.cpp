#include "apikeys/clock.hpp"

namespace apikeys {

Clock::~Clock() = default;
ManualClock::~ManualClock() = default;

namespace {
class SystemClock final : public Clock {
 public:
  [[nodiscard]] TimePoint now() const noexcept override { return std::chrono::system_clock::now(); }
};
}  // namespace

std::shared_ptr<Clock> system_clock() {
  static const std::shared_ptr<Clock> clock = std::make_shared<SystemClock>();
  return clock;
}

}  // namespace apikeys
