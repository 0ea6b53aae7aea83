// The apikeys::Store contract suite: what every backend (bundled, a user's own, a
// future PostgreSQL one) must do. Call run_store_contract(factory) from a TEST_CASE;
// the factory must return a new, empty store each time (each SECTION calls it once).
// A store written against the 0.1 interface passes StoreContractOptions with
// conditional_writes = false and digest_rewrites = false.
// Thread-safety: the suite itself drives threads only in its concurrency section.
// Ownership: stores are held through std::shared_ptr, as the library holds them.
#ifndef APIKEYS_TESTS_STORE_CONTRACT_HPP
#define APIKEYS_TESTS_STORE_CONTRACT_HPP

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "test_support.hpp"

namespace apikeys_test {

using StoreFactory = std::function<std::shared_ptr<apikeys::Store>()>;

/// What the store under test can do beyond the operations of apikeys 0.1.
struct StoreContractOptions {
  /// True (every bundled store): replace() and rotate() work, and set_status() and
  /// revoke_all() add 1 to a changed key's version (revoke_all() also sets updated_at).
  /// False: a store that implements only the 0.1 operations (examples/custom_store.cpp):
  /// replace() and rotate() must throw Error(not_supported) and change nothing, and the
  /// Store defaults of get(), list_page() and revoke_all() must work on it.
  bool conditional_writes = true;
  /// True (every bundled store): replace_digests() and pepper_counts() work. False: they
  /// must throw Error(not_supported) (the Store defaults) and change nothing.
  bool digest_rewrites = true;
  /// True (every bundled store): lineage_id and rate_limits are kept, and credits work
  /// (take_credits(), return_credits(), change_credits(); insert() and remove() keep
  /// them). False: the credit operations must throw Error(not_supported) (the defaults).
  bool admission = true;
};

namespace contract {

/// A deterministic version-4 key id, distinct from test_support's account_id(n).
inline apikeys::Uuid key_id(std::uint32_t n) {
  std::array<std::uint8_t, 16> bytes{};
  bytes[0] = static_cast<std::uint8_t>(n >> 24);
  bytes[1] = static_cast<std::uint8_t>(n >> 16);
  bytes[2] = static_cast<std::uint8_t>(n >> 8);
  bytes[3] = static_cast<std::uint8_t>(n);
  bytes[6] = 0x40;
  bytes[8] = 0x80;
  bytes[15] = 0xa5;
  return apikeys::Uuid(bytes);
}

/// A millisecond-exact time (the precision every bundled store keeps).
inline apikeys::TimePoint at(std::int64_t offset_ms) {
  return apikeys::from_unix_millis(kTestStartMillis + offset_ms);
}

/// "pk_" + 32 characters, unique per n.
inline std::string public_key(std::uint32_t n) {
  std::string digits = std::to_string(n);
  return "pk_" + std::string(32 - digits.size(), 'K') + digits;
}

/// An active record of `account` created at at(created_offset_ms), no expiry, never used.
inline apikeys::KeyRecord record(std::uint32_t n, const apikeys::Uuid& account,
                                 std::int64_t created_offset_ms = 0) {
  apikeys::KeyRecord r;
  r.info.key_id = key_id(n);
  r.info.account_id = account;
  r.info.public_key = public_key(n);
  r.info.title = "key " + std::to_string(n);
  r.info.created_at = at(created_offset_ms);
  r.info.updated_at = r.info.created_at;
  for (std::size_t i = 0; i < r.digest.bytes.size(); ++i) {
    r.digest.bytes[i] = static_cast<std::uint8_t>(n * 31 + i * 7);
  }
  r.digest.pepper_id = 1;
  return r;
}

inline void check_same_info(const apikeys::KeyInfo& got, const apikeys::KeyInfo& want) {
  CHECK(got.key_id == want.key_id);
  CHECK(got.account_id == want.account_id);
  CHECK(got.public_key == want.public_key);
  CHECK(got.title == want.title);
  CHECK(got.description == want.description);
  CHECK(got.status == want.status);
  CHECK(got.created_at == want.created_at);
  CHECK(got.expires_at.has_value() == want.expires_at.has_value());
  if (got.expires_at && want.expires_at) CHECK(*got.expires_at == *want.expires_at);
  CHECK(got.last_used_at.has_value() == want.last_used_at.has_value());
  if (got.last_used_at && want.last_used_at) CHECK(*got.last_used_at == *want.last_used_at);
}

inline void check_same_record(const apikeys::KeyRecord& got, const apikeys::KeyRecord& want) {
  check_same_info(got.info, want.info);
  CHECK(got.digest.bytes == want.digest.bytes);
  CHECK(got.digest.pepper_id == want.digest.pepper_id);
}

/// check_same_info, and the key policy fields too (metadata, scopes, updated_at,
/// version, rotated_from, rotated_to).
inline void check_same_key(const apikeys::KeyInfo& got, const apikeys::KeyInfo& want) {
  check_same_info(got, want);
  CHECK(got.metadata == want.metadata);
  CHECK(got.scopes == want.scopes);
  CHECK(got.updated_at == want.updated_at);
  CHECK(got.version == want.version);
  CHECK(got.rotated_from == want.rotated_from);
  CHECK(got.rotated_to == want.rotated_to);
}

/// check_same_record with check_same_key.
inline void check_same_full_record(const apikeys::KeyRecord& got, const apikeys::KeyRecord& want) {
  check_same_key(got.info, want.info);
  CHECK(got.digest.bytes == want.digest.bytes);
  CHECK(got.digest.pepper_id == want.digest.pepper_id);
}

/// The fields a validation reads (Store::find_for_validation()) are the same.
inline void check_same_verdict(const apikeys::KeyRecord& got, const apikeys::KeyRecord& want) {
  CHECK(got.info.key_id == want.info.key_id);
  CHECK(got.info.account_id == want.info.account_id);
  CHECK(got.info.public_key == want.info.public_key);
  CHECK(got.info.status == want.info.status);
  CHECK(got.info.expires_at == want.info.expires_at);
  CHECK(got.info.metadata == want.info.metadata);
  CHECK(got.info.scopes == want.info.scopes);
  CHECK(got.info.lineage() == want.info.lineage());
  CHECK(got.info.rate_limits == want.info.rate_limits);
  CHECK(got.info.credits.has_value() == want.info.credits.has_value());
  CHECK(got.digest.bytes == want.digest.bytes);
  CHECK(got.digest.pepper_id == want.digest.pepper_id);
}

/// A record with every policy field set: metadata (non-ASCII included), scopes (sorted,
/// a wildcard among them), a later updated_at, a version above 1 and both rotation links.
inline apikeys::KeyRecord policy_record(std::uint32_t n, const apikeys::Uuid& account,
                                        std::int64_t created_offset_ms = 0) {
  apikeys::KeyRecord r = record(n, account, created_offset_ms);
  r.info.metadata = R"({"team":"billing \u00e9","tier":3,"tags":["a","b"],)"
                    R"("nested":{"x":null,"y":[1,{"z":true}]},)"
                    "\"name\":\"\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x94\x91\"}";  // CJK, emoji
  r.info.scopes = {"**", "billing:invoices.read", "invoices.*", "reports.**"};
  r.info.updated_at = at(created_offset_ms + 1234);
  r.info.version = 7;
  r.info.rotated_from = key_id(n + 100'000);
  r.info.rotated_to = key_id(n + 200'000);
  r.info.expires_at = at(created_offset_ms + 86'400'000);
  return r;
}

/// The code of the apikeys::Error that `f` throws; nullopt when it throws nothing.
/// Any other exception escapes (and fails the test).
template <typename F>
std::optional<apikeys::ErrorCode> error_code_of(F&& f) {
  try {
    f();
  } catch (const apikeys::Error& e) {
    return e.code();
  }
  return std::nullopt;
}

inline std::vector<apikeys::Uuid> ids_of(const std::vector<apikeys::KeyInfo>& keys) {
  std::vector<apikeys::Uuid> out;
  for (const auto& k : keys) out.push_back(k.key_id);
  return out;
}

/// key_id(n) for each n, in order.
inline std::vector<apikeys::Uuid> ids(std::initializer_list<std::uint32_t> ns) {
  std::vector<apikeys::Uuid> out;
  for (const std::uint32_t n : ns) out.push_back(key_id(n));
  return out;
}

/// The position just after `key` in list_page order.
inline apikeys::PagePosition position_of(const apikeys::KeyInfo& key) {
  return apikeys::PagePosition{key.created_at, key.key_id};
}

/// True when `keys` contains `key`.
inline bool contains(const std::vector<std::string>& keys, const std::string& key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

/// For a store whose revision() moves (one shared between processes): a change made
/// after `before` moved it, and changes_since(before), when the store can answer it,
/// names every public key in `changed`. A store whose revision() stays put passes.
/// run_change_log_contract checks the same without the escape hatches.
inline void check_logged(apikeys::Store& store, std::uint64_t before,
                         const std::vector<std::string>& changed) {
  if (store.revision() == before) return;
  const auto changes = store.changes_since(before);
  if (!changes) return;
  for (const std::string& key : changed) CHECK(contains(changes->public_keys, key));
}

/// A digest under `pepper_id`, unique per seed (and unlike any record(n)'s).
inline apikeys::Digest digest(std::uint32_t seed, std::uint32_t pepper_id) {
  apikeys::Digest d;
  for (std::size_t i = 0; i < d.bytes.size(); ++i) {
    d.bytes[i] = static_cast<std::uint8_t>(seed * 13 + i * 11 + 5);
  }
  d.bytes[0] = 0xd1;
  d.pepper_id = pepper_id;
  return d;
}

/// pepper_counts() as (pepper id, keys) pairs, for comparing whole lists.
inline std::vector<std::pair<std::uint32_t, std::uint64_t>> counts_of(
    const std::vector<apikeys::PepperCount>& counts) {
  std::vector<std::pair<std::uint32_t, std::uint64_t>> out;
  for (const apikeys::PepperCount& c : counts) out.emplace_back(c.pepper_id, c.keys);
  return out;
}

/// Nothing a validator must hear of happened since `before`: the revision did not move,
/// and changes_since(before), when the store answers it, names no key.
inline void check_unlogged(apikeys::Store& store, std::uint64_t before) {
  CHECK(store.revision() == before);
  const auto changes = store.changes_since(before);
  if (changes) {
    CHECK(changes->revision == before);
    CHECK(changes->public_keys.empty());
  }
}

}  // namespace contract

namespace contract {

/// The start of UTC day `day` of month `month` (1-12) of `year`, plus `ms`.
inline apikeys::TimePoint utc(int year, int month, int day, std::int64_t ms = 0) {
  const apikeys::TimePoint first = apikeys::refill_period_start(
      apikeys::RefillInterval::monthly, std::int64_t{year - 1970} * 12 + (month - 1));
  return first + std::chrono::milliseconds(std::int64_t{day - 1} * 86'400'000 + ms);
}

/// record(n) starting its own lineage (lineage_id = key_id), with `credits` if given.
inline apikeys::KeyRecord lineage_record(std::uint32_t n, const apikeys::Uuid& account,
                                         std::optional<apikeys::Credits> credits = {}) {
  apikeys::KeyRecord r = record(n, account, n);
  r.info.lineage_id = r.info.key_id;
  r.info.credits = std::move(credits);
  return r;
}

inline apikeys::Credits credits_of(std::uint64_t remaining,
                                   std::optional<apikeys::CreditRefill> refill = {},
                                   std::int64_t refilled_period = 0) {
  apikeys::Credits c;
  c.remaining = remaining;
  c.refill = refill;
  c.refilled_period = refilled_period;
  return c;
}

inline apikeys::CreditRefill refill_of(std::uint64_t amount, apikeys::RefillInterval interval,
                                       apikeys::RefillMode mode, std::uint64_t cap = 0) {
  apikeys::CreditRefill r;
  r.amount = amount;
  r.interval = interval;
  r.mode = mode;
  r.cap = cap;
  return r;
}

inline void check_take(const apikeys::CreditTake& got, apikeys::CreditTake::Outcome outcome,
                       std::uint64_t taken, std::uint64_t remaining) {
  CHECK(got.outcome == outcome);
  CHECK(got.taken == taken);
  CHECK(got.remaining == remaining);
}

/// The admission part of the contract (StoreContractOptions::admission): lineages, rate
/// limits and the credits of take_credits(), return_credits() and change_credits().
inline void run_admission_sections(const std::shared_ptr<apikeys::Store>& store,
                                   const StoreContractOptions& options) {
  using apikeys::CreditsChange;
  using apikeys::CreditsOp;
  using apikeys::ErrorCode;
  using apikeys::RateLimit;
  using apikeys::RefillInterval;
  using apikeys::RefillMode;
  using Outcome = apikeys::CreditTake::Outcome;
  using std::chrono::milliseconds;
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);
  constexpr std::uint64_t kMax = apikeys::KeyPolicyLimits::kMaxCredits;

  if (!options.admission) {
    SECTION("without admission, the credit operations are not supported") {
      store->insert(record(1, alice));
      CHECK(error_code_of([&] { (void)store->take_credits(key_id(1), 1, 1, at(0)); }) ==
            ErrorCode::not_supported);
      CHECK(error_code_of([&] { store->return_credits(key_id(1), 1, 0); }) ==
            ErrorCode::not_supported);
      CreditsChange change;
      change.remaining = 5;
      CHECK(error_code_of([&] { (void)store->change_credits(alice, key_id(1), change); }) ==
            ErrorCode::not_supported);
    }
    return;
  }

  const std::vector<RateLimit> limits = {RateLimit{"burst", 10, milliseconds(1000), 20},
                                         RateLimit{"odd.period", 3, milliseconds(1500), 0},
                                         RateLimit{"per-minute", 100, milliseconds(60'000), 0}};

  SECTION("lineage and rate limits round trip through every read") {
    apikeys::KeyRecord a = lineage_record(1, alice);
    a.info.rate_limits = limits;
    apikeys::KeyRecord b = record(2, alice, 5);  // nil lineage_id: its own lineage
    apikeys::KeyRecord c = record(3, alice, 9);  // another key's lineage
    c.info.lineage_id = a.info.key_id;
    c.info.rate_limits = {limits[2]};
    for (const auto* r : {&a, &b, &c}) store->insert(*r);
    for (const auto* r : {&a, &b, &c}) {
      INFO("key " << r->info.title);
      const auto found = store->find(r->info.public_key);
      REQUIRE(found);
      CHECK(found->info.lineage_id == r->info.lineage_id);
      CHECK(found->info.lineage() == r->info.lineage());
      CHECK(found->info.rate_limits == r->info.rate_limits);
      CHECK_FALSE(found->info.credits);
      const auto got = store->get(alice, r->info.key_id);
      REQUIRE(got);
      CHECK(got->lineage_id == r->info.lineage_id);
      CHECK(got->rate_limits == r->info.rate_limits);
    }
    CHECK(store->find(b.info.public_key)->info.lineage() == b.info.key_id);
    CHECK(store->find(c.info.public_key)->info.lineage() == a.info.key_id);
    for (const auto* r : {&a, &b, &c}) {
      const auto read = store->find_for_validation(r->info.public_key);
      REQUIRE(read);
      check_same_verdict(*read, *r);
    }
    for (const auto& keys : {store->list(alice), store->list_page(alice, std::nullopt, 10, {})}) {
      REQUIRE(keys.size() == 3);
      CHECK(keys[0].key_id == c.info.key_id);
      CHECK(keys[0].lineage_id == a.info.key_id);
      CHECK(keys[0].rate_limits == c.info.rate_limits);
      CHECK(keys[2].rate_limits == limits);
      CHECK(keys[1].lineage_id.is_nil());
      CHECK(keys[1].rate_limits.empty());
    }
  }

  SECTION("rate limits are written by replace and copied to a rotate successor") {
    const apikeys::KeyRecord a = lineage_record(1, alice);
    store->insert(a);
    apikeys::KeyInfo next = *store->get(alice, a.info.key_id);
    next.rate_limits = limits;
    next.lineage_id = key_id(77);  // not a replaced field: ignored
    apikeys::WriteResult w = store->replace(alice, next, next.version);
    REQUIRE(w.outcome == apikeys::WriteOutcome::applied);
    CHECK(w.key.rate_limits == limits);
    CHECK(w.key.lineage_id == a.info.key_id);
    CHECK(store->find(a.info.public_key)->info.rate_limits == limits);
    CHECK(store->get(alice, a.info.key_id)->rate_limits == limits);

    next = w.key;
    next.rate_limits.clear();
    w = store->replace(alice, next, next.version);
    REQUIRE(w.outcome == apikeys::WriteOutcome::applied);
    CHECK(w.key.rate_limits.empty());
    CHECK(store->find(a.info.public_key)->info.rate_limits.empty());

    next = w.key;
    next.rate_limits = {limits[0]};
    apikeys::KeyRecord successor = record(2, alice, 50);
    successor.info.lineage_id = a.info.key_id;
    successor.info.rate_limits = {limits[0]};
    successor.info.rotated_from = a.info.key_id;
    next.rotated_to = successor.info.key_id;
    w = store->rotate(alice, next, next.version, successor);
    REQUIRE(w.outcome == apikeys::WriteOutcome::applied);
    CHECK(w.key.rate_limits == successor.info.rate_limits);
    const auto got = store->find(successor.info.public_key);
    REQUIRE(got);
    CHECK(got->info.lineage_id == a.info.key_id);
    CHECK(got->info.rate_limits == successor.info.rate_limits);
    CHECK(store->get(alice, a.info.key_id)->rate_limits == successor.info.rate_limits);
  }

  SECTION("credits are created by insert only for the first key of a lineage") {
    const auto refill = refill_of(100, RefillInterval::daily, RefillMode::reset);
    const apikeys::KeyRecord a = lineage_record(1, alice, credits_of(50, refill, 20'000));
    store->insert(a);
    apikeys::KeyRecord b = record(2, alice, 5);  // a's lineage: never creates credits
    b.info.lineage_id = a.info.key_id;
    b.info.credits = credits_of(999);
    store->insert(b);
    apikeys::KeyRecord c = record(3, alice, 9);  // its own lineage, no credits
    store->insert(c);
    apikeys::KeyRecord d = record(4, bob, 9);  // joins a lineage without credits
    d.info.lineage_id = key_id(40);
    d.info.credits = credits_of(7);
    store->insert(d);

    for (const apikeys::KeyRecord* r : std::initializer_list<const apikeys::KeyRecord*>{&a, &b}) {
      const auto found = store->find(r->info.public_key);
      REQUIRE(found);
      CHECK(found->info.credits.has_value());
      const auto got = store->get(alice, r->info.key_id);
      REQUIRE(got);
      REQUIRE(got->credits);
      CHECK(got->credits->remaining == 50);
      CHECK(got->credits->refill == refill);
      CHECK(got->credits->refilled_period == 20'000);
    }
    CHECK_FALSE(store->find(c.info.public_key)->info.credits);
    CHECK_FALSE(store->get(alice, c.info.key_id)->credits);
    CHECK_FALSE(store->find(d.info.public_key)->info.credits);
    CHECK(store->find_for_validation(a.info.public_key)->info.credits.has_value());
    CHECK(store->find_for_validation(b.info.public_key)->info.credits.has_value());
    CHECK_FALSE(store->find_for_validation(c.info.public_key)->info.credits);
    CHECK_FALSE(store->find_for_validation(d.info.public_key)->info.credits);
    CHECK(store->take_credits(key_id(40), 1, 1, at(0)).outcome == Outcome::no_credits);
    CHECK(store->take_credits(key_id(2), 1, 1, at(0)).outcome == Outcome::no_credits);
    const auto keys = store->list(alice);
    REQUIRE(keys.size() == 3);
    CHECK_FALSE(keys[0].credits);
    REQUIRE(keys[1].credits);
    CHECK(keys[1].credits->remaining == 50);
    const auto page = store->list_page(alice, std::nullopt, 10, {});
    REQUIRE(page.size() == 3);
    REQUIRE(page[2].credits);
    CHECK(page[2].credits->remaining == 50);

    // A rotate successor shares them, whatever credits it carries.
    apikeys::KeyInfo next = *store->get(alice, a.info.key_id);
    apikeys::KeyRecord successor = record(5, alice, 60);
    successor.info.lineage_id = a.info.key_id;
    successor.info.credits = credits_of(1);
    next.rotated_to = successor.info.key_id;
    const apikeys::WriteResult w = store->rotate(alice, next, next.version, successor);
    REQUIRE(w.outcome == apikeys::WriteOutcome::applied);
    REQUIRE(w.key.credits);
    CHECK(w.key.credits->remaining == 50);
    REQUIRE(store->get(alice, successor.info.key_id)->credits);
    CHECK(store->get(alice, successor.info.key_id)->credits->remaining == 50);
    CHECK(store->find(successor.info.public_key)->info.credits.has_value());
  }

  SECTION("take_credits takes exactly: minimum, maximum, insufficient, none") {
    store->insert(lineage_record(1, alice, credits_of(10)));
    const apikeys::Uuid l = key_id(1);
    apikeys::CreditTake t = store->take_credits(l, 1, 1, at(0));
    check_take(t, Outcome::taken, 1, 9);
    CHECK(t.period == 0);
    CHECK(t.period_end == apikeys::TimePoint::max());
    check_take(store->take_credits(l, 3, 5, at(0)), Outcome::taken, 5, 4);
    check_take(store->take_credits(l, 5, 5, at(0)), Outcome::insufficient, 0, 4);
    check_take(store->take_credits(l, 0, 0, at(0)), Outcome::taken, 0, 4);
    check_take(store->take_credits(l, 3, 1, at(0)), Outcome::taken, 3, 1);  // max < min: min
    check_take(store->take_credits(l, 1, 100, at(0)), Outcome::taken, 1, 0);
    check_take(store->take_credits(l, 1, 1, at(0)), Outcome::insufficient, 0, 0);
    check_take(store->take_credits(l, 0, 0, at(0)), Outcome::taken, 0, 0);
    check_take(store->take_credits(l, 0, 5, at(0)), Outcome::taken, 0, 0);
    check_take(store->take_credits(key_id(9), 0, 0, at(0)), Outcome::no_credits, 0, 0);
    check_take(store->take_credits(key_id(9), 1, 1, at(0)), Outcome::no_credits, 0, 0);
    CHECK(store->get(alice, l)->credits->remaining == 0);
    const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
    check_take(store->take_credits(l, huge, huge, at(0)), Outcome::insufficient, 0, 0);
  }

  SECTION("take_credits refills a reset refill once per UTC day") {
    const auto refill = refill_of(100, RefillInterval::daily, RefillMode::reset);
    const apikeys::TimePoint day = utc(2026, 3, 31);
    const std::int64_t p = apikeys::refill_period(RefillInterval::daily, day);
    store->insert(lineage_record(1, alice, credits_of(30, refill, p)));
    const apikeys::Uuid l = key_id(1);
    apikeys::CreditTake t = store->take_credits(l, 1, 1, day + milliseconds(86'399'999));
    check_take(t, Outcome::taken, 1, 29);
    CHECK(t.period == p);
    CHECK(t.period_end == utc(2026, 4, 1));
    t = store->take_credits(l, 1, 1, utc(2026, 4, 1));  // a new day: reset to 100
    check_take(t, Outcome::taken, 1, 99);
    CHECK(t.period == p + 1);
    CHECK(t.period_end == utc(2026, 4, 2));
    check_take(store->take_credits(l, 1, 1, utc(2026, 4, 1, 1000)), Outcome::taken, 1, 98);
    CHECK(store->get(alice, l)->credits->refilled_period == p + 1);
    // Insufficient after a refill: the refill is still written, once.
    t = store->take_credits(l, 101, 101, utc(2026, 4, 3));
    check_take(t, Outcome::insufficient, 0, 100);
    CHECK(t.period == p + 3);
    check_take(store->take_credits(l, 60, 60, utc(2026, 4, 3, 5)), Outcome::taken, 60, 40);
    check_take(store->take_credits(l, 0, 0, utc(2026, 4, 3, 9)), Outcome::taken, 0, 40);
    CHECK(store->get(alice, l)->credits->remaining == 40);
    CHECK(store->get(alice, l)->credits->refilled_period == p + 3);
  }

  SECTION("take_credits adds a capped refill per UTC month elapsed, never lowering") {
    const auto refill = refill_of(10, RefillInterval::monthly, RefillMode::add_capped, 25);
    const std::int64_t jan = apikeys::refill_period(RefillInterval::monthly, utc(2026, 1, 15));
    store->insert(lineage_record(1, alice, credits_of(3, refill, jan)));
    const apikeys::Uuid l = key_id(1);
    apikeys::CreditTake t = store->take_credits(l, 0, 0, utc(2026, 2, 1) - milliseconds(1));
    check_take(t, Outcome::taken, 0, 3);
    CHECK(t.period_end == utc(2026, 2, 1));
    t = store->take_credits(l, 0, 0, utc(2026, 2, 1));
    check_take(t, Outcome::taken, 0, 13);
    CHECK(t.period == jan + 1);
    CHECK(t.period_end == utc(2026, 3, 1));
    // Two more months: 13 + 20, capped at 25.
    check_take(store->take_credits(l, 5, 5, utc(2026, 4, 30)), Outcome::taken, 5, 20);
    // A balance above the cap, set by hand, is kept.
    CreditsChange set;
    set.remaining = 40;
    set.at = utc(2026, 4, 30);
    REQUIRE(store->change_credits(alice, l, set));
    check_take(store->take_credits(l, 0, 0, utc(2026, 6, 1)), Outcome::taken, 0, 40);
    // Years later: the cap, without overflow.
    check_take(store->take_credits(l, 39, 39, utc(2026, 6, 2)), Outcome::taken, 39, 1);
    check_take(store->take_credits(l, 0, 0, utc(2099, 12, 1)), Outcome::taken, 0, 25);
    // A cap of 0 means the amount.
    const auto plain = refill_of(kMax, RefillInterval::monthly, RefillMode::add_capped);
    store->insert(lineage_record(2, alice, credits_of(kMax - 1, plain, jan)));
    check_take(store->take_credits(key_id(2), 0, 0, utc(2030, 1, 1)), Outcome::taken, 0, kMax);
  }

  SECTION("return_credits gives back only within the period") {
    const auto refill = refill_of(100, RefillInterval::daily, RefillMode::reset);
    const apikeys::TimePoint day = utc(2026, 5, 10);
    const std::int64_t p = apikeys::refill_period(RefillInterval::daily, day);
    store->insert(lineage_record(1, alice, credits_of(100, refill, p)));
    const apikeys::Uuid l = key_id(1);
    const apikeys::CreditTake t = store->take_credits(l, 10, 10, day);
    check_take(t, Outcome::taken, 10, 90);
    store->return_credits(l, 4, t.period);
    CHECK(store->get(alice, l)->credits->remaining == 94);
    store->return_credits(l, 4, t.period - 1);  // another period's: expired
    CHECK(store->get(alice, l)->credits->remaining == 94);
    store->return_credits(key_id(8), 4, t.period);  // no such lineage: nothing
    store->return_credits(l, std::numeric_limits<std::uint64_t>::max(), t.period);
    CHECK(store->get(alice, l)->credits->remaining == kMax);
    // After the next refill, the lease's rest is not returned over it.
    check_take(store->take_credits(l, 1, 1, day + milliseconds(86'400'000)), Outcome::taken, 1, 99);
    store->return_credits(l, 5, t.period);
    CHECK(store->get(alice, l)->credits->remaining == 99);
  }

  SECTION("return_credits_checked gives back only onto the balance taken from") {
    store->insert(lineage_record(1, alice, credits_of(100)));
    const apikeys::Uuid l = key_id(1);
    const auto remaining = [&] { return store->get(alice, l)->credits->remaining; };
    const apikeys::CreditTake t = store->take_credits(l, 10, 10, at(0));
    check_take(t, Outcome::taken, 10, 90);
    store->return_credits_checked(l, 4, t.period, t.generation);
    CHECK(remaining() == 94);
    // An add changes the balance without setting it: a give-back still lands.
    CreditsChange add;
    add.op = CreditsOp::add;
    add.delta = 6;
    add.at = at(0);
    REQUIRE(store->change_credits(alice, l, add));
    store->return_credits_checked(l, 4, t.period, t.generation);
    CHECK(remaining() == 104);
    // A balance set is another balance: credits taken before it do not land on it,
    // from whichever process they come.
    CreditsChange set;
    set.remaining = 50;
    set.at = at(0);
    REQUIRE(store->change_credits(alice, l, set));
    store->return_credits_checked(l, 4, t.period, t.generation);
    CHECK(remaining() == 50);
    const apikeys::CreditTake u = store->take_credits(l, 5, 5, at(0));
    check_take(u, Outcome::taken, 5, 45);
    CHECK(u.generation != t.generation);
    store->return_credits_checked(l, 5, u.period, u.generation);
    CHECK(remaining() == 50);
    // Set to the same value, it is another balance still.
    REQUIRE(store->change_credits(alice, l, set));
    const apikeys::CreditTake v = store->take_credits(l, 5, 5, at(0));
    REQUIRE(store->change_credits(alice, l, set));
    store->return_credits_checked(l, 5, v.period, v.generation);
    CHECK(remaining() == 50);
    // Removed, then set again: another balance.
    const apikeys::CreditTake w = store->take_credits(l, 5, 5, at(0));
    CreditsChange remove;
    remove.op = CreditsOp::remove;
    REQUIRE(store->change_credits(alice, l, remove));
    REQUIRE(store->change_credits(alice, l, set));
    store->return_credits_checked(l, 5, w.period, w.generation);
    CHECK(remaining() == 50);
  }

  SECTION("change_credits configures, adds and removes, and logs what verdicts see") {
    const apikeys::KeyRecord a = lineage_record(1, alice);
    store->insert(a);
    apikeys::KeyRecord b = record(2, alice, 5);
    b.info.lineage_id = a.info.key_id;
    store->insert(b);
    const apikeys::KeyInfo before_key = *store->get(alice, a.info.key_id);
    const apikeys::TimePoint now = utc(2026, 7, 4, 1234);

    CreditsChange add;
    add.op = CreditsOp::add;
    add.delta = 5;
    add.at = now;
    CHECK(error_code_of([&] { (void)store->change_credits(alice, a.info.key_id, add); }) ==
          ErrorCode::conflict);
    CreditsChange bare;  // configure without a balance, on a lineage without credits
    bare.change_refill = true;
    bare.refill = refill_of(10, RefillInterval::daily, RefillMode::reset);
    bare.at = now;
    CHECK(error_code_of([&] { (void)store->change_credits(alice, b.info.key_id, bare); }) ==
          ErrorCode::conflict);
    CHECK_FALSE(store->find(a.info.public_key)->info.credits);

    CreditsChange make_credits;
    make_credits.remaining = 20;
    make_credits.change_refill = true;
    make_credits.refill = refill_of(30, RefillInterval::monthly, RefillMode::reset);
    make_credits.at = now;
    CHECK_FALSE(store->change_credits(bob, a.info.key_id, make_credits));  // not bob's
    CHECK_FALSE(store->change_credits(alice, key_id(99), make_credits));
    std::uint64_t before = store->revision();
    auto changed = store->change_credits(alice, b.info.key_id, make_credits);  // via b
    REQUIRE(changed);
    CHECK(changed->key_id == b.info.key_id);
    REQUIRE(changed->credits);
    CHECK(changed->credits->remaining == 20);
    CHECK(changed->credits->refill == make_credits.refill);
    CHECK(changed->credits->refilled_period ==
          apikeys::refill_period(RefillInterval::monthly, now));
    check_logged(*store, before, {a.info.public_key, b.info.public_key});
    CHECK(store->find(a.info.public_key)->info.credits.has_value());
    CHECK(store->find(b.info.public_key)->info.credits.has_value());
    // Not a change of the keys: version and updated_at stay.
    const apikeys::KeyInfo after_key = *store->get(alice, a.info.key_id);
    CHECK(after_key.version == before_key.version);
    CHECK(after_key.updated_at == before_key.updated_at);
    // The balance belongs to this month: no refill over it until the next.
    check_take(store->take_credits(a.info.key_id, 0, 0, now), Outcome::taken, 0, 20);

    changed = store->change_credits(alice, a.info.key_id, add);
    REQUIRE(changed);
    CHECK(changed->credits->remaining == 25);
    add.delta = -100;
    CHECK(store->change_credits(alice, a.info.key_id, add)->credits->remaining == 0);
    add.delta = std::numeric_limits<std::int64_t>::max();
    CHECK(store->change_credits(alice, a.info.key_id, add)->credits->remaining == kMax);
    add.delta = std::numeric_limits<std::int64_t>::min();
    CHECK(store->change_credits(alice, a.info.key_id, add)->credits->remaining == 0);
    // add applies the refill due first: next month resets to 30, then + 1.
    add.delta = 1;
    add.at = utc(2026, 8, 1);
    CHECK(store->change_credits(alice, a.info.key_id, add)->credits->remaining == 31);

    // configure: the refill only (the balance kept), then the balance only.
    CreditsChange no_refill;
    no_refill.change_refill = true;
    no_refill.at = utc(2026, 8, 2);
    changed = store->change_credits(alice, a.info.key_id, no_refill);
    REQUIRE(changed->credits);
    CHECK(changed->credits->remaining == 31);
    CHECK_FALSE(changed->credits->refill);
    CHECK(changed->credits->refilled_period == 0);
    CreditsChange balance;
    balance.remaining = 7;
    balance.at = utc(2026, 8, 2);
    changed = store->change_credits(alice, a.info.key_id, balance);
    CHECK(changed->credits->remaining == 7);
    CHECK_FALSE(changed->credits->refill);

    CreditsChange remove;
    remove.op = CreditsOp::remove;
    before = store->revision();
    changed = store->change_credits(alice, a.info.key_id, remove);
    REQUIRE(changed);
    CHECK_FALSE(changed->credits);
    check_logged(*store, before, {a.info.public_key, b.info.public_key});
    CHECK_FALSE(store->find(a.info.public_key)->info.credits);
    CHECK_FALSE(store->find(b.info.public_key)->info.credits);
    CHECK_FALSE(store->get(alice, b.info.key_id)->credits);
    CHECK(store->take_credits(a.info.key_id, 0, 0, now).outcome == Outcome::no_credits);
    // Removing none is no error.
    changed = store->change_credits(alice, a.info.key_id, remove);
    REQUIRE(changed);
    CHECK_FALSE(changed->credits);
  }

  SECTION("the credits go with the last key of their lineage") {
    store->insert(lineage_record(1, alice, credits_of(10)));
    apikeys::KeyRecord b = record(2, alice, 5);
    b.info.lineage_id = key_id(1);
    store->insert(b);
    const auto removed = store->remove(alice, key_id(1));
    REQUIRE(removed);
    REQUIRE(removed->credits);
    CHECK(removed->credits->remaining == 10);
    check_take(store->take_credits(key_id(1), 1, 1, at(0)), Outcome::taken, 1, 9);
    CHECK(store->find(b.info.public_key)->info.credits.has_value());
    REQUIRE(store->remove(alice, b.info.key_id));
    CHECK(store->take_credits(key_id(1), 0, 0, at(0)).outcome == Outcome::no_credits);
    // A new lineage of the same id starts afresh.
    store->insert(lineage_record(1, alice, credits_of(3)));
    check_take(store->take_credits(key_id(1), 0, 0, at(0)), Outcome::taken, 0, 3);
  }
}

}  // namespace contract

/// Runs the whole Store contract against stores made by `make`.
inline void run_store_contract(const StoreFactory& make, const StoreContractOptions& options = {}) {
  using apikeys::ErrorCode;
  using apikeys::KeyStatus;
  using namespace contract;
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);

  std::shared_ptr<apikeys::Store> store = make();
  REQUIRE(store != nullptr);

  SECTION("insert then find returns every field, byte-exact") {
    apikeys::KeyRecord plain = record(1, alice, 5);
    plain.info.title = R"(She said "hi" & 'bye' \ back\slash)";
    plain.info.description = "";

    apikeys::KeyRecord full = record(2, alice, 7);
    full.info.title =
        "\xF0\x9F\x94\x91 prod key \xE2\x9C\x93 \xE6\x97\xA5\xE6\x9C\xAC";  // emoji, CJK
    full.info.description = "'); DROP TABLE api_keys;--";
    full.info.status = KeyStatus::revoked;
    full.info.expires_at = at(10LL * 365 * 24 * 3600 * 1000);
    full.info.last_used_at = at(-1234);
    full.digest.bytes.fill(0xff);
    full.digest.bytes[3] = 0x00;  // An embedded zero byte must survive.
    full.digest.pepper_id = 0xffffffffu;

    apikeys::KeyRecord injection = record(3, bob, 9);
    injection.info.title = "'); DROP TABLE api_keys;--";
    injection.info.description = "\"; DELETE FROM api_keys; --";

    store->insert(plain);
    store->insert(full);
    store->insert(injection);

    auto got_plain = store->find(plain.info.public_key);
    REQUIRE(got_plain);
    check_same_record(*got_plain, plain);
    CHECK_FALSE(got_plain->info.expires_at);
    CHECK_FALSE(got_plain->info.last_used_at);

    auto got_full = store->find(full.info.public_key);
    REQUIRE(got_full);
    check_same_record(*got_full, full);

    auto got_injection = store->find(injection.info.public_key);
    REQUIRE(got_injection);
    check_same_record(*got_injection, injection);
    CHECK(store->list(alice).size() == 2);  // The "DROP TABLE" titles dropped nothing.
  }

  SECTION("find of an unknown public key is nullopt") {
    CHECK_FALSE(store->find(public_key(1)));
    store->insert(record(1, alice));
    CHECK_FALSE(store->find(public_key(2)));
    CHECK_FALSE(store->find(""));
    CHECK_FALSE(store->find(public_key(1) + "x"));
    CHECK_FALSE(store->find(public_key(1).substr(0, 20)));
    CHECK(store->find(public_key(1)));
  }

  SECTION("list is newest first; equal created_at lists the latest insert first") {
    store->insert(record(1, alice, 1000));
    store->insert(record(2, alice, 3000));
    store->insert(record(10, bob, 5000));
    store->insert(record(3, alice, 2000));
    store->insert(record(4, alice, 3000));
    store->insert(record(11, bob, 3000));
    store->insert(record(5, alice, 3000));

    const auto keys = store->list(alice);
    const std::vector<apikeys::Uuid> want{key_id(5), key_id(4), key_id(2), key_id(3), key_id(1)};
    CHECK(ids_of(keys) == want);
    for (const auto& k : keys) CHECK(k.account_id == alice);
    REQUIRE(keys.size() == 5);
    check_same_info(keys[0], record(5, alice, 3000).info);

    CHECK(ids_of(store->list(bob)) == std::vector<apikeys::Uuid>{key_id(10), key_id(11)});
    CHECK(store->list(account_id(3)).empty());

    // A change keeps a key's place among keys created at the same time.
    REQUIRE(store->set_status(alice, key_id(2), KeyStatus::revoked));
    if (options.conditional_writes) {
      apikeys::KeyInfo renamed = keys[1];  // key 4, inserted before key 5
      renamed.title = "renamed";
      REQUIRE(store->replace(alice, renamed, renamed.version).outcome ==
              apikeys::WriteOutcome::applied);
    }
    CHECK(ids_of(store->list(alice)) == want);
  }

  SECTION("set_status only touches the owning account's key") {
    const apikeys::KeyRecord r = record(1, alice);
    store->insert(r);

    CHECK_FALSE(store->set_status(bob, r.info.key_id, KeyStatus::revoked));
    CHECK(store->find(r.info.public_key)->info.status == KeyStatus::active);
    CHECK_FALSE(store->set_status(alice, key_id(99), KeyStatus::revoked));

    auto revoked = store->set_status(alice, r.info.key_id, KeyStatus::revoked);
    REQUIRE(revoked);
    apikeys::KeyInfo want = r.info;
    want.status = KeyStatus::revoked;
    check_same_info(*revoked, want);
    CHECK(store->find(r.info.public_key)->info.status == KeyStatus::revoked);
    CHECK(store->list(alice).at(0).status == KeyStatus::revoked);
    check_same_record(*store->find(r.info.public_key), apikeys::KeyRecord{want, r.digest});

    auto active = store->set_status(alice, r.info.key_id, KeyStatus::active);
    REQUIRE(active);
    CHECK(active->status == KeyStatus::active);
    CHECK(store->find(r.info.public_key)->info.status == KeyStatus::active);
  }

  SECTION("remove only deletes the owning account's key") {
    const apikeys::KeyRecord r = record(1, alice);
    const apikeys::KeyRecord other = record(2, alice);
    store->insert(r);
    store->insert(other);

    CHECK_FALSE(store->remove(bob, r.info.key_id));
    CHECK(store->find(r.info.public_key));
    CHECK_FALSE(store->remove(alice, key_id(99)));

    auto removed = store->remove(alice, r.info.key_id);
    REQUIRE(removed);
    check_same_info(*removed, r.info);
    CHECK_FALSE(store->find(r.info.public_key));
    CHECK(ids_of(store->list(alice)) == std::vector<apikeys::Uuid>{other.info.key_id});
    CHECK_FALSE(store->remove(alice, r.info.key_id));
    CHECK_FALSE(store->set_status(alice, r.info.key_id, KeyStatus::revoked));
    CHECK(store->find(other.info.public_key));

    // The public key and key id are free again.
    store->insert(r);
    CHECK(store->find(r.info.public_key));
  }

  SECTION("a duplicate public key or key id is already_exists and changes nothing") {
    const apikeys::KeyRecord r = record(1, alice);
    store->insert(r);

    apikeys::KeyRecord same_public = record(2, bob);
    same_public.info.public_key = r.info.public_key;
    CHECK(error_code_of([&] { store->insert(same_public); }) == ErrorCode::already_exists);

    apikeys::KeyRecord same_id = record(3, bob);
    same_id.info.key_id = r.info.key_id;
    CHECK(error_code_of([&] { store->insert(same_id); }) == ErrorCode::already_exists);

    check_same_record(*store->find(r.info.public_key), r);
    CHECK_FALSE(store->find(same_id.info.public_key));
    CHECK(store->list(bob).empty());
    CHECK(store->list(alice).size() == 1);
    CHECK_FALSE(store->remove(bob, same_public.info.key_id));
  }

  SECTION("record_last_use keeps the later time and ignores unknown ids") {
    const apikeys::KeyRecord a = record(1, alice);
    apikeys::KeyRecord b = record(2, alice);
    b.info.last_used_at = at(50'000);
    store->insert(a);
    store->insert(b);

    store->record_last_use({});
    store->record_last_use({{a.info.key_id, at(20'000)}, {key_id(99), at(30'000)}});
    CHECK(store->find(a.info.public_key)->info.last_used_at == at(20'000));

    store->record_last_use({{a.info.key_id, at(10'000)}, {b.info.key_id, at(40'000)}});
    CHECK(store->find(a.info.public_key)->info.last_used_at == at(20'000));
    CHECK(store->find(b.info.public_key)->info.last_used_at == at(50'000));

    // Several entries for one key in a batch: the latest wins, whatever the order.
    store->record_last_use(
        {{a.info.key_id, at(25'000)}, {a.info.key_id, at(60'000)}, {a.info.key_id, at(30'000)}});
    CHECK(store->find(a.info.public_key)->info.last_used_at == at(60'000));
    CHECK(store->list(alice).at(1).last_used_at == at(60'000));
    CHECK_FALSE(store->find(public_key(99)));
  }

  SECTION("the policy fields round-trip through insert, find, get, list and list_page") {
    const apikeys::KeyRecord full = policy_record(1, alice, 100);
    const apikeys::KeyRecord disabled = [&] {
      apikeys::KeyRecord r = policy_record(2, alice, 200);
      r.info.status = KeyStatus::disabled;
      r.info.scopes = {"a"};
      r.info.rotated_from.reset();
      return r;
    }();
    const apikeys::KeyRecord plain = record(3, alice, 300);  // none of them set
    store->insert(full);
    store->insert(disabled);
    store->insert(plain);

    for (const apikeys::KeyRecord* want : {&full, &disabled, &plain}) {
      const auto found = store->find(want->info.public_key);
      REQUIRE(found);
      check_same_full_record(*found, *want);
      const auto got = store->get(alice, want->info.key_id);
      REQUIRE(got);
      check_same_key(*got, want->info);
    }
    CHECK(store->find(plain.info.public_key)->info.metadata.empty());
    CHECK(store->find(plain.info.public_key)->info.scopes.empty());
    CHECK_FALSE(store->find(plain.info.public_key)->info.rotated_from);
    CHECK_FALSE(store->find(plain.info.public_key)->info.rotated_to);

    const auto listed = store->list(alice);
    REQUIRE(listed.size() == 3);
    check_same_key(listed[0], plain.info);
    check_same_key(listed[1], disabled.info);
    check_same_key(listed[2], full.info);
    const auto page = store->list_page(alice, std::nullopt, 10, std::nullopt);
    REQUIRE(page.size() == 3);
    check_same_key(page[0], plain.info);
    check_same_key(page[1], disabled.info);
    check_same_key(page[2], full.info);
  }

  SECTION("find_for_validation reads every field a verdict is made of, as find does") {
    const apikeys::KeyRecord full = policy_record(1, alice, 100);
    apikeys::KeyRecord revoked = record(2, bob, 200);
    revoked.info.status = KeyStatus::revoked;
    revoked.info.expires_at = at(-5000);
    revoked.info.title = "\xF0\x9F\x94\x91 revoked";
    revoked.info.description = "'); DROP TABLE api_keys;--";
    const apikeys::KeyRecord plain = record(3, alice, 300);
    const std::initializer_list<const apikeys::KeyRecord*> keys = {&full, &revoked, &plain};
    for (const apikeys::KeyRecord* r : keys) store->insert(*r);
    for (const apikeys::KeyRecord* want : keys) {
      INFO("key " << want->info.title);
      const auto read = store->find_for_validation(want->info.public_key);
      REQUIRE(read);
      check_same_verdict(*read, *want);
      const auto found = store->find(want->info.public_key);
      REQUIRE(found);
      check_same_verdict(*read, *found);
    }
    CHECK_FALSE(store->find_for_validation(public_key(4)));
    CHECK_FALSE(store->find_for_validation(""));
    CHECK_FALSE(store->find_for_validation(public_key(1) + "x"));
    CHECK_FALSE(store->find_for_validation(public_key(1).substr(0, 20)));
    REQUIRE(store->remove(alice, key_id(1)));
    CHECK_FALSE(store->find_for_validation(full.info.public_key));
    REQUIRE(store->set_status(alice, key_id(3), KeyStatus::disabled));
    CHECK(store->find_for_validation(plain.info.public_key)->info.status == KeyStatus::disabled);
  }

  SECTION("get returns only the owning account's key") {
    const apikeys::KeyRecord r = policy_record(1, alice);
    store->insert(r);
    store->insert(record(2, bob));
    const auto got = store->get(alice, r.info.key_id);
    REQUIRE(got);
    check_same_key(*got, r.info);
    CHECK_FALSE(store->get(bob, r.info.key_id));
    CHECK_FALSE(store->get(alice, key_id(2)));
    CHECK_FALSE(store->get(alice, key_id(99)));
    CHECK_FALSE(store->get(account_id(3), r.info.key_id));
    REQUIRE(store->remove(alice, r.info.key_id));
    CHECK_FALSE(store->get(alice, r.info.key_id));
  }

  SECTION("list_page: newest first then larger key id, strictly after the position") {
    // Inserted out of key id order, so that the page order (key id among equal
    // creation times) differs from list()'s (latest insert first).
    store->insert(record(1, alice, 1000));
    store->insert(record(3, alice, 3000));
    store->insert(record(7, alice, 3000));
    store->insert(record(20, bob, 3000));
    store->insert(record(5, alice, 3000));
    store->insert(record(2, alice, 2000));
    store->insert(record(9, alice, 500));
    store->insert(record(4, alice, 2000));
    store->insert(record(21, bob, 1000));

    const auto all = store->list_page(alice, std::nullopt, 100, std::nullopt);
    CHECK(ids_of(all) == ids({7, 5, 3, 4, 2, 1, 9}));
    for (const auto& k : all) CHECK(k.account_id == alice);
    CHECK(ids_of(store->list_page(bob, std::nullopt, 100, std::nullopt)) == ids({20, 21}));
    CHECK(store->list_page(account_id(3), std::nullopt, 100, std::nullopt).empty());
    CHECK(ids_of(store->list_page(alice, std::nullopt, 3, std::nullopt)) == ids({7, 5, 3}));

    // Pages of 2, each from the last key of the one before.
    std::vector<std::vector<apikeys::Uuid>> pages;
    std::optional<apikeys::PagePosition> after;
    for (int i = 0; i < 10; ++i) {
      const auto page = store->list_page(alice, after, 2, std::nullopt);
      pages.push_back(ids_of(page));
      if (page.size() < 2) break;
      after = position_of(page.back());
    }
    const std::vector<std::vector<apikeys::Uuid>> want_pages{ids({7, 5}), ids({3, 4}), ids({2, 1}),
                                                             ids({9})};
    CHECK(pages == want_pages);
    CHECK(store->list_page(alice, position_of(all.back()), 100, std::nullopt).empty());

    // The position is a value: it need not be a stored key's.
    CHECK(ids_of(store->list_page(alice, apikeys::PagePosition{at(3000), key_id(4)}, 100,
                                  std::nullopt)) == ids({3, 4, 2, 1, 9}));
    CHECK(ids_of(store->list_page(alice, apikeys::PagePosition{at(3000), key_id(100)}, 100,
                                  std::nullopt)) == ids({7, 5, 3, 4, 2, 1, 9}));
    CHECK(ids_of(store->list_page(alice, apikeys::PagePosition{at(2500), key_id(1)}, 100,
                                  std::nullopt)) == ids({4, 2, 1, 9}));
    CHECK(store->list_page(alice, apikeys::PagePosition{at(0), key_id(1)}, 100, std::nullopt)
              .empty());
    // A position from another account's key orders alice's keys the same way.
    const auto bobs = store->list(bob);
    REQUIRE(bobs.size() == 2);
    CHECK(ids_of(store->list_page(alice, position_of(bobs[0]), 100, std::nullopt)) ==
          ids({7, 5, 3, 4, 2, 1, 9}));
    CHECK(ids_of(store->list_page(alice, position_of(bobs[1]), 100, std::nullopt)) == ids({1, 9}));
  }

  SECTION("list_page with a status filter") {
    for (std::uint32_t n = 1; n <= 8; ++n) store->insert(record(n, alice, n * 100));
    store->insert(record(20, bob, 450));
    REQUIRE(store->set_status(alice, key_id(6), KeyStatus::revoked));
    REQUIRE(store->set_status(alice, key_id(3), KeyStatus::revoked));
    REQUIRE(store->set_status(alice, key_id(5), KeyStatus::disabled));
    REQUIRE(store->set_status(bob, key_id(20), KeyStatus::revoked));

    CHECK(ids_of(store->list_page(alice, std::nullopt, 100, KeyStatus::active)) ==
          ids({8, 7, 4, 2, 1}));
    CHECK(ids_of(store->list_page(alice, std::nullopt, 100, KeyStatus::revoked)) == ids({6, 3}));
    CHECK(ids_of(store->list_page(alice, std::nullopt, 100, KeyStatus::disabled)) == ids({5}));
    CHECK(ids_of(store->list_page(alice, std::nullopt, 100, std::nullopt)) ==
          ids({8, 7, 6, 5, 4, 3, 2, 1}));
    for (const auto& k : store->list_page(alice, std::nullopt, 100, KeyStatus::active)) {
      CHECK(k.status == KeyStatus::active);
    }
    // The limit counts matching keys only; the position may be a key the filter skips.
    CHECK(ids_of(store->list_page(alice, std::nullopt, 2, KeyStatus::active)) == ids({8, 7}));
    const apikeys::PagePosition after_seven{at(700), key_id(7)};
    CHECK(ids_of(store->list_page(alice, after_seven, 2, KeyStatus::active)) == ids({4, 2}));
    const apikeys::PagePosition after_six{at(600), key_id(6)};
    CHECK(ids_of(store->list_page(alice, after_six, 100, KeyStatus::revoked)) == ids({3}));
    CHECK(ids_of(store->list_page(alice, after_six, 100, KeyStatus::active)) == ids({4, 2, 1}));
    CHECK(
        store->list_page(alice, apikeys::PagePosition{at(300), key_id(3)}, 100, KeyStatus::revoked)
            .empty());
    CHECK(store->list_page(bob, std::nullopt, 100, KeyStatus::active).empty());
  }

  SECTION("list_page: keys inserted between pages are neither skipped nor repeated") {
    // Ten keys, n = 10, 20, ... 100, created at n * 10 ms; key ids follow n.
    for (std::uint32_t n = 10; n <= 100; n += 10) store->insert(record(n, alice, n * 10));
    std::vector<apikeys::Uuid> walked;
    std::optional<apikeys::PagePosition> after;
    const auto next_page = [&] {
      const auto page = store->list_page(alice, after, 3, std::nullopt);
      for (const auto& k : page) walked.push_back(k.key_id);
      if (!page.empty()) after = position_of(page.back());
      return page.size();
    };
    REQUIRE(next_page() == 3);                  // 100, 90, 80; the position is (800 ms, key 80)
    store->insert(record(200, alice, 2000));    // newer than the position: not in this walk
    store->insert(record(85, alice, 800));      // same time, larger id: before the position
    store->insert(record(75, alice, 800));      // same time, smaller id: after it
    store->insert(record(65, alice, 650));      // older: after it
    REQUIRE(next_page() == 3);                  // 75, 70, 65
    store->insert(record(66, alice, 650));      // before the position (650 ms, key 65)
    store->insert(record(64, alice, 650));      // after it
    store->insert(record(5, alice, 50));        // the oldest of all
    REQUIRE(store->remove(alice, key_id(50)));  // deleted before it was reached
    REQUIRE(next_page() == 3);                  // 64, 60, 40
    REQUIRE(next_page() == 3);                  // 30, 20, 10
    CHECK(next_page() == 1);                    // 5
    CHECK(next_page() == 0);
    CHECK(walked == ids({100, 90, 80, 75, 70, 65, 64, 60, 40, 30, 20, 10, 5}));
  }

  if (options.conditional_writes) {
    SECTION("replace: applied writes the changeable fields and adds 1 to the version") {
      const apikeys::KeyRecord r = policy_record(1, alice, 100);
      store->insert(r);
      store->insert(record(2, alice, 200));
      const std::uint64_t before = store->revision();

      apikeys::KeyInfo next = r.info;
      next.title = "renamed \xE2\x9C\x93";
      next.description = "now described";
      next.metadata = R"({"owner":"ops"})";
      next.scopes = {"invoices.read", "reports.write"};
      next.status = KeyStatus::disabled;
      next.expires_at = at(5'000'000);
      next.updated_at = at(4000);
      next.rotated_to = key_id(77);
      // Fields replace() ignores: they must stay as stored.
      next.public_key = public_key(500);
      next.account_id = bob;
      next.created_at = at(99'999);
      next.last_used_at = at(12'345);
      next.rotated_from = key_id(88);
      next.version = 1000;

      const apikeys::WriteResult written = store->replace(alice, next, r.info.version);
      REQUIRE(written.outcome == apikeys::WriteOutcome::applied);
      apikeys::KeyInfo want = r.info;
      want.title = next.title;
      want.description = next.description;
      want.metadata = next.metadata;
      want.scopes = next.scopes;
      want.status = next.status;
      want.expires_at = next.expires_at;
      want.updated_at = next.updated_at;
      want.rotated_to = next.rotated_to;
      want.version = r.info.version + 1;
      check_same_key(written.key, want);
      check_same_full_record(*store->find(r.info.public_key), apikeys::KeyRecord{want, r.digest});
      check_same_key(*store->get(alice, r.info.key_id), want);
      check_same_key(store->list(alice).at(1), want);
      CHECK_FALSE(store->find(public_key(500)));
      CHECK(store->list(bob).empty());
      check_logged(*store, before, {r.info.public_key});

      // Clearing: no expiry, no metadata, no scopes, no successor; empty description.
      apikeys::KeyInfo cleared = want;
      cleared.description.clear();
      cleared.metadata.clear();
      cleared.scopes.clear();
      cleared.expires_at.reset();
      cleared.rotated_to.reset();
      cleared.status = KeyStatus::active;
      cleared.updated_at = at(5000);
      const apikeys::WriteResult again = store->replace(alice, cleared, want.version);
      REQUIRE(again.outcome == apikeys::WriteOutcome::applied);
      cleared.version = want.version + 1;
      check_same_key(again.key, cleared);
      check_same_key(store->find(r.info.public_key)->info, cleared);
      // The other key was not touched.
      check_same_key(*store->get(alice, key_id(2)), record(2, alice, 200).info);
      // A rewritten key is removed like any other, and leaves the rest whole.
      REQUIRE(store->remove(alice, r.info.key_id));
      CHECK_FALSE(store->find(r.info.public_key));
      CHECK_FALSE(store->get(alice, r.info.key_id));
      REQUIRE(store->list(alice).size() == 1);
      check_same_key(store->list(alice).at(0), record(2, alice, 200).info);
      check_same_key(store->find(record(2, alice, 200).info.public_key)->info,
                     record(2, alice, 200).info);
    }

    SECTION("replace: another account's key is not_found, a stale version a conflict") {
      const apikeys::KeyRecord r = policy_record(1, alice);
      store->insert(r);
      apikeys::KeyInfo next = r.info;
      next.title = "changed";
      next.status = KeyStatus::revoked;
      const std::uint64_t before = store->revision();
      const apikeys::WriteResult other = store->replace(bob, next, r.info.version);
      CHECK(other.outcome == apikeys::WriteOutcome::not_found);
      apikeys::KeyInfo unknown = next;
      unknown.key_id = key_id(99);
      CHECK(store->replace(alice, unknown, 1).outcome == apikeys::WriteOutcome::not_found);
      check_same_full_record(*store->find(r.info.public_key), r);

      for (const std::uint64_t stale : {r.info.version - 1, r.info.version + 1, std::uint64_t{0}}) {
        const apikeys::WriteResult conflict = store->replace(alice, next, stale);
        CHECK(conflict.outcome == apikeys::WriteOutcome::conflict);
        check_same_key(conflict.key, r.info);  // the key as it is
      }
      check_same_full_record(*store->find(r.info.public_key), r);
      CHECK(store->revision() == before);  // nothing written, nothing logged

      // The current version applies; the one before is stale from then on.
      REQUIRE(store->replace(alice, next, r.info.version).outcome ==
              apikeys::WriteOutcome::applied);
      const apikeys::WriteResult late = store->replace(alice, r.info, r.info.version);
      CHECK(late.outcome == apikeys::WriteOutcome::conflict);
      CHECK(late.key.title == "changed");
      CHECK(late.key.version == r.info.version + 1);
      CHECK(store->find(r.info.public_key)->info.status == KeyStatus::revoked);
    }

    SECTION("replace: of concurrent writers with the same version, exactly one applies") {
      const apikeys::KeyRecord r = record(1, alice);
      store->insert(r);
      {
        constexpr int kThreads = 4;
        std::atomic<int> applied{0};
        std::atomic<int> conflicts{0};
        std::atomic<int> failures{0};
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t) {
          threads.emplace_back([&, t] {
            apikeys::KeyInfo next = r.info;
            next.title = "writer " + std::to_string(t);
            try {
              const auto outcome = store->replace(alice, next, r.info.version).outcome;
              if (outcome == apikeys::WriteOutcome::applied) ++applied;
              if (outcome == apikeys::WriteOutcome::conflict) ++conflicts;
            } catch (...) {
              ++failures;
            }
          });
        }
        for (auto& th : threads) th.join();
        CHECK(failures.load() == 0);
        CHECK(applied.load() == 1);
        CHECK(conflicts.load() == kThreads - 1);
        CHECK(store->find(r.info.public_key)->info.version == r.info.version + 1);
      }
    }

    SECTION("rotate: the old key's change and the successor, both at once") {
      const apikeys::KeyRecord old_key = policy_record(1, alice, 100);
      store->insert(old_key);
      store->insert(record(3, bob, 100));
      apikeys::KeyRecord successor = policy_record(2, alice, 5000);
      successor.info.version = 1;
      successor.info.updated_at = successor.info.created_at;
      successor.info.rotated_from = old_key.info.key_id;
      successor.info.rotated_to.reset();
      apikeys::KeyInfo old_next = old_key.info;
      old_next.rotated_to = successor.info.key_id;
      old_next.expires_at = at(6000);
      old_next.updated_at = at(5000);

      const std::uint64_t before = store->revision();
      const apikeys::WriteResult written =
          store->rotate(alice, old_next, old_key.info.version, successor);
      REQUIRE(written.outcome == apikeys::WriteOutcome::applied);
      apikeys::KeyInfo want_old = old_next;
      want_old.version = old_key.info.version + 1;
      check_same_key(written.key, want_old);
      check_same_key(*store->get(alice, old_key.info.key_id), want_old);
      const auto found = store->find(successor.info.public_key);
      REQUIRE(found);
      check_same_full_record(*found, successor);
      check_same_key(*store->get(alice, successor.info.key_id), successor.info);
      CHECK(ids_of(store->list(alice)) == ids({2, 1}));
      CHECK(store->get(alice, successor.info.key_id)->rotated_from == old_key.info.key_id);
      CHECK(store->get(alice, old_key.info.key_id)->rotated_to == successor.info.key_id);
      check_logged(*store, before, {old_key.info.public_key});
    }

    SECTION("rotate: a taken successor key, a stale version or another account writes nothing") {
      const apikeys::KeyRecord old_key = record(1, alice, 100);
      const apikeys::KeyRecord other = record(3, bob, 200);
      store->insert(old_key);
      store->insert(other);
      apikeys::KeyRecord successor = record(2, alice, 5000);
      successor.info.rotated_from = old_key.info.key_id;
      apikeys::KeyInfo old_next = old_key.info;
      old_next.rotated_to = successor.info.key_id;
      old_next.expires_at = at(6000);
      old_next.updated_at = at(5000);
      const auto unchanged = [&] {
        check_same_full_record(*store->find(old_key.info.public_key), old_key);
        check_same_full_record(*store->find(other.info.public_key), other);
        CHECK(ids_of(store->list(alice)) == ids({1}));
        CHECK(ids_of(store->list(bob)) == ids({3}));
      };
      const std::uint64_t before = store->revision();

      // The successor's public key is taken (by another account's key): already_exists.
      apikeys::KeyRecord taken_public = successor;
      taken_public.info.public_key = other.info.public_key;
      CHECK(error_code_of([&] {
              (void)store->rotate(alice, old_next, old_key.info.version, taken_public);
            }) == ErrorCode::already_exists);
      unchanged();
      // ...or it is the old key's own.
      apikeys::KeyRecord own_public = successor;
      own_public.info.public_key = old_key.info.public_key;
      CHECK(error_code_of([&] {
              (void)store->rotate(alice, old_next, old_key.info.version, own_public);
            }) == ErrorCode::already_exists);
      unchanged();
      // The successor's key id is taken.
      apikeys::KeyRecord taken_id = successor;
      taken_id.info.key_id = other.info.key_id;
      CHECK(error_code_of([&] {
              (void)store->rotate(alice, old_next, old_key.info.version, taken_id);
            }) == ErrorCode::already_exists);
      unchanged();

      // Another account's key, or no such key: not_found.
      CHECK(store->rotate(bob, old_next, old_key.info.version, successor).outcome ==
            apikeys::WriteOutcome::not_found);
      apikeys::KeyInfo unknown = old_next;
      unknown.key_id = key_id(99);
      CHECK(store->rotate(alice, unknown, 1, successor).outcome ==
            apikeys::WriteOutcome::not_found);
      unchanged();
      CHECK_FALSE(store->find(successor.info.public_key));

      // A stale version: conflict, with the key as it is.
      const apikeys::WriteResult stale =
          store->rotate(alice, old_next, old_key.info.version + 1, successor);
      CHECK(stale.outcome == apikeys::WriteOutcome::conflict);
      check_same_key(stale.key, old_key.info);
      unchanged();
      CHECK_FALSE(store->find(successor.info.public_key));
      CHECK(store->revision() == before);

      // And then it applies.
      CHECK(store->rotate(alice, old_next, old_key.info.version, successor).outcome ==
            apikeys::WriteOutcome::applied);
      CHECK(ids_of(store->list(alice)) == ids({2, 1}));
    }
  } else {
    SECTION("replace and rotate throw not_supported and write nothing") {
      const apikeys::KeyRecord r = policy_record(1, alice, 100);
      store->insert(r);
      apikeys::KeyInfo next = r.info;
      next.title = "changed";
      next.status = KeyStatus::revoked;
      next.rotated_to = key_id(2);
      const apikeys::KeyRecord successor = record(2, alice, 5000);
      CHECK(error_code_of([&] { (void)store->replace(alice, next, r.info.version); }) ==
            ErrorCode::not_supported);
      CHECK(error_code_of([&] { (void)store->replace(bob, next, r.info.version); }) ==
            ErrorCode::not_supported);
      CHECK(error_code_of([&] { (void)store->rotate(alice, next, r.info.version, successor); }) ==
            ErrorCode::not_supported);
      check_same_full_record(*store->find(r.info.public_key), r);
      CHECK_FALSE(store->find(successor.info.public_key));
      CHECK(ids_of(store->list(alice)) == ids({1}));
    }
  }

  SECTION("revoke_all revokes every unrevoked key of that account only") {
    store->insert(record(1, alice, 100));
    store->insert(policy_record(2, alice, 200));  // version 7
    store->insert(record(3, alice, 300));
    store->insert(record(4, alice, 400));
    store->insert(record(5, alice, 500));
    store->insert(record(10, bob, 100));
    store->insert(record(11, bob, 200));
    REQUIRE(store->set_status(alice, key_id(3), KeyStatus::revoked));
    REQUIRE(store->set_status(alice, key_id(4), KeyStatus::disabled));
    const auto before_all = store->list(alice);
    const auto bobs_before = store->list(bob);
    const std::uint64_t before = store->revision();

    const auto revoked = store->revoke_all(alice, at(9000));
    std::vector<apikeys::Uuid> got = ids_of(revoked);
    std::sort(got.begin(), got.end());
    CHECK(got == ids({1, 2, 4, 5}));
    for (const apikeys::KeyInfo& k : revoked) {
      CHECK(k.account_id == alice);
      CHECK(k.status == KeyStatus::revoked);
    }
    for (const apikeys::KeyInfo& was : before_all) {
      const auto now = store->get(alice, was.key_id);
      REQUIRE(now);
      CHECK(now->status == KeyStatus::revoked);
      CHECK(store->find(was.public_key)->info.status == KeyStatus::revoked);
      apikeys::KeyInfo want = was;
      if (was.status != KeyStatus::revoked) {
        want.status = KeyStatus::revoked;
        if (options.conditional_writes) {
          want.version = was.version + 1;
          want.updated_at = at(9000);
        } else {
          // The default revokes through set_status(), which keeps its own version rules.
          want.version = now->version;
          want.updated_at = now->updated_at;
        }
        const auto it =
            std::find_if(revoked.begin(), revoked.end(),
                         [&](const apikeys::KeyInfo& k) { return k.key_id == was.key_id; });
        REQUIRE(it != revoked.end());
        check_same_key(*it, want);
      }
      check_same_key(*now, want);  // an already revoked key is untouched
    }
    const auto bobs_after = store->list(bob);
    REQUIRE(bobs_after.size() == bobs_before.size());
    for (std::size_t i = 0; i < bobs_after.size(); ++i)
      check_same_key(bobs_after[i], bobs_before[i]);
    std::vector<std::string> changed;
    for (const auto& k : revoked) changed.push_back(k.public_key);
    check_logged(*store, before, changed);

    // Nothing left to revoke (and nothing changes); an account without keys.
    const auto settled = store->list(alice);
    CHECK(store->revoke_all(alice, at(10'000)).empty());
    const auto still = store->list(alice);
    REQUIRE(still.size() == settled.size());
    for (std::size_t i = 0; i < still.size(); ++i) check_same_key(still[i], settled[i]);
    CHECK(store->revoke_all(account_id(3), at(10'000)).empty());
  }

  SECTION("set_status adds 1 to the version only when the status changes") {
    const apikeys::KeyRecord r = record(1, alice);
    store->insert(r);
    const std::uint64_t before = store->revision();
    const auto disabled = store->set_status(alice, r.info.key_id, KeyStatus::disabled);
    REQUIRE(disabled);
    CHECK(disabled->status == KeyStatus::disabled);
    check_logged(*store, before, {r.info.public_key});
    const auto same = store->set_status(alice, r.info.key_id, KeyStatus::disabled);
    REQUIRE(same);
    if (options.conditional_writes) {
      CHECK(disabled->version == r.info.version + 1);
      CHECK(same->version == r.info.version + 1);
      CHECK(store->get(alice, r.info.key_id)->version == r.info.version + 1);
      CHECK(store->set_status(alice, r.info.key_id, KeyStatus::active)->version ==
            r.info.version + 2);
    }
  }

  if (options.digest_rewrites) {
    SECTION("replace_digests rewrites only an exact `from`, and touches nothing else") {
      const apikeys::KeyRecord a = policy_record(1, alice, 100);  // version 7
      apikeys::KeyRecord b = record(2, alice, 200);
      b.info.status = KeyStatus::disabled;
      b.info.last_used_at = at(300);
      store->insert(a);
      store->insert(b);
      const apikeys::KeyInfo a_before = *store->get(alice, a.info.key_id);
      const apikeys::KeyInfo b_before = *store->get(alice, b.info.key_id);
      const std::uint64_t before = store->revision();
      const apikeys::Digest to = digest(50, 2);

      // Other bytes under the same pepper, or the same bytes under another pepper: skipped.
      apikeys::Digest other_bytes = a.digest;
      other_bytes.bytes[31] ^= 0x01;
      apikeys::Digest other_pepper = a.digest;
      other_pepper.pepper_id = 2;
      CHECK(store->replace_digests({{a.info.key_id, other_bytes, to}}) == 0);
      CHECK(store->replace_digests({{a.info.key_id, other_pepper, to}}) == 0);
      // Another key's digest is not this key's, and an unknown key id is skipped.
      CHECK(store->replace_digests({{a.info.key_id, b.digest, to}}) == 0);
      CHECK(store->replace_digests({{key_id(99), a.digest, to}}) == 0);
      CHECK(store->replace_digests({}) == 0);
      check_same_full_record(*store->find(a.info.public_key), a);

      // The exact digest: rewritten, and find() returns the new one.
      CHECK(store->replace_digests({{a.info.key_id, a.digest, to}}) == 1);
      const auto found = store->find(a.info.public_key);
      REQUIRE(found);
      CHECK(found->digest.bytes == to.bytes);
      CHECK(found->digest.pepper_id == to.pepper_id);
      // Not the version, status, updated_at, last use or anything else; not the revision
      // nor the change log (the key's verdict did not change).
      check_same_key(found->info, a_before);
      check_same_key(*store->get(alice, a.info.key_id), a_before);
      check_same_full_record(*store->find(b.info.public_key), b);
      // A key that is not active is rewritten all the same, and stays as it is.
      CHECK(store->replace_digests({{b.info.key_id, b.digest, digest(51, 2)}}) == 1);
      const auto b_found = store->find(b.info.public_key);
      REQUIRE(b_found);
      CHECK(b_found->digest.bytes == digest(51, 2).bytes);
      CHECK(b_found->digest.pepper_id == 2);
      check_same_key(b_found->info, b_before);
      check_unlogged(*store, before);

      // Done once: the old digest no longer matches, so a second try is skipped.
      CHECK(store->replace_digests({{a.info.key_id, a.digest, digest(52, 3)}}) == 0);
      CHECK(store->find(a.info.public_key)->digest.bytes == to.bytes);
      CHECK(store->find(a.info.public_key)->digest.pepper_id == to.pepper_id);
      CHECK(ids_of(store->list(alice)) == ids({2, 1}));
      check_unlogged(*store, before);
    }

    SECTION("replace_digests: a mixed batch counts only what it rewrote") {
      for (std::uint32_t n = 1; n <= 5; ++n) store->insert(record(n, alice, n * 100));
      store->insert(record(6, bob, 600));
      REQUIRE(store->set_status(alice, key_id(3), KeyStatus::revoked));
      // Deleted after the change was queued: skipped, and not brought back.
      REQUIRE(store->remove(alice, key_id(4)));
      const auto infos_before = store->list(alice);
      const std::uint64_t before = store->revision();
      apikeys::Digest stale = record(5, alice).digest;
      stale.bytes[0] ^= 0x80;  // key 5 has changed digest meanwhile
      const std::vector<apikeys::DigestChange> batch{
          {key_id(1), record(1, alice).digest, digest(101, 9)},
          {key_id(4), record(4, alice).digest, digest(104, 9)},
          {key_id(2), record(2, alice).digest, digest(102, 9)},
          {key_id(5), stale, digest(105, 9)},
          {key_id(6), record(6, bob).digest, digest(106, 9)},
          {key_id(3), record(3, alice).digest, digest(103, 9)},
          {key_id(99), record(1, alice).digest, digest(199, 9)},
          {key_id(1), record(1, alice).digest, digest(101, 9)},  // a repeat: done already
      };
      CHECK(store->replace_digests(batch) == 4);
      for (const std::uint32_t n : {1U, 2U, 3U, 6U}) {
        const auto got = store->find(public_key(n));
        REQUIRE(got);
        CHECK(got->digest.bytes == digest(100 + n, 9).bytes);
        CHECK(got->digest.pepper_id == 9);
      }
      check_same_full_record(*store->find(public_key(5)), record(5, alice, 500));
      CHECK_FALSE(store->find(public_key(4)));
      CHECK_FALSE(store->get(alice, key_id(4)));
      CHECK(store->find(public_key(3))->info.status == KeyStatus::revoked);
      const auto infos_after = store->list(alice);
      REQUIRE(infos_after.size() == infos_before.size());
      for (std::size_t i = 0; i < infos_after.size(); ++i) {
        check_same_key(infos_after[i], infos_before[i]);
      }
      check_unlogged(*store, before);
    }

    SECTION("pepper_counts counts keys of every status per pepper id, ascending") {
      CHECK(store->pepper_counts().empty());
      const auto insert_under = [&](std::uint32_t n, std::uint32_t pepper_id,
                                    const apikeys::Uuid& account) {
        apikeys::KeyRecord r = record(n, account, n);
        r.digest.pepper_id = pepper_id;
        store->insert(r);
        return r;
      };
      constexpr std::uint32_t kLegacy = 0xFFFFFFFFu;  // sorts last, as an unsigned id
      const apikeys::KeyRecord legacy1 = insert_under(1, kLegacy, alice);
      insert_under(2, 1, alice);
      insert_under(3, kLegacy, bob);
      insert_under(4, 7, alice);
      insert_under(5, 1, bob);
      insert_under(6, kLegacy, alice);
      insert_under(7, 0, bob);
      REQUIRE(store->set_status(alice, key_id(6), KeyStatus::revoked));
      REQUIRE(store->set_status(alice, key_id(2), KeyStatus::disabled));
      const std::vector<std::pair<std::uint32_t, std::uint64_t>> want_inserted{
          {0, 1}, {1, 2}, {7, 1}, {kLegacy, 3}};
      CHECK(counts_of(store->pepper_counts()) == want_inserted);

      // A rewrite moves a key from one pepper to another.
      CHECK(store->replace_digests({{key_id(1), legacy1.digest, digest(201, 1)}}) == 1);
      const std::vector<std::pair<std::uint32_t, std::uint64_t>> want_rewritten{
          {0, 1}, {1, 3}, {7, 1}, {kLegacy, 2}};
      CHECK(counts_of(store->pepper_counts()) == want_rewritten);

      // A pepper no key holds any more is left out.
      REQUIRE(store->remove(alice, key_id(4)));
      REQUIRE(store->remove(bob, key_id(7)));
      const std::vector<std::pair<std::uint32_t, std::uint64_t>> want_removed{{1, 3}, {kLegacy, 2}};
      CHECK(counts_of(store->pepper_counts()) == want_removed);
    }
  } else {
    SECTION("replace_digests and pepper_counts throw not_supported and write nothing") {
      const apikeys::KeyRecord r = record(1, alice);
      store->insert(r);
      CHECK(error_code_of([&] {
              (void)store->replace_digests({{r.info.key_id, r.digest, digest(9, 2)}});
            }) == ErrorCode::not_supported);
      CHECK(error_code_of([&] { (void)store->pepper_counts(); }) == ErrorCode::not_supported);
      check_same_full_record(*store->find(r.info.public_key), r);
    }
  }

  SECTION("concurrent inserts and finds from 4 threads") {
    constexpr std::uint32_t kThreads = 4;
    constexpr std::uint32_t kPerThread = 50;
    std::atomic<int> failures{0};
    std::atomic<int> misses{0};
    std::vector<std::thread> threads;
    for (std::uint32_t t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const apikeys::Uuid account = account_id(static_cast<std::uint8_t>(10 + t));
        try {
          for (std::uint32_t i = 0; i < kPerThread; ++i) {
            const std::uint32_t n = 1000 * (t + 1) + i;
            store->insert(record(n, account, i));
            auto got = store->find(public_key(n));
            if (!got || got->info.key_id != key_id(n)) ++misses;
            // Read another thread's range too: present or not, never an error.
            (void)store->find(public_key(1000 * ((t + 1) % kThreads + 1) + i));
            if (i % 10 == 0) (void)store->list(account);
          }
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures.load() == 0);
    CHECK(misses.load() == 0);
    for (std::uint32_t t = 0; t < kThreads; ++t) {
      const auto keys = store->list(account_id(static_cast<std::uint8_t>(10 + t)));
      REQUIRE(keys.size() == kPerThread);
      CHECK(keys.front().key_id == key_id(1000 * (t + 1) + kPerThread - 1));
    }
  }

  run_admission_sections(store, options);
}

/// The change log of a store that keeps one (Store::changes_since): every change (revoke,
/// delete, replace, rotate, revoke_all) after a revision is named, in order, and a revision the log
/// cannot answer for is refused rather than answered with a partial list. `log_size` is how many
/// changes the store promises to keep.
inline void run_change_log_contract(const StoreFactory& make, std::uint64_t log_size) {
  using apikeys::KeyStatus;
  using namespace contract;
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);
  std::shared_ptr<apikeys::Store> store = make();
  for (std::uint32_t n = 1; n <= 3; ++n) store->insert(record(n, alice));
  const std::uint64_t r0 = store->revision();

  SECTION("every revoke and delete after a revision, oldest first") {
    REQUIRE_FALSE(store->set_status(bob, key_id(1), KeyStatus::revoked));  // not bob's: no change
    REQUIRE(store->set_status(alice, key_id(1), KeyStatus::revoked));
    REQUIRE(store->remove(alice, key_id(2)));
    const std::uint64_t r1 = store->revision();
    REQUIRE(r1 == r0 + 2);

    const auto all = store->changes_since(r0);
    REQUIRE(all);
    CHECK(all->revision == r1);
    CHECK(all->public_keys == std::vector<std::string>{public_key(1), public_key(2)});
    const auto last = store->changes_since(r0 + 1);
    REQUIRE(last);
    CHECK(last->public_keys == std::vector<std::string>{public_key(2)});
    const auto none = store->changes_since(r1);
    REQUIRE(none);
    CHECK(none->revision == r1);
    CHECK(none->public_keys.empty());
    // A revision the store never reached (a validator that saw a newer backup).
    CHECK_FALSE(store->changes_since(r1 + 1));
  }

  SECTION("every replace, rotate and revoke_all is logged; a write that did nothing is not") {
    // replace: the key, once.
    apikeys::KeyInfo next = *store->get(alice, key_id(1));
    next.title = "renamed";
    next.updated_at = at(1000);
    REQUIRE(store->replace(alice, next, next.version).outcome == apikeys::WriteOutcome::applied);
    const std::uint64_t r1 = store->revision();
    CHECK(r1 > r0);
    const auto replaced = store->changes_since(r0);
    REQUIRE(replaced);
    CHECK(replaced->revision == r1);
    CHECK(replaced->public_keys == std::vector<std::string>{public_key(1)});

    // Nothing written, nothing logged: a stale version, another account, no such key.
    CHECK(store->replace(alice, next, next.version).outcome == apikeys::WriteOutcome::conflict);
    CHECK(store->replace(bob, next, next.version + 1).outcome == apikeys::WriteOutcome::not_found);
    CHECK(store->rotate(alice, next, next.version, record(9, alice)).outcome ==
          apikeys::WriteOutcome::conflict);
    CHECK(store->revision() == r1);

    // rotate: the old key (the successor may be named too: it is new).
    apikeys::KeyRecord successor = record(4, alice, 2000);
    successor.info.rotated_from = key_id(2);
    apikeys::KeyInfo old_next = *store->get(alice, key_id(2));
    old_next.rotated_to = key_id(4);
    old_next.expires_at = at(3000);
    old_next.updated_at = at(2000);
    REQUIRE(store->rotate(alice, old_next, old_next.version, successor).outcome ==
            apikeys::WriteOutcome::applied);
    const std::uint64_t r2 = store->revision();
    CHECK(r2 > r1);
    const auto rotated = store->changes_since(r1);
    REQUIRE(rotated);
    CHECK(rotated->revision == r2);
    CHECK(contains(rotated->public_keys, public_key(2)));
    for (const std::string& key : rotated->public_keys) {
      CHECK((key == public_key(2) || key == public_key(4)));
    }

    // revoke_all: every key it revoked, and only those.
    store->insert(record(5, bob));
    const std::uint64_t r3 = store->revision();
    REQUIRE(store->revoke_all(alice, at(4000)).size() == 4);
    const std::uint64_t r4 = store->revision();
    CHECK(r4 > r3);
    const auto revoked = store->changes_since(r3);
    REQUIRE(revoked);
    CHECK(revoked->revision == r4);
    std::vector<std::string> named = revoked->public_keys;
    std::sort(named.begin(), named.end());
    named.erase(std::unique(named.begin(), named.end()), named.end());
    CHECK(named ==
          std::vector<std::string>{public_key(1), public_key(2), public_key(3), public_key(4)});
    CHECK(store->revoke_all(alice, at(5000)).empty());
    CHECK(store->revision() == r4);

    // And all of it, oldest first, from the start.
    const auto all = store->changes_since(r0);
    REQUIRE(all);
    REQUIRE_FALSE(all->public_keys.empty());
    CHECK(all->public_keys.front() == public_key(1));
  }

  SECTION("a revision older than the log reaches is refused, not answered in part") {
    for (std::uint64_t i = 0; i <= log_size; ++i) {
      REQUIRE(store->set_status(alice, key_id(3), KeyStatus::revoked));
    }
    const std::uint64_t r1 = store->revision();
    REQUIRE(r1 == r0 + log_size + 1);
    CHECK_FALSE(store->changes_since(r0));
    const auto kept = store->changes_since(r1 - log_size);
    REQUIRE(kept);
    CHECK(kept->public_keys.size() == log_size);
    CHECK(kept->public_keys.back() == public_key(3));
  }
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_STORE_CONTRACT_HPP
