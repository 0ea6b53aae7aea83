// Stats: what it counts from a real Validator, from many threads, and its Prometheus text,
// checked by the strict parser of prometheus_text.hpp (itself tested at the end).
#include <chrono>
#include <cstdint>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "apikeys/stats.hpp"
#include "catch.hpp"
#include "prometheus_text.hpp"
#include "test_support.hpp"

using namespace apikeys;
namespace prom = apikeys_test::prometheus;

namespace {

using Labels = prom::Labels;

std::uint64_t total(const Stats::Snapshot& s) {
  return std::accumulate(s.validations.begin(), s.validations.end(), std::uint64_t{0});
}

std::string token_of(const CreatedKey& key) {
  return key.info.public_key + ":" + std::string(key.secret_key.reveal());
}

ValidateEvent event(ValidationCode code, ValidatePath path, std::chrono::nanoseconds duration,
                    CacheResult cache = CacheResult::none,
                    AdmissionResult admission = AdmissionResult::none) {
  ValidateEvent e;
  e.code = code;
  e.path = path;
  e.duration = duration;
  e.cache = cache;
  e.admission = admission;
  return e;
}

std::size_t idx(ValidationCode c) { return static_cast<std::size_t>(c); }
std::size_t idx(ValidatePath p) { return static_cast<std::size_t>(p); }
std::size_t idx(CacheResult r) { return static_cast<std::size_t>(r); }
std::size_t idx(AdmissionResult r) { return static_cast<std::size_t>(r); }

// Every counter of `after` minus `before`, as a snapshot of the differences.
Stats::Snapshot minus(const Stats::Snapshot& after, const Stats::Snapshot& before) {
  Stats::Snapshot d = after;
  for (std::size_t i = 0; i < d.validations.size(); ++i) d.validations[i] -= before.validations[i];
  for (std::size_t p = 0; p < d.durations.size(); ++p) {
    for (std::size_t b = 0; b < Stats::kBuckets; ++b) {
      d.durations[p].buckets[b] -= before.durations[p].buckets[b];
    }
    d.durations[p].count -= before.durations[p].count;
    d.durations[p].sum_ns -= before.durations[p].sum_ns;
  }
  for (std::size_t i = 0; i < d.cache.size(); ++i) d.cache[i] -= before.cache[i];
  for (std::size_t i = 0; i < d.admission.size(); ++i) d.admission[i] -= before.admission[i];
  return d;
}

// The counters one validation moved: exactly one code, one path, and its cache result
// and admission result unless none.
void require_one(const Stats::Snapshot& d, ValidationCode code, ValidatePath path,
                 CacheResult cache, AdmissionResult admission) {
  INFO("expected " << to_string(code) << " via " << to_string(path) << ", cache "
                   << to_string(cache) << ", admission " << to_string(admission));
  for (std::size_t i = 0; i < d.validations.size(); ++i) {
    CHECK(d.validations[i] == (i == idx(code) ? 1u : 0u));
  }
  for (std::size_t p = 0; p < d.durations.size(); ++p) {
    CHECK(d.durations[p].count == (p == idx(path) ? 1u : 0u));
  }
  for (std::size_t i = 0; i < d.cache.size(); ++i) {
    CHECK(d.cache[i] == (cache != CacheResult::none && i == idx(cache) ? 1u : 0u));
  }
  for (std::size_t i = 0; i < d.admission.size(); ++i) {
    CHECK(d.admission[i] == (admission != AdmissionResult::none && i == idx(admission) ? 1u : 0u));
  }
}

}  // namespace

