// apikeys::Stats, the bundled Observer: counters and latency histograms of everything
// the library observes, read as a snapshot or written in the Prometheus text
// exposition format for a /metrics endpoint.
// Thread-safety: every method is safe from many threads at once. Counters are relaxed
// atomics, with no lock; a snapshot reads each counter once, so counters
// moving meanwhile may be seen at slightly different moments, never torn.
// Ownership: attach it by std::shared_ptr (ValidatorOptions::observers) and keep a
// pointer to read it.
#ifndef APIKEYS_STATS_HPP
#define APIKEYS_STATS_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "apikeys/export.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/validation_code.hpp"

namespace apikeys {

/// Counters and histograms of what the library observed; see the top of this header.
///
/// Metric names (to_prometheus_text()), all without key ids, account ids or any other
/// unbounded label; each label takes the to_string() names of its enum, and every
/// series is written even at zero, so every scrape has the same series:
///  - `apikeys_validations_total{code}`: on_validate(), by ValidateEvent::code
///    (ValidationCode names).
///  - `apikeys_validation_duration_seconds{path}`: on_validate(), a histogram of
///    ValidateEvent::duration by ValidateEvent::path (ValidatePath names), with the
///    fixed buckets kBucketBounds (inclusive upper bounds, `le` in seconds).
///  - `apikeys_cache_requests_total{result}`: on_validate(), by ValidateEvent::cache:
///    "hit", "miss", "error"; a validation that did not ask the cache (none) is not
///    counted here.
///  - `apikeys_admission_decisions_total{result}`: on_validate(), by
///    ValidateEvent::admission: "admitted", "rate_limited", "usage_exceeded", "failed";
///    none (admission did not run) is not counted.
///  - `apikeys_background_errors_total{component}`: on_error() without `recovered`, by
///    BackgroundError::component (Component names).
///  - `apikeys_background_recoveries_total{component}`: on_error() with `recovered`
///    (the end of a failure: a breaker closing, a subscription restored); apart from
///    the errors, never counted as one.
///  - `apikeys_last_use_writes_total`, `apikeys_rehash_writes_total`: on_write(),
///    BackgroundWrite::rows of Component::last_use and Component::rehash (writes of
///    other components are not counted).
///  - `apikeys_changes_total{action}`: on_change(), by AuditEvent::action (AuditAction
///    names).
/// An enum value this version does not know counts under the name its to_string()
/// gives it. A negative duration counts in the first bucket and adds nothing to the sum.
///
/// Cost: on_validate() moves three to five counters, with no lock and no allocation.
/// The counters a validation moves are kept in copies on cache lines of their own: each
/// of the first eight threads alive that count owns one copy (in every Stats) and
/// updates it with plain relaxed loads and stores, as its only writer; further threads
/// share one more copy with relaxed atomic additions. Request threads therefore do not
/// contend for a line. snapshot() and to_prometheus_text() add the copies up. A thread
/// keeps its copy until it exits, even if it counts once (a start-up check on the main
/// thread): start request threads first if you want them to own one; the counts are
/// exact either way, only the cost of counting differs.
class APIKEYS_EXPORT Stats final : public Observer {
 public:
  /// Histogram bucket upper bounds in nanoseconds, a log scale from 250 ns to 10 s
  /// (1, 2.5, 5 per decade up to 2.5 s, then 10 s); an implicit +Inf bucket follows.
  static constexpr std::array<std::uint64_t, 23> kBucketBounds = {
      250,         500,         1'000,         2'500,         5'000,         10'000,
      25'000,      50'000,      100'000,       250'000,       500'000,       1'000'000,
      2'500'000,   5'000'000,   10'000'000,    25'000'000,    50'000'000,    100'000'000,
      250'000'000, 500'000'000, 1'000'000'000, 2'500'000'000, 10'000'000'000};
  /// Buckets per histogram, +Inf included.
  static constexpr std::size_t kBuckets = kBucketBounds.size() + 1;

  /// One latency histogram: counts per bucket (not cumulative), their total, and the
  /// sum of the observed durations.
  struct Histogram {
    std::array<std::uint64_t, kBuckets> buckets{};  ///< Calls per bucket.
    std::uint64_t count = 0;                        ///< All calls.
    std::uint64_t sum_ns = 0;                       ///< Their durations added up.
  };

  /// Every counter at one moment; indexed by the enums' values.
  struct Snapshot {
    std::array<std::uint64_t, static_cast<std::size_t>(kLastValidationCode) + 1> validations{};
    std::array<Histogram, static_cast<std::size_t>(kLastValidatePath) + 1> durations{};
    std::array<std::uint64_t, static_cast<std::size_t>(kLastCacheResult) + 1> cache{};
    std::array<std::uint64_t, static_cast<std::size_t>(kLastAdmissionResult) + 1> admission{};
    std::array<std::uint64_t, static_cast<std::size_t>(kLastComponent) + 1> errors{};
    std::array<std::uint64_t, static_cast<std::size_t>(kLastComponent) + 1> recoveries{};
    std::uint64_t last_use_writes = 0;
    std::uint64_t rehash_writes = 0;
    std::array<std::uint64_t, static_cast<std::size_t>(kLastAuditAction) + 1> changes{};
  };

  Stats();
  ~Stats() override;

  void on_validate(const ValidateEvent& event) override;
  void on_change(const AuditEvent& event) override;
  void on_error(const BackgroundError& error) override;
  void on_write(const BackgroundWrite& write) override;

  /// Every counter now.
  [[nodiscard]] Snapshot snapshot() const noexcept;
  /// The snapshot in the Prometheus text exposition format (version 0.0.4): one
  /// `# HELP` and `# TYPE` per metric family, every series of a family together, label
  /// values from fixed sets, a trailing newline. Serve it as
  /// `text/plain; version=0.0.4; charset=utf-8`.
  [[nodiscard]] std::string to_prometheus_text() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_STATS_HPP
