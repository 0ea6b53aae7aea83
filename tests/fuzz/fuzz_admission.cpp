// fuzz_admission: MemoryLimiter over a MemoryStore, driven by a random sequence of
// requests (clock advances, costs, limits changed in place), against models written
// here: each rate limit a continuous-state leaky bucket in exact rationals
// (tests/support/leaky_bucket_model.hpp), the credits a plain balance with a daily reset
// refill. Every outcome, limited_by, retry_after, remaining, reset and the credit balance
// must match; any mismatch aborts.
// Input: a header (limits, credits, lease), then 4 bytes per step.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "apikeys/memory_limiter.hpp"
#include "fuzz_support.hpp"
#include "leaky_bucket_model.hpp"

namespace {

using namespace std::chrono_literals;

constexpr std::int64_t kDayMs = 86'400'000;
constexpr std::int64_t kPeriodsMs[] = {1000, 1001, 7000, 60'000, 3'600'000, 86'400'000};
const char* const kNames[] = {"a", "b", "c"};

apikeys::RateLimit make_limit(std::size_t i, fuzz::Reader& in) {
  apikeys::RateLimit l;
  l.name = kNames[i];
  const std::uint8_t v = in.byte();
  l.limit = v < 200 ? 1 + v % 20 : 1 + static_cast<std::uint64_t>(v) * 1'000'003;
  l.period = std::chrono::milliseconds(kPeriodsMs[in.byte() % std::size(kPeriodsMs)]);
  const std::uint8_t b = in.byte();
  l.burst = b < 128 ? 0 : 1 + b % 16;
  return l;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Reader in(data, size);
  const std::size_t count = in.byte() % 4;  // 0 to 3 limits
  std::vector<apikeys::RateLimit> limits;
  for (std::size_t i = 0; i < count; ++i) limits.push_back(make_limit(i, in));
  const std::uint8_t credit_mode = in.byte();
  const bool has_credits = credit_mode % 3 != 0;
  const bool refill = credit_mode % 3 == 2;
  const std::uint64_t initial = in.byte();
  const std::uint64_t amount = 1 + in.byte() % 50;
  const std::uint64_t lease = in.byte() % 4 == 0 ? 0 : in.byte() % 8;

  std::int64_t now_ms = 1'767'225'600'000 + 3'600'000;  // 2026-01-01T01:00Z
  auto clock = std::make_shared<apikeys::ManualClock>(apikeys::from_unix_millis(now_ms));
  auto store = std::make_shared<apikeys::MemoryStore>();
  apikeys::KeyManagerOptions o;
  o.validation.clock = clock;
  o.validation.record_last_use = false;
  apikeys::KeyManager manager(
      store, std::make_shared<apikeys::HmacSha256Hasher>(std::string(fuzz::kPepper)), std::move(o));
  apikeys::CreateRequest req("fuzz");
  if (has_credits) {
    apikeys::Credits c;
    c.remaining = initial;
    if (refill) {
      apikeys::CreditRefill r;
      r.amount = amount;
      r.interval = apikeys::RefillInterval::daily;
      r.mode = apikeys::RefillMode::reset;
      c.refill = r;
    }
    req.credits = c;
  }
  const apikeys::Uuid account = apikeys::Uuid::random();
  const apikeys::Uuid lineage = manager.create(account, req).info.key_id;
  apikeys::MemoryLimiterOptions lo;
  lo.lease_size = lease;
  apikeys::MemoryLimiter limiter(store, lo);

  std::vector<apikeys_test::Bucket> buckets(limits.size());
  std::uint64_t balance = initial;
  std::int64_t day = now_ms / kDayMs;

  for (int step = 0; step < 200 && !in.empty(); ++step) {
    const std::uint8_t op = in.byte();
    const std::uint8_t a = in.byte();
    const std::uint8_t b = in.byte();
    const std::uint8_t c = in.byte();
    // The clock: stays, moves by ms, by seconds, or by hours.
    switch (op & 3) {
      case 0: break;
      case 1: now_ms += a; break;
      case 2: now_ms += static_cast<std::int64_t>(a) * 1000 + b; break;
      default: now_ms += static_cast<std::int64_t>(a) * 3'600'000; break;
    }
    if ((op & 0x1c) == 0x1c && !limits.empty()) {
      // A limit changed in place, its state kept: a new period or burst, or a limit a
      // whole multiple of the old one (the state then rescales exactly).
      apikeys::RateLimit& l = limits[b % limits.size()];
      switch (c % 3) {
        case 0: l.period = std::chrono::milliseconds(kPeriodsMs[a % std::size(kPeriodsMs)]); break;
        case 1: l.burst = a < 128 ? 0 : 1 + a % 16; break;
        default:
          if (l.limit * (1 + a % 3) <= 1'000'000'000) l.limit *= 1 + a % 3;
          break;
      }
      continue;
    }
    std::uint64_t cost = 1;
    switch ((op >> 5) & 3) {
      case 0: cost = 0; break;
      case 1: cost = 1 + c % 20; break;
      default: break;
    }

    // The models.
    const std::int64_t now_ns = now_ms * 1'000'000;
    if (refill && now_ms / kDayMs > day) balance = amount;
    day = std::max(day, now_ms / kDayMs);
    std::vector<apikeys_test::Bucket> trial = buckets;
    std::vector<apikeys_test::Bucket::Result> results;
    // Of the limits that refuse, the one that makes the request wait longest (never,
    // for a cost above its burst; the first of equal waits).
    std::size_t refused = limits.size();
    std::int64_t wait = 0;
    for (std::size_t i = 0; i < limits.size(); ++i) {
      results.push_back(trial[i].decide(limits[i], cost, now_ns));
      if (results.back().admit) continue;
      const std::int64_t w =
          cost > limits[i].effective_burst() ? INT64_MAX : results.back().retry_after_ns;
      if (refused == limits.size() || w > wait) {
        refused = i;
        wait = w;
      }
    }
    const bool short_of_credits = refused == limits.size() && has_credits && balance < cost;

    apikeys::AdmissionRequest r;
    r.lineage_id = lineage;
    r.key_id = lineage;
    r.limits = limits.data();
    r.limit_count = limits.size();
    r.charge_credits = has_credits;
    r.cost = cost;
    r.now = apikeys::from_unix_millis(now_ms);
    const apikeys::Admission got = limiter.admit(r);

    if (refused < limits.size()) {
      FUZZ_CHECK(got.outcome == apikeys::AdmissionOutcome::rate_limited);
      FUZZ_CHECK(got.limited_by == refused);
      if (cost > limits[refused].effective_burst()) {
        FUZZ_CHECK(got.retry_after == std::chrono::milliseconds::max());  // never admitted
      } else {
        FUZZ_CHECK(got.retry_after.count() ==
                   (results[refused].retry_after_ns + 999'999) / 1'000'000);
      }
    } else if (short_of_credits) {
      FUZZ_CHECK(got.outcome == apikeys::AdmissionOutcome::usage_exceeded);
      FUZZ_CHECK(got.credits_remaining == balance);
    } else {
      FUZZ_CHECK(got.outcome == apikeys::AdmissionOutcome::admitted);
      buckets = trial;
      if (has_credits) balance -= cost;
      FUZZ_CHECK(got.limits.size() == limits.size());
      for (std::size_t i = 0; i < limits.size(); ++i) {
        FUZZ_CHECK(got.limits[i].remaining == results[i].remaining);
        FUZZ_CHECK(got.limits[i].reset.count() == (results[i].reset_ns + 999'999) / 1'000'000);
      }
      if (has_credits) FUZZ_CHECK(got.credits_remaining == balance);
    }
    if (!has_credits) FUZZ_CHECK(!got.credits_remaining.has_value());
  }
  // What the limiter holds goes back to the store: the balance is the model's.
  if (has_credits) {
    limiter.return_leases();
    if (refill && now_ms / kDayMs > day) balance = amount;
    const apikeys::Credits stored = apikeys::refilled(*manager.get(account, lineage).credits,
                                                      apikeys::from_unix_millis(now_ms));
    FUZZ_CHECK(stored.remaining == balance);
  }
  return 0;
}