TEST_CASE("Stats counts each validation of a Validator once, by code, path, cache and admission",
          "[stats]") {
  auto stats = std::make_shared<Stats>();
  apikeys_test::TestManager keys = apikeys_test::make_manager();
  ValidatorOptions options;
  options.clock = keys.clock;
  options.cache = keys.cache;
  options.observers = {stats};
  Validator validator(keys.store, keys.hasher, options);

  const Uuid account = apikeys_test::account_id(1);
  CreateRequest request;
  request.title = "stats";
  const std::string valid = token_of(keys->create(account, request));
  request.rate_limits = {parse_rate_limit("per-minute=1/1m")};
  const std::string limited = token_of(keys->create(account, request));
  // Well formed, but of another store.
  const std::string unknown = token_of(apikeys_test::make_manager()->create(account, request));
  std::string wrong = valid;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';

  Stats::Snapshot before = stats->snapshot();
  const auto step = [&](const std::string& token, ValidationCode code, ValidatePath path,
                        CacheResult cache, AdmissionResult admission) {
    REQUIRE(validator.validate(token).code == code);
    const Stats::Snapshot after = stats->snapshot();
    require_one(minus(after, before), code, path, cache, admission);
    before = after;
  };

  using VC = ValidationCode;
  using VP = ValidatePath;
  using CR = CacheResult;
  using AR = AdmissionResult;
  step("not-a-key", VC::malformed, VP::format, CR::none, AR::none);
  step(unknown, VC::not_found, VP::store, CR::miss, AR::none);
  step(wrong, VC::wrong_secret, VP::store, CR::miss, AR::none);
  step(valid, VC::valid, VP::store, CR::miss, AR::none);
  step(valid, VC::valid, VP::cache, CR::hit, AR::none);
  step(limited, VC::valid, VP::store, CR::miss, AR::admitted);
  step(limited, VC::rate_limited, VP::cache, CR::hit, AR::rate_limited);

  const Stats::Snapshot s = stats->snapshot();
  CHECK(total(s) == 7);
  CHECK(s.validations[idx(VC::valid)] == 3);
  CHECK(s.cache[idx(CR::hit)] == 2);
  CHECK(s.cache[idx(CR::miss)] == 4);
  CHECK(s.cache[idx(CR::none)] == 0);  // never counted
  CHECK(s.admission[idx(AR::none)] == 0);
  CHECK(validator.observer_failures() == 0);

  // The text says the same.
  const std::vector<prom::Family> text = prom::parse(stats->to_prometheus_text());
  CHECK(prom::value(text, "apikeys_validations_total", {{"code", "valid"}}) == 3);
  CHECK(prom::value(text, "apikeys_validations_total", {{"code", "malformed"}}) == 1);
  CHECK(prom::value(text, "apikeys_validations_total", {{"code", "not_found"}}) == 1);
  CHECK(prom::value(text, "apikeys_validations_total", {{"code", "wrong_secret"}}) == 1);
  CHECK(prom::value(text, "apikeys_validations_total", {{"code", "rate_limited"}}) == 1);
  CHECK(prom::value(text, "apikeys_validations_total", {{"code", "expired"}}) == 0);
  CHECK(prom::value(text, "apikeys_validation_duration_seconds_count", {{"path", "format"}}) == 1);
  CHECK(prom::value(text, "apikeys_validation_duration_seconds_count", {{"path", "cache"}}) == 2);
  CHECK(prom::value(text, "apikeys_validation_duration_seconds_count", {{"path", "store"}}) == 4);
  CHECK(prom::value(text, "apikeys_cache_requests_total", {{"result", "hit"}}) == 2);
  CHECK(prom::value(text, "apikeys_cache_requests_total", {{"result", "miss"}}) == 4);
  CHECK(prom::value(text, "apikeys_cache_requests_total", {{"result", "error"}}) == 0);
  CHECK(prom::value(text, "apikeys_admission_decisions_total", {{"result", "admitted"}}) == 1);
  CHECK(prom::value(text, "apikeys_admission_decisions_total", {{"result", "rate_limited"}}) == 1);
}

