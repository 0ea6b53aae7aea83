// Stats (stats.hpp): relaxed atomic counters, striped for the hot ones, and their
// Prometheus text.
//
// Layout. The counters a validation moves (by code, by cache result, by admission
// result, the latency histograms) live in kStripes copies, each on cache lines of its
// own. Each of the first kOwnedStripes threads alive that count takes one stripe for
// itself until it exits (the same index in every Stats): as its only writer it counts
// with a relaxed load and store, no locked instruction, and no other thread writes its
// lines. Threads beyond those share the last stripe with atomic additions. Within a
// stripe each kind of counter starts a cache line of its own. The cold counters (background errors,
// recoveries, writes, changes) are single copies, apart from the stripes. A snapshot adds
// the stripes up. No counting path locks or allocates.
#include "apikeys/stats.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <new>
#include <string_view>
#include <type_traits>

namespace apikeys {

namespace detail {
namespace {

constexpr std::size_t kCacheLine = 64;
// Copies of the hot counters: one per owning thread, and the shared one after them.
// Threads beyond the owners stay correct (their increments are atomic) and only cost
// some cache-line traffic among themselves.
constexpr std::size_t kOwnedStripes = 8;
constexpr std::size_t kSharedStripe = kOwnedStripes;
constexpr std::size_t kStripes = kOwnedStripes + 1;

constexpr std::size_t kCodes = static_cast<std::size_t>(kLastValidationCode) + 1;
constexpr std::size_t kPaths = static_cast<std::size_t>(kLastValidatePath) + 1;
constexpr std::size_t kCacheResults = static_cast<std::size_t>(kLastCacheResult) + 1;
constexpr std::size_t kAdmissionResults = static_cast<std::size_t>(kLastAdmissionResult) + 1;
constexpr std::size_t kComponents = static_cast<std::size_t>(kLastComponent) + 1;
constexpr std::size_t kActions = static_cast<std::size_t>(kLastAuditAction) + 1;

using Counter = std::atomic<std::uint64_t>;
static_assert(std::is_trivially_destructible_v<Counter>);

template <std::size_t N>
struct alignas(kCacheLine) Counters {
  std::array<Counter, N> n{};
};

// One path's histogram: counts per bucket (not cumulative) and the summed durations.
// The count is the buckets added up, so it can never disagree with them.
struct alignas(kCacheLine) HistogramCounters {
  std::array<Counter, Stats::kBuckets> buckets{};
  Counter sum_ns{0};
};

struct alignas(kCacheLine) Stripe {
  Counters<kCodes> validations;
  Counters<kCacheResults> cache;
  Counters<kAdmissionResults> admission;
  std::array<HistogramCounters, kPaths> durations;
};

// The index of a value of an enum with values 0..last; an unknown value counts as the
// one its to_string() names.
template <class E>
std::size_t index_of(E value, E last, E unknown) noexcept {
  const auto i = static_cast<std::size_t>(value);
  return i <= static_cast<std::size_t>(last) ? i : static_cast<std::size_t>(unknown);
}

// The bucket of a duration: the first whose bound is >= it (Prometheus `le`), else +Inf.
std::size_t bucket_of(std::chrono::nanoseconds duration) noexcept {
  const std::uint64_t ns = duration.count() > 0 ? static_cast<std::uint64_t>(duration.count()) : 0;
  const auto& b = Stats::kBucketBounds;
  return static_cast<std::size_t>(std::lower_bound(b.begin(), b.end(), ns) - b.begin());
}

void bump(Counter& c, std::uint64_t by = 1) noexcept { c.fetch_add(by, std::memory_order_relaxed); }
std::uint64_t read(const Counter& c) noexcept { return c.load(std::memory_order_relaxed); }

// Adds to a counter of this thread's stripe: a plain load and store when the thread
// owns the stripe (no other thread writes it; readers see either value, never a torn
// one), an atomic addition on the shared stripe.
void count(Counter& c, bool owner, std::uint64_t by = 1) noexcept {
  if (owner) {
    c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  } else {
    c.fetch_add(by, std::memory_order_relaxed);
  }
}

// Which owned stripes a live thread holds, process-wide.
std::array<std::atomic<bool>, kOwnedStripes> stripe_taken{};

// A thread's claim on an owned stripe, from its first count to its exit. Releasing the
// claim publishes the owner's last counts to the next thread that takes the stripe
// (release here, acquire there), which continues from them.
struct StripeClaim {
  std::size_t stripe = kSharedStripe;

