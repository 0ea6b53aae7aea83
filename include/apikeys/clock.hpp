// apikeys::Clock is the source of wall-clock time for expiry, cache TTLs and
// last-use throttling, with a steady reading to tell the time set back from time
// passing; inject a ManualClock in tests to move time.
// Thread-safety: implementations must be safe to call from any thread.
// Ownership: components hold clocks through std::shared_ptr.
#ifndef APIKEYS_CLOCK_HPP
#define APIKEYS_CLOCK_HPP

#include <atomic>
#include <chrono>
#include <memory>

#include "apikeys/export.hpp"
#include "apikeys/types.hpp"

namespace apikeys {

/// Interface: the current UTC time.
class APIKEYS_EXPORT Clock {
 public:
  Clock() = default;
  Clock(const Clock&) = delete;
  Clock& operator=(const Clock&) = delete;
  virtual ~Clock();

  /// The current time. Must not throw.
  [[nodiscard]] virtual TimePoint now() const noexcept = 0;

  /// A cheaper reading, for deadlines that tolerate a lag: MemoryCache's TTL check and
  /// the last-use note of a plain cache hit read it. Never ahead of now(), and behind it
  /// by at most coarse_resolution() (see system_clock() for when it may trail further).
  /// Must not throw. Default: now().
  [[nodiscard]] virtual TimePoint coarse_now() const noexcept { return now(); }

  /// How far coarse_now() may trail now(), and steady_now() a precise reading of its
  /// clock.
  /// Default: zero (coarse_now() is now()).
  [[nodiscard]] virtual std::chrono::nanoseconds coarse_resolution() const noexcept {
    return std::chrono::nanoseconds(0);
  }

  /// A reading that never goes back and that setting the time of day does not move,
  /// read as cheaply as coarse_now() and as coarse (behind by at most
  /// coarse_resolution()); its epoch is arbitrary. MemoryCache compares how far it and
  /// coarse_now() have moved, to tell the time of day set back from time passing
  /// (MemoryCacheOptions::clock). Must not throw. Default: coarse_now()'s time since
  /// 1970, which moves with it, steps included (so nothing is told apart).
  [[nodiscard]] virtual std::chrono::nanoseconds steady_now() const noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(coarse_now().time_since_epoch());
  }
};

/// The process-wide system clock (std::chrono::system_clock). On Linux its coarse_now()
/// reads CLOCK_REALTIME_COARSE, the time as of the kernel's last tick: about 5 ns against
/// 20 to 25 for a full reading on a virtual machine. It normally trails by less than one
/// tick (clock_getres(): 1 to 10 ms), and a tick handled late by more: 5.6 ms was seen
/// with 4 ms ticks. coarse_resolution() reports two ticks. A tick later still (a virtual
/// CPU kept off its core for longer) lets the reading trail by that much more, and a
/// MemoryCache entry answer by as much past its TTL. Elsewhere coarse_now() is now().
/// steady_now() reads CLOCK_MONOTONIC_COARSE on Linux (std::chrono::steady_clock
/// elsewhere): setting the system time does not move it, and it stands still while the
/// machine sleeps.
[[nodiscard]] APIKEYS_EXPORT std::shared_ptr<Clock> system_clock();

/// A clock that only moves when told to. Thread-safe (atomic). Its steady_now() moves
/// with every move forward and stays where it is when the clock is set back, as a
/// monotonic clock does when someone sets the system time back.
/// Ownership: a value; components share it through std::shared_ptr.
class APIKEYS_EXPORT ManualClock final : public Clock {
 public:
  /// A clock reading `start` (kept to the millisecond) until moved; steady_now() starts
  /// at the same count of milliseconds.
  explicit ManualClock(TimePoint start) noexcept
      : ms_(to_unix_millis(start)), steady_ms_(to_unix_millis(start)) {}
  ~ManualClock() override;
  [[nodiscard]] TimePoint now() const noexcept override { return from_unix_millis(ms_.load()); }
  /// Saturates, as now() does.
  [[nodiscard]] std::chrono::nanoseconds steady_now() const noexcept override {
    return from_unix_millis(steady_ms_.load()).time_since_epoch();
  }
  /// Makes now() return `t`.
  void set(TimePoint t) noexcept {
    const std::int64_t to = to_unix_millis(t);
    const std::int64_t from = ms_.exchange(to);
    if (to > from) forward(to - from);
  }
  /// Moves the clock by `d` (which may be negative).
  void advance(std::chrono::milliseconds d) noexcept {
    ms_.fetch_add(d.count());
    if (d.count() > 0) forward(d.count());
  }

 private:
  void forward(std::int64_t ms) noexcept;

  std::atomic<std::int64_t> ms_;
  std::atomic<std::int64_t> steady_ms_;
};

}  // namespace apikeys

#endif  // APIKEYS_CLOCK_HPP