TEST_CASE("Stats counts background errors, recoveries, writes and changes", "[stats]") {
  Stats stats;
  BackgroundError e;
  e.component = Component::cache;
  e.operation = "get";
  e.message = "down";
  stats.on_error(e);
  stats.on_error(e);
  e.component = Component::redis;
  e.operation = "breaker_open";
  stats.on_error(e);
  e.operation = "breaker_close";
  e.message = {};
  e.recovered = true;
  stats.on_error(e);
  BackgroundWrite w;
  w.component = Component::last_use;
  w.rows = 5;
  stats.on_write(w);
  w.rows = 2;
  stats.on_write(w);
  w.component = Component::rehash;
  w.rows = 3;
  stats.on_write(w);
  w.component = Component::store;  // not a writer: not counted
  w.rows = 100;
  stats.on_write(w);
  AuditEvent c;
  c.action = AuditAction::revoke;
  stats.on_change(c);
  c.action = AuditAction::create;
  stats.on_change(c);
  stats.on_change(c);

  const Stats::Snapshot s = stats.snapshot();
  CHECK(s.errors[static_cast<std::size_t>(Component::cache)] == 2);
  CHECK(s.errors[static_cast<std::size_t>(Component::redis)] == 1);
  CHECK(s.recoveries[static_cast<std::size_t>(Component::redis)] == 1);
  CHECK(std::accumulate(s.errors.begin(), s.errors.end(), std::uint64_t{0}) == 3);
  CHECK(std::accumulate(s.recoveries.begin(), s.recoveries.end(), std::uint64_t{0}) == 1);
  CHECK(s.last_use_writes == 7);
  CHECK(s.rehash_writes == 3);
  CHECK(s.changes[static_cast<std::size_t>(AuditAction::create)] == 2);
  CHECK(s.changes[static_cast<std::size_t>(AuditAction::revoke)] == 1);
  CHECK(total(s) == 0);

  const std::vector<prom::Family> text = prom::parse(stats.to_prometheus_text());
  CHECK(prom::value(text, "apikeys_background_errors_total", {{"component", "cache"}}) == 2);
  CHECK(prom::value(text, "apikeys_background_errors_total", {{"component", "redis"}}) == 1);
  CHECK(prom::value(text, "apikeys_background_recoveries_total", {{"component", "redis"}}) == 1);
  CHECK(prom::value(text, "apikeys_background_recoveries_total", {{"component", "cache"}}) == 0);
  CHECK(prom::value(text, "apikeys_last_use_writes_total") == 7);
  CHECK(prom::value(text, "apikeys_rehash_writes_total") == 3);
  CHECK(prom::value(text, "apikeys_changes_total", {{"action", "create"}}) == 2);
  CHECK(prom::value(text, "apikeys_changes_total", {{"action", "revoke"}}) == 1);
  CHECK(prom::value(text, "apikeys_changes_total", {{"action", "rehash"}}) == 0);
}