  StripeClaim() noexcept {
    for (std::size_t i = 0; i < kOwnedStripes; ++i) {
      bool expected = false;
      if (!stripe_taken[i].load(std::memory_order_relaxed) &&
          stripe_taken[i].compare_exchange_strong(expected, true, std::memory_order_acquire,
                                                  std::memory_order_relaxed)) {
        stripe = i;
        return;
      }
    }
  }
  ~StripeClaim() {
    if (stripe == kSharedStripe) return;
    const std::size_t released = stripe;
    stripe = kSharedStripe;  // a count from a later thread_local destructor: shared
    stripe_taken[released].store(false, std::memory_order_release);
  }
  StripeClaim(const StripeClaim&) = delete;
  StripeClaim& operator=(const StripeClaim&) = delete;
  StripeClaim(StripeClaim&&) = delete;
  StripeClaim& operator=(StripeClaim&&) = delete;
};

// This thread's stripe, claimed the first time it counts in any Stats.
std::size_t my_stripe() noexcept {
  static thread_local StripeClaim claim;
  return claim.stripe;
}

}  // namespace
}  // namespace detail

struct Stats::Impl {
  std::array<detail::Stripe, detail::kStripes> stripes;
  detail::Counters<detail::kComponents> errors;
  detail::Counters<detail::kComponents> recoveries;
  detail::Counters<2> writes;  // [0] last use, [1] rehash
  detail::Counters<detail::kActions> changes;
};

Stats::Stats() : impl_(std::make_unique<Impl>()) {}
Stats::~Stats() = default;

void Stats::on_validate(const ValidateEvent& event) {
  using detail::count;
  const std::size_t stripe = detail::my_stripe();
  const bool owner = stripe != detail::kSharedStripe;
  detail::Stripe& s = impl_->stripes[stripe];
  count(s.validations.n[detail::index_of(event.code, kLastValidationCode, ValidationCode::error)],
        owner);
  detail::HistogramCounters& h =
      s.durations[detail::index_of(event.path, kLastValidatePath, ValidatePath::store)];
  count(h.buckets[detail::bucket_of(event.duration)], owner);
  if (event.duration.count() > 0) {
    count(h.sum_ns, owner, static_cast<std::uint64_t>(event.duration.count()));
  }
  if (event.cache != CacheResult::none) {
    count(s.cache.n[detail::index_of(event.cache, kLastCacheResult, CacheResult::error)], owner);
  }
  if (event.admission != AdmissionResult::none) {
    count(s.admission
              .n[detail::index_of(event.admission, kLastAdmissionResult, AdmissionResult::failed)],
          owner);
  }
}

void Stats::on_change(const AuditEvent& event) {
  detail::bump(
      impl_->changes.n[detail::index_of(event.action, kLastAuditAction, AuditAction::update)]);
}

void Stats::on_error(const BackgroundError& error) {
  const std::size_t c = detail::index_of(error.component, kLastComponent, Component::store);
  detail::bump(error.recovered ? impl_->recoveries.n[c] : impl_->errors.n[c]);
}

void Stats::on_write(const BackgroundWrite& write) {
  if (write.component == Component::last_use) {
    detail::bump(impl_->writes.n[0], write.rows);
  } else if (write.component == Component::rehash) {
    detail::bump(impl_->writes.n[1], write.rows);
  }
}

Stats::Snapshot Stats::snapshot() const noexcept {
  using detail::read;
  Snapshot out;
  for (const detail::Stripe& s : impl_->stripes) {
    for (std::size_t i = 0; i < out.validations.size(); ++i) {
      out.validations[i] += read(s.validations.n[i]);
    }
    for (std::size_t p = 0; p < out.durations.size(); ++p) {
      Histogram& h = out.durations[p];
      for (std::size_t b = 0; b < kBuckets; ++b) h.buckets[b] += read(s.durations[p].buckets[b]);
      h.sum_ns += read(s.durations[p].sum_ns);
    }
    for (std::size_t i = 0; i < out.cache.size(); ++i) out.cache[i] += read(s.cache.n[i]);
    for (std::size_t i = 0; i < out.admission.size(); ++i) {
      out.admission[i] += read(s.admission.n[i]);
    }
  }
  for (Histogram& h : out.durations) {
    for (std::uint64_t n : h.buckets) h.count += n;
  }
  for (std::size_t i = 0; i < out.errors.size(); ++i) out.errors[i] = read(impl_->errors.n[i]);
  for (std::size_t i = 0; i < out.recoveries.size(); ++i) {
    out.recoveries[i] = read(impl_->recoveries.n[i]);
  }
  out.last_use_writes = read(impl_->writes.n[0]);
  out.rehash_writes = read(impl_->writes.n[1]);
  for (std::size_t i = 0; i < out.changes.size(); ++i) out.changes[i] = read(impl_->changes.n[i]);
  return out;
}

namespace {

// Nanoseconds as seconds, exactly, in decimal: 250 -> "0.00000025", 2'500'000'000 -> "2.5".
std::string seconds(std::uint64_t ns) {
  std::string out = std::to_string(ns / 1'000'000'000);
  std::uint64_t frac = ns % 1'000'000'000;
  if (frac == 0) return out;
  char digits[10];
  (void)std::snprintf(digits, sizeof digits, "%09llu", static_cast<unsigned long long>(frac));
  std::string_view f(digits, 9);
  while (f.back() == '0') f.remove_suffix(1);
  out += '.';
  out += f;
  return out;
}

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

// name{label="value"} n, or name n without a label. Label values are the library's own
// enum names: [a-z_] only, nothing to escape.
void sample(std::string& out, const char* name, const char* label, const char* value,
            std::uint64_t n) {
  out += name;
  if (label != nullptr) {
    out += '{';
    out += label;
    out += "=\"";
    out += value;
    out += "\"}";
  }
  out += ' ';
  out += std::to_string(n);
  out += '\n';
}

template <class E, std::size_t N>
void counter_family(std::string& out, const char* name, const char* help, const char* label,
                    const std::array<std::uint64_t, N>& counts, std::size_t first = 0) {
  family(out, name, "counter", help);
  for (std::size_t i = first; i < N; ++i) {
    sample(out, name, label, to_string(static_cast<E>(i)), counts[i]);
  }
}

}  // namespace

std::string Stats::to_prometheus_text() const {
  const Snapshot s = snapshot();
  std::string out;
  out.reserve(std::size_t{16} * 1024);

  counter_family<ValidationCode>(out, "apikeys_validations_total",
                                 "Validations by the code they answered.", "code", s.validations);

  const char* const duration = "apikeys_validation_duration_seconds";
  family(out, duration, "histogram",
         "Duration of validate() calls by the step that answered (format, cache, store).");
  for (std::size_t p = 0; p < s.durations.size(); ++p) {
    const Histogram& h = s.durations[p];
    const std::string path = to_string(static_cast<ValidatePath>(p));
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) {
      cumulative += h.buckets[b];
      out += duration;
      out += "_bucket{path=\"";
      out += path;
      out += "\",le=\"";
      out += b < kBucketBounds.size() ? seconds(kBucketBounds[b]) : std::string("+Inf");
      out += "\"} ";
      out += std::to_string(cumulative);
      out += '\n';
    }
    out += duration;
    out += "_sum{path=\"" + path + "\"} " + seconds(h.sum_ns) + '\n';
    out += duration;
    out += "_count{path=\"" + path + "\"} " + std::to_string(h.count) + '\n';
  }

