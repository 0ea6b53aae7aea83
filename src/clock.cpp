#include "apikeys/clock.hpp"

#include <ctime>
#include <limits>

namespace apikeys {

Clock::~Clock() = default;
ManualClock::~ManualClock() = default;

void ManualClock::forward(std::int64_t ms) noexcept {
  // Saturating: a steady reading that wrapped would look like a step back.
  std::int64_t at = steady_ms_.load();
  std::int64_t to = 0;
  do {
    if (__builtin_add_overflow(at, ms, &to)) to = std::numeric_limits<std::int64_t>::max();
  } while (!steady_ms_.compare_exchange_weak(at, to));
}

namespace {
class SystemClock final : public Clock {
 public:
  [[nodiscard]] TimePoint now() const noexcept override { return std::chrono::system_clock::now(); }

  // CLOCK_MONOTONIC_COARSE shares its epoch with std::chrono::steady_clock
  // (CLOCK_MONOTONIC on Linux), which stands in for it.
  [[nodiscard]] std::chrono::nanoseconds steady_now() const noexcept override {
#if defined(__linux__) && defined(CLOCK_REALTIME_COARSE) && defined(CLOCK_MONOTONIC_COARSE)
    timespec ts{};
    if (resolution_.count() != 0 && clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0) {
      return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
    }
#endif
    return std::chrono::steady_clock::now().time_since_epoch();
  }

#if defined(__linux__) && defined(CLOCK_REALTIME_COARSE) && defined(CLOCK_MONOTONIC_COARSE)
  SystemClock() noexcept {
    timespec res{};
    timespec steady_res{};
    // Two kernel ticks: the reading lags by up to one, and a tick handled late adds to
    // that. Unknown (no coarse clocks, or two of different resolutions): coarse_now() is
    // now(), and steady_now() reads std::chrono::steady_clock.
    if (clock_getres(CLOCK_REALTIME_COARSE, &res) == 0 && res.tv_sec == 0 && res.tv_nsec > 0 &&
        clock_getres(CLOCK_MONOTONIC_COARSE, &steady_res) == 0 && steady_res.tv_sec == res.tv_sec &&
        steady_res.tv_nsec == res.tv_nsec) {
      resolution_ = 2 * std::chrono::nanoseconds(res.tv_nsec);
    }
  }

  [[nodiscard]] TimePoint coarse_now() const noexcept override {
    timespec ts{};
    if (resolution_.count() == 0 || clock_gettime(CLOCK_REALTIME_COARSE, &ts) != 0) return now();
    return TimePoint(std::chrono::duration_cast<TimePoint::duration>(
        std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
  }

  [[nodiscard]] std::chrono::nanoseconds coarse_resolution() const noexcept override {
    return resolution_;
  }

 private:
  std::chrono::nanoseconds resolution_{0};
#endif
};
}  // namespace

std::shared_ptr<Clock> system_clock() {
  static const std::shared_ptr<Clock> clock = std::make_shared<SystemClock>();
  return clock;
}

}  // namespace apikeys