TEST_CASE("Stats adds up the counts of four threads exactly", "[stats]") {
  Stats stats;
  constexpr int kThreads = 4;
  constexpr std::uint64_t kCalls = 20'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&stats, t] {
      for (std::uint64_t i = 0; i < kCalls; ++i) {
        // Each thread its own code; paths, cache results and durations in turn.
        const auto path = static_cast<ValidatePath>(i % 3);
        const auto cache = static_cast<CacheResult>(i % 4);
        stats.on_validate(event(static_cast<ValidationCode>(t), path,
                                std::chrono::nanoseconds(100 * (i % 7)), cache,
                                AdmissionResult::admitted));
        if (i % 10 == 0) {
          BackgroundError e;
          e.component = Component::limiter;
          stats.on_error(e);
          BackgroundWrite w;
          w.component = Component::last_use;
          w.rows = 3;
          stats.on_write(w);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();

  const Stats::Snapshot s = stats.snapshot();
  for (int t = 0; t < kThreads; ++t) CHECK(s.validations[static_cast<std::size_t>(t)] == kCalls);
  CHECK(total(s) == kThreads * kCalls);
  std::uint64_t counted = 0;
  std::uint64_t sum_ns = 0;
  for (const Stats::Histogram& h : s.durations) {
    counted += h.count;
    sum_ns += h.sum_ns;
    CHECK(h.count == std::accumulate(h.buckets.begin(), h.buckets.end(), std::uint64_t{0}));
  }
  CHECK(counted == kThreads * kCalls);
  // i % 3 over 20,000 calls: 6,667, 6,667 and 6,666 per thread for paths 0, 1 and 2.
  for (std::size_t p = 0; p < 3; ++p) {
    CHECK(s.durations[p].count == kThreads * (kCalls / 3 + (p < kCalls % 3 ? 1 : 0)));
  }
  std::uint64_t want_sum = 0;
  for (std::uint64_t i = 0; i < kCalls; ++i) want_sum += 100 * (i % 7);
  CHECK(sum_ns == kThreads * want_sum);
  // i % 4 == 0 is CacheResult::none: a quarter of the calls asked no cache.
  CHECK(s.cache[idx(CacheResult::none)] == 0);
  for (CacheResult r : {CacheResult::hit, CacheResult::miss, CacheResult::error}) {
    CHECK(s.cache[idx(r)] == kThreads * kCalls / 4);
  }
  CHECK(s.admission[idx(AdmissionResult::admitted)] == kThreads * kCalls);
  CHECK(s.errors[static_cast<std::size_t>(Component::limiter)] == kThreads * kCalls / 10);
  CHECK(s.last_use_writes == 3 * kThreads * kCalls / 10);
}

TEST_CASE("Stats counts exactly with more threads than stripes, and across thread exits",
          "[stats]") {
  // Twenty threads at once (more than own a stripe: the rest share one), then three
  // rounds of five that exit in turn, each new thread counting on in a stripe another
  // left; two Stats at once, as a thread's stripe is the same in every Stats.
  Stats a;
  Stats b;
  constexpr std::uint64_t kCalls = 5'000;
  auto work = [&a, &b] {
    for (std::uint64_t i = 0; i < kCalls; ++i) {
      a.on_validate(event(ValidationCode::valid, ValidatePath::cache, std::chrono::nanoseconds(300),
                          CacheResult::hit));
      b.on_validate(
          event(ValidationCode::not_found, ValidatePath::store, std::chrono::nanoseconds(2)));
    }
  };
  std::uint64_t threads_run = 0;
  for (const int batch : {20, 5, 5, 5}) {
    std::vector<std::thread> threads;
    for (int t = 0; t < batch; ++t) threads.emplace_back(work);
    for (std::thread& t : threads) t.join();
    threads_run += static_cast<std::uint64_t>(batch);
    const Stats::Snapshot sa = a.snapshot();
    const Stats::Snapshot sb = b.snapshot();
    CHECK(sa.validations[idx(ValidationCode::valid)] == threads_run * kCalls);
    CHECK(total(sa) == threads_run * kCalls);
    CHECK(sa.durations[idx(ValidatePath::cache)].buckets[1] == threads_run * kCalls);
    CHECK(sa.durations[idx(ValidatePath::cache)].sum_ns == 300 * threads_run * kCalls);
    CHECK(sa.cache[idx(CacheResult::hit)] == threads_run * kCalls);
    CHECK(sb.validations[idx(ValidationCode::not_found)] == threads_run * kCalls);
    CHECK(sb.durations[idx(ValidatePath::store)].count == threads_run * kCalls);
    CHECK(sb.durations[idx(ValidatePath::store)].sum_ns == 2 * threads_run * kCalls);
  }
}

TEST_CASE("Stats histograms: cumulative buckets in seconds, _count equal to the calls", "[stats]") {
  using std::chrono::nanoseconds;
  Stats stats;
  const std::vector<std::int64_t> durations = {
      -5,                  // a clock that went back: the first bucket, adds nothing
      0,                   // le 250 ns
      250,                 // le 250 ns (bounds are inclusive)
      251,                 // le 500 ns
      500,                 // le 500 ns
      999'999,             // le 1 ms
      1'000'000'000,       // le 1 s
      10'000'000'000,      // le 10 s, the last bound
      10'000'000'001,      // +Inf
      3'600'000'000'000};  // +Inf
  for (std::int64_t d : durations) {
    stats.on_validate(
        event(ValidationCode::valid, ValidatePath::cache, nanoseconds(d), CacheResult::hit));
  }
  stats.on_validate(event(ValidationCode::not_found, ValidatePath::store, nanoseconds(1'500)));

  const Stats::Snapshot s = stats.snapshot();
  const Stats::Histogram& cache = s.durations[idx(ValidatePath::cache)];
  CHECK(cache.count == durations.size());
  CHECK(cache.buckets[0] == 3);
  CHECK(cache.buckets[1] == 2);
  CHECK(cache.buckets[Stats::kBuckets - 1] == 2);
  CHECK(cache.sum_ns == 250u + 251 + 500 + 999'999 + 1'000'000'000 + 10'000'000'000 +
                            10'000'000'001 + 3'600'000'000'000);

  const std::string text = stats.to_prometheus_text();
  const std::vector<prom::Family> families = prom::parse(text);
  const std::string bucket = "apikeys_validation_duration_seconds_bucket";
  const auto le = [&](const char* path, const char* bound) {
    return prom::value(families, bucket, {{"path", path}, {"le", bound}});
  };
  CHECK(le("cache", "0.00000025") == 3);
  CHECK(le("cache", "0.0000005") == 5);
  CHECK(le("cache", "0.000001") == 5);
  CHECK(le("cache", "0.001") == 6);
  CHECK(le("cache", "0.5") == 6);
  CHECK(le("cache", "1") == 7);
  CHECK(le("cache", "2.5") == 7);
  CHECK(le("cache", "10") == 8);
  CHECK(le("cache", "+Inf") == 10);
  CHECK(le("store", "0.000001") == 0);
  CHECK(le("store", "0.0000025") == 1);
  CHECK(le("store", "+Inf") == 1);
  CHECK(le("format", "+Inf") == 0);
  CHECK(prom::value(families, "apikeys_validation_duration_seconds_count", {{"path", "cache"}}) ==
        10);
  CHECK(prom::value(families, "apikeys_validation_duration_seconds_count", {{"path", "store"}}) ==
        1);
  // The sum in seconds, exactly: 3,621.001001000 s plus 1 ns.
  CHECK(text.find("apikeys_validation_duration_seconds_sum{path=\"cache\"} 3621.001001001\n") !=
        std::string::npos);
  CHECK(text.find("apikeys_validation_duration_seconds_sum{path=\"store\"} 0.0000015\n") !=
        std::string::npos);
  CHECK(text.find("apikeys_validation_duration_seconds_sum{path=\"format\"} 0\n") !=
        std::string::npos);

  // Cumulative in every series: each bucket at least the one before, le ascending
  // (the parser checks both), and the last the +Inf one.
  for (const prom::Family& f : families) {
    if (f.name != "apikeys_validation_duration_seconds") continue;
    double previous = -1;
    std::string path;
    for (const prom::Sample& sample : f.samples) {
      if (sample.name != bucket) continue;
      if (sample.labels.at("path") != path) {
        path = sample.labels.at("path");
        previous = -1;
      }
      CHECK(sample.value >= previous);
      previous = sample.value;
    }
  }
}

TEST_CASE("Stats histograms: each bound in its own bucket, one nanosecond more in the next",
          "[stats]") {
  for (std::size_t i = 0; i < Stats::kBucketBounds.size(); ++i) {
    const auto bound = static_cast<std::int64_t>(Stats::kBucketBounds[i]);
    Stats stats;
    stats.on_validate(event(ValidationCode::valid, ValidatePath::cache,
                            std::chrono::nanoseconds(bound), CacheResult::hit));
    stats.on_validate(
        event(ValidationCode::valid, ValidatePath::store, std::chrono::nanoseconds(bound + 1)));
    const Stats::Snapshot s = stats.snapshot();
    INFO("bound " << bound);
    CHECK(s.durations[idx(ValidatePath::cache)].buckets[i] == 1);
    CHECK(s.durations[idx(ValidatePath::store)].buckets[i + 1] == 1);
  }
}

TEST_CASE("Stats text: every family with HELP and TYPE, every series even at zero", "[stats]") {
  Stats stats;
  const std::string text = stats.to_prometheus_text();
  REQUIRE(!text.empty());
  CHECK(text.back() == '\n');
  const std::vector<prom::Family> families = prom::parse(text);

  struct Want {
    const char* name;
    const char* type;
    std::size_t samples;
  };
  const std::vector<Want> want = {
      {"apikeys_validations_total", "counter", 11},
      {"apikeys_validation_duration_seconds", "histogram", 3 * (Stats::kBuckets + 2)},
      {"apikeys_cache_requests_total", "counter", 3},
      {"apikeys_admission_decisions_total", "counter", 4},
      {"apikeys_background_errors_total", "counter", 8},
      {"apikeys_background_recoveries_total", "counter", 8},
      {"apikeys_last_use_writes_total", "counter", 1},
      {"apikeys_rehash_writes_total", "counter", 1},
      {"apikeys_changes_total", "counter", 13},
  };
  REQUIRE(families.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO(want[i].name);
    CHECK(families[i].name == want[i].name);
    CHECK(families[i].type == want[i].type);
    CHECK(families[i].has_help);
    CHECK(!families[i].help.empty());
    CHECK(families[i].samples.size() == want[i].samples);
    for (const prom::Sample& s : families[i].samples) CHECK(s.value == 0);
  }
  // Label values are the to_string() names.
  for (std::size_t c = 0; c <= static_cast<std::size_t>(kLastValidationCode); ++c) {
    CHECK_NOTHROW(prom::value(families, "apikeys_validations_total",
                              {{"code", to_string(static_cast<ValidationCode>(c))}}));
  }
  for (std::size_t c = 0; c <= static_cast<std::size_t>(kLastComponent); ++c) {
    const std::string name = to_string(static_cast<Component>(c));
    CHECK_NOTHROW(prom::value(families, "apikeys_background_errors_total", {{"component", name}}));
    CHECK_NOTHROW(
        prom::value(families, "apikeys_background_recoveries_total", {{"component", name}}));
  }
  for (std::size_t a = 0; a <= static_cast<std::size_t>(kLastAuditAction); ++a) {
    CHECK_NOTHROW(prom::value(families, "apikeys_changes_total",
                              {{"action", to_string(static_cast<AuditAction>(a))}}));
  }
  CHECK_THROWS(prom::value(families, "apikeys_cache_requests_total", {{"result", "none"}}));
  CHECK_THROWS(prom::value(families, "apikeys_admission_decisions_total", {{"result", "none"}}));
  // The same series, in the same order, after counting.
  stats.on_validate(event(ValidationCode::revoked, ValidatePath::store, std::chrono::seconds(2),
                          CacheResult::error, AdmissionResult::failed));
  const std::vector<prom::Family> after = prom::parse(stats.to_prometheus_text());
  REQUIRE(after.size() == families.size());
  for (std::size_t i = 0; i < after.size(); ++i) {
    REQUIRE(after[i].samples.size() == families[i].samples.size());
    for (std::size_t j = 0; j < after[i].samples.size(); ++j) {
      CHECK(after[i].samples[j].name == families[i].samples[j].name);
      CHECK(after[i].samples[j].labels == families[i].samples[j].labels);
    }
  }
  CHECK(prom::value(after, "apikeys_cache_requests_total", {{"result", "error"}}) == 1);
  CHECK(prom::value(after, "apikeys_admission_decisions_total", {{"result", "failed"}}) == 1);
}

TEST_CASE("Prometheus text parser accepts the format's valid forms", "[stats][prometheus]") {
  const std::string text =
      "# A comment\n"
      "\n"
      "# HELP a_total Help with \\\\ and \\n escapes.\n"
      "# TYPE a_total counter\n"
      "a_total{x=\"q\\\"uo\\\\te\\nd\",y=\"\"} 1 1700000000000\n"
      "a_total{x=\"b\",} 2.5e3\n"
      "a_total 0\n"
      "# TYPE g gauge\n"
      "# HELP g A gauge.\n"
      "g -Inf\n"
      "# HELP h A histogram.\n"
      "# TYPE h histogram\n"
      "h_bucket{le=\"0.5\"} 1\n"
      "h_bucket{le=\"1e1\"} 1\n"
      "h_bucket{le=\"+Inf\"} 2\n"
      "h_sum 12.5\n"
      "h_count 2\n"
      "# HELP u:v An untyped one with a colon.\n"
      "# TYPE u:v untyped\n"
      "u:v NaN\n";
  const std::vector<prom::Family> f = prom::parse(text);
  REQUIRE(f.size() == 4);
  CHECK(f[0].help == "Help with \\ and \n escapes.");
  CHECK(prom::value(f, "a_total", {{"x", "q\"uo\\te\nd"}, {"y", ""}}) == 1);
  CHECK(prom::value(f, "a_total", {{"x", "b"}}) == 2500);
  CHECK(prom::value(f, "h_count") == 2);
  CHECK(f[3].name == "u:v");
}

TEST_CASE("Prometheus text parser refuses what breaks the format", "[stats][prometheus]") {
  const std::string head = "# HELP a_total A.\n# TYPE a_total counter\n";
  const std::string hist = "# HELP h H.\n# TYPE h histogram\n";
  const std::vector<std::pair<const char*, std::string>> bad = {
      {"no final newline", head + "a_total 1"},
      {"no HELP", "# TYPE a_total counter\na_total 1\n"},
      {"no TYPE", "# HELP a_total A.\na_total 1\n"},
      {"TYPE after the samples", "# HELP a_total A.\na_total 1\n# TYPE a_total counter\n"},
      {"two TYPEs", head + "# TYPE a_total counter\na_total 1\n"},
      {"two HELPs", head + "# HELP a_total B.\na_total 1\n"},
      {"unknown type", "# HELP a A.\n# TYPE a countr\na 1\n"},
      {"bad HELP escape", "# HELP a_total A \\t.\n# TYPE a_total counter\na_total 1\n"},
      {"metric name starts with a digit", "# HELP 1a A.\n# TYPE 1a counter\n1a 1\n"},
      {"metric name with a dash", head + "a-total 1\n"},
      {"label name with a colon", head + "a_total{x:y=\"1\"} 1\n"},
      {"reserved label name", head + "a_total{__x=\"1\"} 1\n"},
      {"unquoted label value", head + "a_total{x=1} 1\n"},
      {"unterminated label value", head + "a_total{x=\"1} 1\n"},
      {"bad label value escape", head + "a_total{x=\"\\t\"} 1\n"},
      {"label twice", head + "a_total{x=\"1\",x=\"2\"} 1\n"},
      {"no comma between labels", head + "a_total{x=\"1\" y=\"2\"} 1\n"},
      {"no value", head + "a_total\n"},
      {"bad value", head + "a_total 1,5\n"},
      {"value with a hex prefix", head + "a_total 0x10\n"},
      {"bad timestamp", head + "a_total 1 12.5\n"},
      {"trailing text", head + "a_total 1 2 3\n"},
      {"negative counter", head + "a_total -1\n"},
      {"sample of a family without HELP and TYPE", head + "a_total 1\nb 1\n"},
      {"series twice", head + "a_total{x=\"1\"} 1\na_total{x=\"1\"} 2\n"},
      {"samples not together",
       head + "a_total{x=\"1\"} 1\n# HELP b B.\n# TYPE b gauge\nb 1\na_total{x=\"2\"} 1\n"},
      {"histogram without +Inf", hist + "h_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"},
      {"histogram le not ascending",
       hist + "h_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
              "h_sum 1\nh_count 1\n"},
      {"histogram le twice",
       hist + "h_bucket{le=\"1\"} 1\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
              "h_sum 1\nh_count 1\n"},
      {"histogram not cumulative",
       hist + "h_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
      {"histogram count not the +Inf bucket",
       hist + "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n"},
      {"histogram without _sum", hist + "h_bucket{le=\"+Inf\"} 1\nh_count 1\n"},
      {"histogram bucket without le", hist + "h_bucket 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\n"
                                             "h_count 1\n"},
      {"histogram le not a number",
       hist + "h_bucket{le=\"one\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"},
  };
  for (const auto& [why, text] : bad) {
    INFO(why);
    CHECK_THROWS_AS(prom::parse(text), std::runtime_error);
  }
  // Without the HELP-and-TYPE rule, metadata after a family's samples is still refused
  // (the rule alone would catch the cases above).
  const std::vector<std::pair<const char*, std::string>> late = {
      {"TYPE after the samples", "# HELP a_total A.\na_total 1\n# TYPE a_total counter\n"},
      {"HELP after the samples", "# TYPE a_total counter\na_total 1\n# HELP a_total A.\n"},
  };
  for (const auto& [why, text] : late) {
    INFO(why);
    CHECK_THROWS_AS(prom::parse(text, false), std::runtime_error);
  }
  CHECK_NOTHROW(prom::parse("a_total 1\n", false));
}
