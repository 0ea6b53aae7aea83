// apikeys::Stats, the bundled Observer: counters and latency histograms of everything
// the library observes, read as a snapshot or written in the Prometheus text
// exposition format for a /metrics endpoint.
// Thread-safety: every method is safe from many threads at once. Counting is relaxed
// atomic increments, with no lock; a snapshot reads each counter once, so counters
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
/// unbounded label:
///  - `apikeys_validations_total{code}`: validations by ValidationCode name.
///  - `apikeys_validation_duration_seconds{path}`: a histogram of validate() calls by
///    ValidatePath name, with the fixed buckets kBucketBounds.
///  - `apikeys_cache_requests_total{result}`: cache answers, "hit", "miss", "error".
///  - `apikeys_admission_decisions_total{result}`: AdmissionResult names but "none".
///  - `apikeys_background_errors_total{component}`: BackgroundError by Component name
///    (recoveries are not errors: they are not counted here).
///  - `apikeys_background_recoveries_total{component}`: the ends of failures.
///  - `apikeys_last_use_writes_total`, `apikeys_rehash_writes_total`: rows written.
///  - `apikeys_changes_total{action}`: AuditEvent by AuditAction name.
class APIKEYS_EXPORT Stats final : public Observer {
 public:
  /// Histogram bucket upper bounds in nanoseconds, a log scale from 250 ns to 10 s
  /// (1, 2.5, 5 per decade); an implicit +Inf bucket follows.
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
