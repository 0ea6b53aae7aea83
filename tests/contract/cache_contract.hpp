// The apikeys::Cache contract suite: what every verdict cache (MemoryCache, RedisCache,
// a user's own) must do, as cache.hpp states it: hits keyed by the public key and the
// full presented digest, whole verdicts (the key's scopes, metadata, has_policy, lineage,
// rate limits, has_credits and has_admission included), lock-out safety, erase/clear,
// the fill-token protocol that closes the revoke/fill race, TTLs in real time, and use
// from several threads. Call run_cache_contract(factory) from a TEST_CASE; the factory
// returns a new, empty cache each time (each SECTION calls it once).
// Thread-safety: the suite drives threads only in its concurrency section.
// Ownership: caches are held through std::shared_ptr, as the library holds them.
#ifndef APIKEYS_TESTS_CACHE_CONTRACT_HPP
#define APIKEYS_TESTS_CACHE_CONTRACT_HPP

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "apikeys/cache.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "test_support.hpp"

namespace apikeys_test {

using CacheFactory = std::function<std::shared_ptr<apikeys::Cache>()>;

/// How hard the suite pushes a backend: a networked cache gets fewer rounds.
struct CacheContractOptions {
  int concurrency_rounds = 20'000;  ///< Operations per thread in the concurrency section.
  bool stores_not_found = true;     ///< False: a not_found put may be dropped (a miss).
};

namespace cache_contract {

inline apikeys::Digest digest_of(std::uint32_t seed) {
  apikeys::Digest d;
  for (std::size_t i = 0; i < d.bytes.size(); ++i) {
    d.bytes[i] = static_cast<std::uint8_t>((seed >> (8 * (i % 4))) + 31 * i);
  }
  d.pepper_id = 1;
  return d;
}

inline apikeys::Verdict valid_verdict(std::uint8_t n) {
  apikeys::Verdict v;
  v.code = apikeys::ValidationCode::valid;
  v.account_id = account_id(n);
  std::array<std::uint8_t, 16> key{};
  key[0] = n;
  key[6] = 0x40;
  key[8] = 0x80;
  v.key_id = apikeys::Uuid(key);
  return v;
}

inline apikeys::Verdict negative(apikeys::ValidationCode code) {
  apikeys::Verdict v;
  v.code = code;
  return v;
}

inline bool same(const apikeys::Verdict& a, const apikeys::Verdict& b) {
  return a.code == b.code && a.account_id == b.account_id && a.key_id == b.key_id;
}

/// Every field of the Verdict, the key's policy and admission fields included.
/// expires_at to the millisecond (what the bundled caches keep).
inline bool identical(const apikeys::Verdict& a, const apikeys::Verdict& b) {
  const auto ms = [](const std::optional<apikeys::TimePoint>& t) {
    return t ? std::optional<std::int64_t>(apikeys::to_unix_millis(*t)) : std::nullopt;
  };
  return same(a, b) && ms(a.expires_at) == ms(b.expires_at) && a.scopes == b.scopes &&
         a.metadata == b.metadata && a.has_policy == b.has_policy && a.lineage_id == b.lineage_id &&
         a.rate_limits == b.rate_limits && a.has_credits == b.has_credits &&
         a.has_admission == b.has_admission;
}

/// `n` scopes of `length` characters each (at least 4), sorted, following the scope
/// grammar: "NN" + 'x's, '.', then 'y's.
inline std::vector<std::string> long_scopes(std::size_t n, std::size_t length) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) {
    std::string s = std::to_string(100 + i).substr(1);  // "00", "01", ...
    const std::size_t rest = length - 3;
    s += std::string(rest / 2, 'x') + "." + std::string(rest - rest / 2, 'y');
    out.push_back(std::move(s));
  }
  return out;
}

/// A JSON object of exactly `bytes` bytes (at least 16), with two-byte UTF-8 characters
/// in it: {"note":"é...é...."}.
inline std::string metadata_of(std::size_t bytes) {
  std::string m = "{\"note\":\"";
  const std::size_t body = bytes - m.size() - 2;
  for (std::size_t i = 0; i < body / 2; ++i) m += i % 3 == 0 ? "\xc3\xa9" : "ab";
  if (body % 2 != 0) m += 'z';
  return m + "\"}";
}

/// valid_verdict(n) with the key's policy: a few scopes (a wildcard among them),
/// metadata and an expiry.
inline apikeys::Verdict policy_verdict(std::uint8_t n) {
  apikeys::Verdict v = valid_verdict(n);
  v.scopes = {"billing:read", "orders.*", "reports.**", "users.read"};
  v.metadata = "{\"team\":\"payments\",\"tier\":" + std::to_string(n) + "}";
  v.expires_at = apikeys::from_unix_millis(4'102'444'800'123);  // 2100-01-01, with ms
  v.has_policy = true;
  return v;
}

