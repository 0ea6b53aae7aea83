// Private: a cheap monotonic clock for timing calls on the hot path (the duration of a
// validation an Observer sees). On x86-64 with an invariant time-stamp counter it reads
// the TSC (one `rdtsc`, about a third of what a steady_clock::now() costs on a VM),
// converted to nanoseconds by a rate calibrated once against std::chrono::steady_clock;
// elsewhere, or when the counter is not invariant, it reads steady_clock itself.
// Thread-safety: immutable once constructed; every method is safe from many threads.
// Ownership: instance() is process-wide and never destroyed before the program ends.
#ifndef APIKEYS_SRC_TICK_CLOCK_HPP
#define APIKEYS_SRC_TICK_CLOCK_HPP

#include <chrono>
#include <cstdint>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <x86intrin.h>
#define APIKEYS_TICK_CLOCK_TSC 1
#else
#define APIKEYS_TICK_CLOCK_TSC 0
#endif

namespace apikeys::detail {

class TickClock {
 public:
  // Where the ticks come from.
  enum class Source : std::uint8_t {
    automatic,  // the TSC when invariant and its calibration is plausible, else steady
    steady,     // std::chrono::steady_clock, one tick per nanosecond
  };

  // One reading of both clocks: the ticks, and steady_clock in nanoseconds.
  struct Sample {
    std::uint64_t ticks = 0;
    std::int64_t ns = 0;
  };

  // Chooses the source and, for the TSC, calibrates it: two samples about 2 ms apart
  // (a busy wait, so it never oversleeps), each the narrowest of a few tries; steady_clock
  // when a sample fails or the rate is not a TSC's. Never throws; costs those 2 ms once,
  // and a thread that asks for instance() meanwhile waits for them. The rate is not
  // measured again: a virtual machine moved live to a host whose TSC runs at another
  // rate, without TSC scaling, times durations at the old rate (they are only ever
  // reported in metrics, never used to decide anything).
  explicit TickClock(Source source = Source::automatic) noexcept;

  // The process-wide clock, built (and calibrated) by the first call.
  static const TickClock& instance() noexcept;

  // Nanoseconds per tick from two samples: 0 when they do not give a rate (no ticks
  // or no time between them, or time going backwards).
  static double ns_per_tick(const Sample& a, const Sample& b) noexcept;

  // Ticks now. Monotonic on one thread; across threads as much as the TSC is
  // synchronised between cores (an invariant TSC is), which between() tolerates.
  std::uint64_t now() const noexcept {
#if APIKEYS_TICK_CLOCK_TSC
    if (tsc_) return __rdtsc();
#endif
    return steady_ns();
  }

  // The time from `start` to `end` (two now() readings); zero when `end` is not later.
  std::chrono::nanoseconds between(std::uint64_t start, std::uint64_t end) const noexcept {
    if (end <= start) return std::chrono::nanoseconds(0);
    const std::uint64_t ticks = end - start;
    constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    if (!tsc_)
      return std::chrono::nanoseconds(static_cast<std::int64_t>(ticks < kMax ? ticks : kMax));
    const double ns = static_cast<double>(ticks) * ns_per_tick_;
    constexpr double kMaxNs = 9.0e18;  // below INT64_MAX: no overflow in the conversion
    return std::chrono::nanoseconds(static_cast<std::int64_t>(ns < kMaxNs ? ns : kMaxNs));
  }

  // True when now() reads the TSC.
  bool uses_tsc() const noexcept { return tsc_; }
  // Nanoseconds per tick (1 for steady_clock).
  double rate() const noexcept { return ns_per_tick_; }

 private:
  static std::uint64_t steady_ns() noexcept {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
  }

  double ns_per_tick_ = 1.0;
  bool tsc_ = false;
};

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_TICK_CLOCK_HPP