  // From 1: CacheResult::none and AdmissionResult::none are not counted.
  counter_family<CacheResult>(out, "apikeys_cache_requests_total",
                              "Validations that asked the cache, by its answer.", "result", s.cache,
                              1);
  counter_family<AdmissionResult>(out, "apikeys_admission_decisions_total",
                                  "Validations that ran admission, by its decision.", "result",
                                  s.admission, 1);
  counter_family<Component>(out, "apikeys_background_errors_total",
                            "Failures the library handled on its own, by component.", "component",
                            s.errors);
  counter_family<Component>(out, "apikeys_background_recoveries_total",
                            "Ends of such failures (a breaker closing, a subscription "
                            "restored), by component.",
                            "component", s.recoveries);
  family(out, "apikeys_last_use_writes_total", "counter",
         "Rows the background last-use writer wrote.");
  sample(out, "apikeys_last_use_writes_total", nullptr, nullptr, s.last_use_writes);
  family(out, "apikeys_rehash_writes_total", "counter",
         "Digests the background rehash writer rewrote.");
  sample(out, "apikeys_rehash_writes_total", nullptr, nullptr, s.rehash_writes);
  counter_family<AuditAction>(out, "apikeys_changes_total",
                              "Changes made to keys through a KeyManager, by action.", "action",
                              s.changes);
  return out;
}

}  // namespace apikeys
