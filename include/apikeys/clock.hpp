// apikeys::Clock is the source of wall-clock time for expiry, cache TTLs and
// last-use throttling; inject a ManualClock in tests to move time.
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

  /// How far coarse_now() may trail now(). Default: zero (coarse_now() is now()).
  [[nodiscard]] virtual std::chrono::nanoseconds coarse_resolution() const noexcept {
    return std::chrono::nanoseconds(0);
  }
};

/// The process-wide system clock (std::chrono::system_clock). On Linux its coarse_now()
/// reads CLOCK_REALTIME_COARSE, the time as of the kernel's last tick: about 5 ns against
/// 20 to 25 for a full reading on a virtual machine. It normally trails by less than one
/// tick (clock_getres(): 1 to 10 ms), and a tick handled late by more: 5.6 ms was seen
/// with 4 ms ticks. coarse_resolution() reports two ticks. A tick later still (a virtual
/// CPU kept off its core for longer) lets the reading trail by that much more, and a
/// MemoryCache entry answer by as much past its TTL. Elsewhere coarse_now() is now().
[[nodiscard]] APIKEYS_EXPORT std::shared_ptr<Clock> system_clock();

/// A clock that only moves when told to. Thread-safe (atomic).
class APIKEYS_EXPORT ManualClock final : public Clock {
 public:
  /// A clock reading `start` (kept to the millisecond) until moved.
  explicit ManualClock(TimePoint start) noexcept : ms_(to_unix_millis(start)) {}
  ~ManualClock() override;
  [[nodiscard]] TimePoint now() const noexcept override { return from_unix_millis(ms_.load()); }
  /// Makes now() return `t`.
  void set(TimePoint t) noexcept { ms_.store(to_unix_millis(t)); }
  /// Moves the clock by `d` (which may be negative).
  void advance(std::chrono::milliseconds d) noexcept { ms_.fetch_add(d.count()); }

 private:
  std::atomic<std::int64_t> ms_;
};

}  // namespace apikeys

#endif  // APIKEYS_CLOCK_HPP
