// TickClock (tick_clock.hpp): the choice of source and the TSC's calibration.
#include "tick_clock.hpp"

#if APIKEYS_TICK_CLOCK_TSC
#include <cpuid.h>
#endif

namespace apikeys::detail {

namespace {

#if APIKEYS_TICK_CLOCK_TSC
// CPUID leaf 0x80000007, EDX bit 8: the TSC runs at a constant rate in every P-, C- and
// T-state, so its ticks measure time (Intel SDM vol. 3, 17.17.1; AMD APM vol. 3).
bool invariant_tsc() noexcept {
  unsigned a = 0;
  unsigned b = 0;
  unsigned c = 0;
  unsigned d = 0;
  if (__get_cpuid(0x80000007U, &a, &b, &c, &d) == 0) return false;
  return (d & (1U << 8)) != 0;
}

std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Both clocks at once: the steady_clock reading between two TSC readings, the tightest
// of a few tries (a try the thread was preempted or interrupted in is wide), with the
// ticks taken at the middle of its bracket.
TickClock::Sample sample() noexcept {
  TickClock::Sample best;
  std::uint64_t best_width = ~std::uint64_t{0};
  for (int i = 0; i < 5; ++i) {
    const std::uint64_t before = __rdtsc();
    const std::int64_t ns = steady_now_ns();
    const std::uint64_t after = __rdtsc();
    if (after < before || after - before >= best_width) continue;
    best_width = after - before;
    best.ticks = before + best_width / 2;
    best.ns = ns;
  }
  return best;
}
#endif

// Rates a TSC can have: 100 MHz to 20 GHz. Anything else is a broken counter.
constexpr double kMinNsPerTick = 0.05;
constexpr double kMaxNsPerTick = 10.0;

}  // namespace

TickClock::TickClock(Source source) noexcept {
#if APIKEYS_TICK_CLOCK_TSC
  if (source != Source::automatic || !invariant_tsc()) return;
  const Sample a = sample();
  // About 2 ms between the samples: each sample's bracket (tens of nanoseconds) is then
  // a few parts in 10^5 of the interval. Busy, so that it never throws or oversleeps.
  const std::int64_t until = a.ns + 2'000'000;
  while (steady_now_ns() < until) {
  }
  const Sample b = sample();
  // A sample whose every try saw the counter go backwards (moved between cores whose
  // counters disagree) is empty: no rate from it, and such a counter is not trusted.
  if (a.ticks == 0 || b.ticks == 0) return;
  const double rate = ns_per_tick(a, b);
  if (rate < kMinNsPerTick || rate > kMaxNsPerTick) return;
  ns_per_tick_ = rate;
  tsc_ = true;
#else
  (void)source;
#endif
}

const TickClock& TickClock::instance() noexcept {
  static const TickClock clock;
  return clock;
}

double TickClock::ns_per_tick(const Sample& a, const Sample& b) noexcept {
  if (b.ticks <= a.ticks || b.ns <= a.ns) return 0.0;
  return static_cast<double>(b.ns - a.ns) / static_cast<double>(b.ticks - a.ticks);
}

}  // namespace apikeys::detail
