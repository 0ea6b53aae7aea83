// TickClock: the clock that times observed validations. Its readings only move forward,
// its durations agree with std::chrono::steady_clock over the same interval, and its
// calibration arithmetic gives the right rate.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "../../src/tick_clock.hpp"
#include "catch.hpp"

using apikeys::detail::TickClock;

namespace {

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Checks that `clock` measures a sleep as steady_clock does: its readings lie inside
// one steady_clock bracket and enclose another, so the duration it gives is bounded by
// the two whatever the scheduler does; 1 % covers the calibration's error.
void check_against_steady(const TickClock& clock) {
  const std::int64_t outer_start = steady_ns();
  const std::uint64_t start = clock.now();
  const std::int64_t inner_start = steady_ns();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const std::int64_t inner_end = steady_ns();
  const std::uint64_t end = clock.now();
  const std::int64_t outer_end = steady_ns();

  const double measured = static_cast<double>(clock.between(start, end).count());
  CHECK(measured >= 0.99 * static_cast<double>(inner_end - inner_start));
  CHECK(measured <= 1.01 * static_cast<double>(outer_end - outer_start));
}

}  // namespace

TEST_CASE("TickClock readings never go backwards on one thread", "[tick_clock]") {
  for (const TickClock& clock :
       std::vector<TickClock>{TickClock::instance(), TickClock(TickClock::Source::steady)}) {
    std::uint64_t last = clock.now();
    for (int i = 0; i < 100'000; ++i) {
      const std::uint64_t t = clock.now();
      REQUIRE(t >= last);
      last = t;
    }
  }
}

TEST_CASE("TickClock durations agree with steady_clock", "[tick_clock]") {
  SECTION("the process-wide clock (the TSC where it is invariant)") {
    check_against_steady(TickClock::instance());
  }
  SECTION("a freshly calibrated clock") { check_against_steady(TickClock()); }
  SECTION("the steady_clock fallback") {
    const TickClock steady(TickClock::Source::steady);
    CHECK_FALSE(steady.uses_tsc());
    CHECK(steady.rate() == 1.0);
    check_against_steady(steady);
  }
}

TEST_CASE("TickClock on x86-64 with an invariant TSC calibrates a plausible rate", "[tick_clock]") {
  const TickClock& clock = TickClock::instance();
  if (!clock.uses_tsc()) {
    CHECK(clock.rate() == 1.0);  // no invariant TSC here: steady_clock is used
    return;
  }
  // 100 MHz to 20 GHz.
  CHECK(clock.rate() >= 0.05);
  CHECK(clock.rate() <= 10.0);
  // Two calibrations of the same counter agree closely.
  const TickClock again;
  REQUIRE(again.uses_tsc());
  CHECK(std::abs(again.rate() - clock.rate()) <= 0.001 * clock.rate());
}

TEST_CASE("TickClock::between: zero when the end is not later, never overflows", "[tick_clock]") {
  for (const TickClock& clock :
       std::vector<TickClock>{TickClock::instance(), TickClock(TickClock::Source::steady)}) {
    CHECK(clock.between(1000, 1000).count() == 0);
    CHECK(clock.between(1000, 999).count() == 0);  // another core's counter, slightly behind
    CHECK(clock.between(0, ~std::uint64_t{0}).count() > 0);
  }
  const TickClock steady(TickClock::Source::steady);
  CHECK(steady.between(100, 350).count() == 250);
}

TEST_CASE("TickClock::ns_per_tick: the rate between two samples, 0 when there is none",
          "[tick_clock]") {
  // A 2.5 GHz counter: 5,000,000 ticks in 2 ms.
  const double rate = TickClock::ns_per_tick({1'000'000, 7'000'000}, {6'000'000, 9'000'000});
  CHECK(std::abs(rate - 0.4) < 1e-12);
  CHECK(TickClock::ns_per_tick({10, 100}, {20, 100}) == 0.0);  // no time passed
  CHECK(TickClock::ns_per_tick({10, 100}, {10, 200}) == 0.0);  // no ticks
  CHECK(TickClock::ns_per_tick({20, 100}, {10, 200}) == 0.0);  // ticks went backwards
  CHECK(TickClock::ns_per_tick({10, 200}, {20, 100}) == 0.0);  // time went backwards
}