/// A rate limit named `name`.
inline apikeys::RateLimit rate_limit(std::string name, std::uint64_t limit,
                                     std::chrono::milliseconds period, std::uint64_t burst = 0) {
  apikeys::RateLimit l;
  l.name = std::move(name);
  l.limit = limit;
  l.period = period;
  l.burst = burst;
  return l;
}

/// policy_verdict(n) with admission fields as the Validator puts them for a key that was
/// never rotated (lineage = key id): two rate limits, credits, has_admission.
inline apikeys::Verdict admission_verdict(std::uint8_t n) {
  apikeys::Verdict v = policy_verdict(n);
  v.lineage_id = v.key_id;
  v.rate_limits = {rate_limit("daily.quota_1", 1'000'000'000, std::chrono::hours(24), 5),
                   rate_limit("per-second", 20, std::chrono::milliseconds(1000))};
  v.has_credits = true;
  v.has_admission = true;
  return v;
}

/// A public key of the default shape ("pk_" + 32 characters), unique per n.
inline std::string pk(std::size_t n) {
  const std::string digits = std::to_string(n);
  return "pk_" + std::string(32 - digits.size(), 'C') + digits;
}

/// put() with a fresh token, the way the Validator fills.
inline void fill(apikeys::Cache& c, const std::string& key, const apikeys::Digest& d,
                 const apikeys::Verdict& v, std::chrono::milliseconds ttl) {
  const std::uint64_t token = c.fill_token(key);
  c.put(key, d, v, ttl, token);
}

}  // namespace cache_contract

/// Runs the whole Cache contract against caches made by `make`.
inline void run_cache_contract(const CacheFactory& make, CacheContractOptions options = {}) {
  using apikeys::ValidationCode;
  using namespace cache_contract;
  using std::chrono::milliseconds;

  std::shared_ptr<apikeys::Cache> cache = make();
  REQUIRE(cache != nullptr);
  apikeys::Cache& c = *cache;
  const milliseconds minute(60'000);
  const std::string key = pk(1);
  const apikeys::Digest d = digest_of(1);

  SECTION("an empty cache misses") {
    CHECK_FALSE(c.get(key, d).has_value());
    CHECK_FALSE(c.get(pk(2), digest_of(2)).has_value());
  }

  SECTION("get after put returns the verdict; other public keys miss") {
    fill(c, key, d, valid_verdict(1), minute);
    const auto got = c.get(key, d);
    REQUIRE(got.has_value());
    CHECK(same(*got, valid_verdict(1)));
    CHECK_FALSE(c.get(pk(2), d).has_value());
    CHECK_FALSE(c.get(key + "x", d).has_value());
    CHECK_FALSE(c.get(key.substr(0, key.size() - 1), d).has_value());
  }

  SECTION("get returns the key's policy as put stored it: scopes, metadata, has_policy") {
    const apikeys::Verdict v = policy_verdict(1);
    fill(c, key, d, v, minute);
    const auto got = c.get(key, d);
    REQUIRE(got.has_value());
    CHECK(identical(*got, v));
    CHECK(got->scopes ==
          std::vector<std::string>{"billing:read", "orders.*", "reports.**", "users.read"});
  }

  SECTION("a key with no scopes and no metadata keeps has_policy") {
    // What the Validator puts for most keys: has_policy true, nothing else.
    apikeys::Verdict v = valid_verdict(1);
    v.has_policy = true;
    fill(c, key, d, v, minute);
    const auto got = c.get(key, d);
    REQUIRE(got.has_value());
    CHECK(identical(*got, v));
    CHECK(got->has_policy);
    // And a verdict without it comes back without it.
    fill(c, pk(2), digest_of(2), valid_verdict(2), minute);
    const auto old = c.get(pk(2), digest_of(2));
    REQUIRE(old.has_value());
    CHECK(identical(*old, valid_verdict(2)));
    CHECK_FALSE(old->has_policy);
  }

  SECTION("get returns the key's lineage, rate limits and has_credits as put stored them") {
    const apikeys::Verdict v = admission_verdict(1);
    fill(c, key, d, v, minute);
    const auto got = c.get(key, d);
    REQUIRE(got.has_value());
    CHECK(identical(*got, v));
    CHECK(got->lineage_id == v.key_id);
    CHECK(got->rate_limits.size() == 2);
    CHECK(got->has_credits);
    CHECK(got->has_admission);
    SECTION("a rotated key's lineage, no credits") {
      apikeys::Verdict rotated = admission_verdict(2);
      rotated.lineage_id = valid_verdict(3).key_id;
      rotated.has_credits = false;
      fill(c, pk(2), digest_of(2), rotated, minute);
      const auto r = c.get(pk(2), digest_of(2));
      REQUIRE(r.has_value());
      CHECK(identical(*r, rotated));
      CHECK(r->lineage_id == valid_verdict(3).key_id);
      CHECK_FALSE(r->has_credits);
    }
    SECTION("credits only, no policy, no rate limits") {
      apikeys::Verdict credits = valid_verdict(4);
      credits.has_policy = true;
      credits.lineage_id = credits.key_id;
      credits.has_credits = true;
      credits.has_admission = true;
      fill(c, pk(4), digest_of(4), credits, minute);
      const auto r = c.get(pk(4), digest_of(4));
      REQUIRE(r.has_value());
      CHECK(identical(*r, credits));
    }
    SECTION("the most rate limits a key may have, with the longest names") {
      apikeys::Verdict many = admission_verdict(5);
      many.rate_limits.clear();
      for (std::size_t i = 0; i < apikeys::KeyPolicyLimits::kMaxRateLimits; ++i) {
        std::string name = std::to_string(10 + i) + std::string(62, 'n');
        many.rate_limits.push_back(rate_limit(std::move(name), 1 + i * 60'000'000,
                                              std::chrono::milliseconds(1000 + i * 5'000'000),
                                              i % 2 == 0 ? 0 : 1'000'000'000 - i));
      }
      REQUIRE(many.rate_limits.front().name.size() == 64);
      fill(c, pk(5), digest_of(5), many, minute);
      const auto r = c.get(pk(5), digest_of(5));
      REQUIRE(r.has_value());
      CHECK(identical(*r, many));
    }
  }

  SECTION("the largest policy round-trips: 64 scopes of 128 characters, 4 KiB of metadata") {
    apikeys::Verdict v = valid_verdict(1);
    v.scopes = long_scopes(64, 128);
    v.metadata = metadata_of(4096);
    v.has_policy = true;
    REQUIRE(v.scopes.back().size() == 128);
    REQUIRE(v.metadata.size() == 4096);
    fill(c, key, d, v, minute);
    const auto got = c.get(key, d);
    REQUIRE(got.has_value());
    CHECK(identical(*got, v));
    SECTION("scopes only") {
      v.metadata.clear();
      fill(c, pk(2), digest_of(2), v, minute);
      const auto s = c.get(pk(2), digest_of(2));
      REQUIRE(s.has_value());
      CHECK(identical(*s, v));
    }
    SECTION("metadata only") {
      v.scopes.clear();
      fill(c, pk(3), digest_of(3), v, minute);
      const auto m = c.get(pk(3), digest_of(3));
      REQUIRE(m.has_value());
      CHECK(identical(*m, v));
    }
  }

  SECTION("a later put replaces the policy too, and a negative verdict carries none") {
    fill(c, key, d, policy_verdict(1), minute);
    apikeys::Verdict fewer = valid_verdict(1);
    fewer.scopes = {"orders.read"};
    fewer.has_policy = true;
    fill(c, key, d, fewer, minute);
    const auto v = c.get(key, d);
    REQUIRE(v.has_value());
    CHECK(identical(*v, fewer));
    fill(c, key, d, negative(ValidationCode::disabled), minute);
    const auto n = c.get(key, d);
    REQUIRE(n.has_value());
    CHECK(identical(*n, negative(ValidationCode::disabled)));
  }

  SECTION("every negative code is stored and returned as is") {
    for (ValidationCode code : {ValidationCode::not_found, ValidationCode::wrong_secret,
                                ValidationCode::expired, ValidationCode::revoked}) {
      const std::string other = pk(100 + static_cast<std::size_t>(code));
      const apikeys::Digest od = digest_of(100u + static_cast<std::uint32_t>(code));
      fill(c, other, od, negative(code), minute);
      const auto v = c.get(other, od);
      if (code == ValidationCode::not_found && !options.stores_not_found && !v.has_value())
        continue;
      REQUIRE(v.has_value());
      CHECK(v->code == code);
    }
  }

  SECTION("a later put for the same secret replaces the verdict") {
    fill(c, key, d, valid_verdict(1), minute);
    fill(c, key, d, negative(ValidationCode::revoked), minute);
    const auto v = c.get(key, d);
    REQUIRE(v.has_value());
    CHECK(v->code == ValidationCode::revoked);
  }

  SECTION("a TTL of zero or less stores nothing and displaces nothing") {
    fill(c, key, d, valid_verdict(1), milliseconds(0));
    CHECK_FALSE(c.get(key, d).has_value());
    fill(c, key, d, valid_verdict(1), milliseconds(-5));
    CHECK_FALSE(c.get(key, d).has_value());
    const apikeys::Digest d2 = digest_of(2);
    fill(c, key, d2, valid_verdict(2), minute);
    fill(c, key, d, negative(ValidationCode::wrong_secret), milliseconds(0));
    const auto v = c.get(key, d2);
    REQUIRE(v.has_value());
    CHECK(same(*v, valid_verdict(2)));
  }

  SECTION("a huge TTL is accepted (\"forever\")") {
    fill(c, key, d, negative(ValidationCode::revoked), milliseconds::max());
    const auto v = c.get(key, d);
    REQUIRE(v.has_value());
    CHECK(v->code == ValidationCode::revoked);
  }

  SECTION("verdicts expire after their TTL (real time)") {
    fill(c, key, d, valid_verdict(1), milliseconds(800));
    CHECK(c.get(key, d).has_value());
    std::this_thread::sleep_for(milliseconds(1200));
    CHECK_FALSE(c.get(key, d).has_value());
    fill(c, key, d, valid_verdict(1), minute);  // and a new put is served again
    CHECK(c.get(key, d).has_value());
  }

  SECTION("a verdict answers only the same presented digest, all 32 bytes and pepper id") {
    fill(c, key, d, valid_verdict(1), minute);
    CHECK_FALSE(c.get(key, digest_of(2)).has_value());
    for (std::size_t i : {std::size_t{0}, std::size_t{8}, std::size_t{16}, std::size_t{31}}) {
      apikeys::Digest other = d;
      other.bytes[i] ^= 0x01;
      CHECK_FALSE(c.get(key, other).has_value());
    }
    apikeys::Digest other_pepper = d;
    other_pepper.pepper_id = 2;
    CHECK_FALSE(c.get(key, other_pepper).has_value());
    CHECK(c.get(key, d).has_value());
  }

  SECTION("a negative verdict for one secret never answers another (no lock-out)") {
    fill(c, key, digest_of(20), negative(ValidationCode::wrong_secret), minute);
    const auto same_secret = c.get(key, digest_of(20));
    REQUIRE(same_secret.has_value());
    CHECK(same_secret->code == ValidationCode::wrong_secret);
    CHECK_FALSE(c.get(key, digest_of(21)).has_value());
  }

  SECTION("guessed secrets for a known public key never displace the owner's valid verdict") {
    const apikeys::Digest good = digest_of(1);
    fill(c, key, good, valid_verdict(1), minute);
    for (std::uint32_t guess = 100; guess < 140; ++guess) {
      fill(c, key, digest_of(guess), negative(ValidationCode::wrong_secret), milliseconds(300'000));
      const auto g = c.get(key, digest_of(guess));
      if (g.has_value()) CHECK(g->code == ValidationCode::wrong_secret);
    }
    fill(c, key, digest_of(200), negative(ValidationCode::not_found), milliseconds(300'000));
    const auto v = c.get(key, good);
    REQUIRE(v.has_value());
    CHECK(same(*v, valid_verdict(1)));
    const auto g = c.get(key, digest_of(200));
    if (g.has_value()) CHECK(g->code != ValidationCode::valid);
  }

  SECTION("erase removes every verdict for the public key, and only for it") {
    fill(c, key, digest_of(2), negative(ValidationCode::wrong_secret), minute);
    fill(c, key, d, valid_verdict(1), minute);
    fill(c, pk(2), digest_of(2), valid_verdict(2), minute);
    REQUIRE(c.get(key, d).has_value());
    c.erase(key);
    CHECK_FALSE(c.get(key, d).has_value());
    CHECK_FALSE(c.get(key, digest_of(2)).has_value());
    const auto o = c.get(pk(2), digest_of(2));
    REQUIRE(o.has_value());
    CHECK(same(*o, valid_verdict(2)));
    REQUIRE_NOTHROW(c.erase(pk(999)));  // absent: harmless
    REQUIRE_NOTHROW(c.erase(key));
    CHECK(c.get(pk(2), digest_of(2)).has_value());
  }

  SECTION("clear removes every verdict") {
    fill(c, key, d, valid_verdict(1), minute);
    fill(c, pk(2), digest_of(2), valid_verdict(2), minute);
    c.clear();
    CHECK_FALSE(c.get(key, d).has_value());
    CHECK_FALSE(c.get(pk(2), digest_of(2)).has_value());
    fill(c, key, d, valid_verdict(1), minute);  // usable afterwards
    CHECK(c.get(key, d).has_value());
  }

  SECTION("fill tokens: a token taken before erase() is dropped at put()") {
    const std::uint64_t token = c.fill_token(key);   // the validation read the store ...
    c.erase(key);                                    // ... a revoke committed and erased ...
    c.put(key, d, valid_verdict(1), minute, token);  // ... the stale verdict must not land
    CHECK_FALSE(c.get(key, d).has_value());
  }

  SECTION("fill tokens: dropped even if an entry existed") {
    fill(c, key, d, valid_verdict(1), minute);
    const std::uint64_t token = c.fill_token(key);
    c.erase(key);
    c.put(key, d, valid_verdict(1), minute, token);
    CHECK_FALSE(c.get(key, d).has_value());
  }

  SECTION("fill tokens: a token taken before clear() is dropped at put()") {
    const std::uint64_t token = c.fill_token(key);
    c.clear();
    c.put(key, d, valid_verdict(1), minute, token);
    CHECK_FALSE(c.get(key, d).has_value());
  }

  SECTION("fill tokens: one erase invalidates every outstanding token for the key") {
    const std::uint64_t t1 = c.fill_token(key);
    const std::uint64_t t2 = c.fill_token(key);
    c.erase(key);
    c.put(key, d, valid_verdict(1), minute, t1);
    c.put(key, digest_of(2), valid_verdict(1), minute, t2);
    CHECK_FALSE(c.get(key, d).has_value());
    CHECK_FALSE(c.get(key, digest_of(2)).has_value());
  }

  SECTION("fill tokens: a token taken after erase() or clear() works") {
    c.erase(key);
    fill(c, key, d, valid_verdict(1), minute);
    const auto v = c.get(key, d);
    REQUIRE(v.has_value());
    CHECK(same(*v, valid_verdict(1)));
    c.clear();
    fill(c, key, d, valid_verdict(1), minute);
    CHECK(c.get(key, d).has_value());
  }

  SECTION("fill tokens: an erase long after the token was taken still invalidates it") {
    const std::uint64_t token = c.fill_token(key);
    for (std::size_t i = 2; i < 200; ++i) {
      fill(c, pk(i), digest_of(static_cast<std::uint32_t>(i)), valid_verdict(2), minute);
      c.erase(pk(i));
    }
    c.erase(key);
    c.put(key, d, valid_verdict(1), minute, token);
    CHECK_FALSE(c.get(key, d).has_value());
  }

  SECTION("fill tokens: a dropped put does not remove what a later fill stored") {
    const std::uint64_t stale = c.fill_token(key);
    c.erase(key);
    fill(c, key, d, negative(ValidationCode::revoked), minute);
    c.put(key, d, valid_verdict(1), minute, stale);
    const auto v = c.get(key, d);
    REQUIRE(v.has_value());
    CHECK(v->code == ValidationCode::revoked);
  }

  SECTION("concurrent get/put/erase/clear from 4 threads never return a wrong verdict") {
    constexpr std::size_t kKeys = 128;
    const int rounds = options.concurrency_rounds;
    std::atomic<std::size_t> wrong{0};
    std::atomic<std::size_t> hits{0};
    std::atomic<std::size_t> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t]() {
        try {
          std::uint32_t x = 12345u + static_cast<std::uint32_t>(t) * 7919u;
          for (int r = 0; r < rounds; ++r) {
            x = x * 1664525u + 1013904223u;
            const std::size_t i = (x >> 8) % kKeys;
            const std::string k = pk(i);
            const apikeys::Digest kd = digest_of(static_cast<std::uint32_t>(i));
            // Half the keys carry a policy, so entries with and without one mix.
            const apikeys::Verdict expected =
                i % 2 == 0 ? valid_verdict(static_cast<std::uint8_t>(i % 251))
                           : policy_verdict(static_cast<std::uint8_t>(i % 251));
            switch ((x >> 4) % 8) {
              case 0: c.erase(k); break;
              case 1:
                if (r % 500 == 0) c.clear();
                break;
              case 2:
              case 3: fill(c, k, kd, expected, minute); break;
              default: {
                const auto v = c.get(k, kd);
                if (v.has_value()) {
                  ++hits;
                  if (!identical(*v, expected)) ++wrong;
                }
                if (c.get(k, digest_of(static_cast<std::uint32_t>(i) + 100'000u)).has_value())
                  ++wrong;
                break;
              }
            }
          }
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures.load() == 0);
    CHECK(wrong.load() == 0);
    CHECK(hits.load() > 0);
  }
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_CACHE_CONTRACT_HPP
