// RedisCache against a real server (APIKEYS_TEST_REDIS): the shared Cache contract with
// and without the in-process tier; what Redis holds (no secret, full digests, a bound
// per key, erase removes every verdict); cross-instance fill tokens and pub/sub
// invalidation; the revoke/fill race through a Validator; faults (Redis restarting
// mid-run, Redis down: validation falls back to the store and recovers); the password
// (never in a message, wiped when the cache dies). Skipped with a message when no
// server is configured (a failure under APIKEYS_REQUIRE_SERVERS=1).
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "alloc_probe.hpp"
#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/redis_cache.hpp"
#include "apikeys/validation_code.hpp"
#include "apikeys/validator.hpp"
#include "cache_contract.hpp"
#include "catch.hpp"
#include "redis_test_client.hpp"
#include "server_support.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::ErrorCode;
using apikeys::RedisCache;
using apikeys::RedisCacheOptions;
using apikeys::ValidationCode;
using apikeys_test::cache_contract::digest_of;
using apikeys_test::cache_contract::fill;
using apikeys_test::cache_contract::negative;
using apikeys_test::cache_contract::pk;
using apikeys_test::cache_contract::valid_verdict;
using std::chrono::milliseconds;

namespace {

using Inspector = apikeys_test::RedisTestClient;
using PrefixJanitor = apikeys_test::RedisJanitor;

RedisCacheOptions options_for(const apikeys_test::RedisAddress& a, const std::string& prefix,
                              bool local) {
  RedisCacheOptions o;
  o.host = a.host;
  o.port = a.port;
  o.prefix = prefix;
  o.local_tier = local;
  o.heartbeat_interval = milliseconds(200);
  o.retry_interval = milliseconds(200);
  return o;
}

apikeys::ValidatorOptions validator_options(std::shared_ptr<apikeys::Cache> cache) {
  apikeys::ValidatorOptions o;
  o.cache = std::move(cache);
  o.revision_poll_interval = milliseconds(0);  // invalidation comes through Redis here
  o.record_last_use = false;
  return o;
}

// A KeyManager over an InstrumentedStore, with a RedisCache (in-process tier on) under a
// prefix of its own that is dropped at the end: one node of a deployment.
struct Node {
  explicit Node(const apikeys_test::RedisAddress& redis)
      : janitor{redis, {}},
        cache(std::make_shared<RedisCache>(options_for(redis, janitor.make(), true))),
        manager(store, apikeys_test::hasher(), options(cache)) {}

  static apikeys::KeyManagerOptions options(std::shared_ptr<apikeys::Cache> cache) {
    apikeys::KeyManagerOptions mo;
    mo.validation = validator_options(std::move(cache));
    return mo;
  }

  PrefixJanitor janitor;
  std::shared_ptr<apikeys_test::InstrumentedStore> store =
      std::make_shared<apikeys_test::InstrumentedStore>();
  std::shared_ptr<RedisCache> cache;
  apikeys::KeyManager manager;
};

}  // namespace

using apikeys_test::hasher;
using apikeys_test::request;

TEST_CASE("RedisCache satisfies the Cache contract (Redis only)", "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  apikeys_test::CacheContractOptions o;
  o.concurrency_rounds = 1'500;
  o.stores_not_found = false;  // never written to Redis, and there is no local tier here
  apikeys_test::run_cache_contract(
      [&] { return std::make_shared<RedisCache>(options_for(*redis, janitor.make(), false)); }, o);
}

TEST_CASE("RedisCache satisfies the Cache contract (with the in-process tier)",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  apikeys_test::CacheContractOptions o;
  o.concurrency_rounds = 1'500;
  apikeys_test::run_cache_contract(
      [&] {
        auto c = std::make_shared<RedisCache>(options_for(*redis, janitor.make(), true));
        REQUIRE(apikeys_test::eventually([&] { return c->local_tier_live(); }));
        return c;
      },
      o);
}

TEST_CASE("RedisCache: options are checked, and a server that is down is not a constructor error",
          "[servers][redis][cache]") {
  RedisCacheOptions bad;
  bad.host = "";
  CHECK_THROWS_AS(RedisCache(bad), apikeys::Error);
  bad = RedisCacheOptions{};
  bad.port = 0;
  CHECK_THROWS_AS(RedisCache(bad), apikeys::Error);
  bad = RedisCacheOptions{};
  bad.pool_size = 0;
  CHECK_THROWS_AS(RedisCache(bad), apikeys::Error);
  bad = RedisCacheOptions{};
  bad.prefix = std::string(300, 'p');
  CHECK_THROWS_AS(RedisCache(bad), apikeys::Error);

  RedisCacheOptions nowhere;
  nowhere.host = "127.0.0.1";
  nowhere.port = 1;  // nothing listens there
  RedisCache cache(nowhere);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    (void)cache.get(pk(1), digest_of(1));
    FAIL("get succeeded without a server");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
  try {
    cache.erase(pk(1));
    FAIL("erase succeeded without a server");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  CHECK_FALSE(cache.local_tier_live());
}

TEST_CASE("RedisCache: what Redis holds", "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  auto cache = std::make_shared<RedisCache>(options_for(*redis, prefix, false));
  Inspector inspect(*redis);

  SECTION("no secret in any key or value, only the public key and the digest's hex") {
    auto store = std::make_shared<apikeys::MemoryStore>();
    apikeys::KeyManagerOptions mo;
    mo.validation = validator_options(cache);
    apikeys::KeyManager manager(store, hasher(), mo);
    const auto key = manager.create(apikeys_test::account_id(1), request("inspected"));
    const std::string secret(key.secret_key.reveal());
    REQUIRE(manager.validate(key.info.public_key, secret).ok());
    std::string wrong = secret;
    wrong.back() = wrong.back() == 'A' ? 'B' : 'A';
    REQUIRE(manager.validate(key.info.public_key, wrong).code == ValidationCode::wrong_secret);
    REQUIRE(manager.validate(key.info.public_key, secret).ok());  // a hit now

    const auto all = inspect.dump(prefix);
    CHECK(all.size() >= 3);  // epoch, index, two verdicts
    std::size_t verdicts = 0;
    const std::string body = secret.substr(3);  // without "sk_"
    for (const auto& [k, v] : all) {
      INFO("key " << k);
      CHECK(k.rfind(prefix, 0) == 0);
      CHECK(k.find(body) == std::string::npos);
      CHECK(v.find(body) == std::string::npos);
      CHECK(k.find(wrong.substr(3)) == std::string::npos);
      if (k.find(":v:") != std::string::npos) {
        ++verdicts;
        CHECK(k.find(key.info.public_key) != std::string::npos);
        CHECK(k.size() >= 72);  // the full 32-byte digest in hex, plus the pepper id
      }
    }
    CHECK(verdicts == 2);
  }

  SECTION("several verdicts per public key coexist, and erase removes every one") {
    fill(*cache, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    for (std::uint32_t g = 2; g < 6; ++g) {
      fill(*cache, pk(1), digest_of(g), negative(ValidationCode::wrong_secret),
           milliseconds(60'000));
    }
    for (std::uint32_t g = 1; g < 6; ++g) CHECK(cache->get(pk(1), digest_of(g)).has_value());
    cache->erase(pk(1));
    for (std::uint32_t g = 1; g < 6; ++g) CHECK_FALSE(cache->get(pk(1), digest_of(g)).has_value());
    for (const auto& k : inspect.keys(prefix)) CHECK(k.find(":v:") == std::string::npos);
  }

  SECTION("guessing secrets cannot grow Redis without bound, nor evict the owner") {
    RedisCacheOptions o = options_for(*redis, prefix, false);
    o.max_verdicts_per_key = 8;
    RedisCache bounded(o);
    fill(bounded, pk(2), digest_of(1), valid_verdict(1), milliseconds(60'000));
    for (std::uint32_t g = 100; g < 200; ++g) {
      fill(bounded, pk(2), digest_of(g), negative(ValidationCode::wrong_secret),
           milliseconds(60'000));
    }
    std::size_t verdicts = 0;
    for (const auto& k : inspect.keys(prefix)) {
      if (k.find(":v:") != std::string::npos && k.find(pk(2)) != std::string::npos) ++verdicts;
    }
    CHECK(verdicts <= 8);
    CHECK(bounded.get(pk(2), digest_of(1)).has_value());
    // A valid verdict is still admitted when the key is full.
    fill(bounded, pk(2), digest_of(7), valid_verdict(2), milliseconds(60'000));
    CHECK(bounded.get(pk(2), digest_of(7)).has_value());
  }
}

// How many times Redis has run `command` ("mget", "evalsha", "eval") since it started.
std::uint64_t calls_of(Inspector& inspect, const std::string& command) {
  const std::string stats = inspect.run({"INFO", "commandstats"});
  const std::string tag = "cmdstat_" + command + ":calls=";
  const std::size_t at = stats.find(tag);
  if (at == std::string::npos) return 0;
  return std::stoull(stats.substr(at + tag.size()));
}

std::uint64_t scripts_run(Inspector& inspect) {
  return calls_of(inspect, "evalsha") + calls_of(inspect, "eval");
}

TEST_CASE("RedisCache: without the in-process tier a lookup is one MGET under the current epoch",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  Inspector inspect(*redis);
  RedisCache cache(options_for(*redis, prefix, false));
  fill(cache, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
  REQUIRE(cache.get(pk(1), digest_of(1)).has_value());  // learns the epoch

  SECTION("hits and misses run no script, and a miss's token costs no round trip") {
    // The server's counts are every client's: another client may add to them, never
    // take away, so one of a few rounds shows this cache's own.
    std::uint64_t token = 0;
    bool exact = false;
    for (int round = 0; round < 5 && !exact; ++round) {
      const std::uint64_t mgets = calls_of(inspect, "mget");
      const std::uint64_t scripts = scripts_run(inspect);
      for (int i = 0; i < 10; ++i) {
        const auto v = cache.get(pk(1), digest_of(1));
        REQUIRE(v.has_value());
        CHECK(v->key_id == valid_verdict(1).key_id);
      }
      CHECK_FALSE(cache.get(pk(1), digest_of(2)).has_value());
      token = cache.fill_token(pk(1));
      exact = calls_of(inspect, "mget") - mgets == 11 && scripts_run(inspect) == scripts;
    }
    CHECK(exact);
    // The token it computed is the one the put script checks.
    cache.put(pk(1), digest_of(2), negative(ValidationCode::wrong_secret), milliseconds(60'000),
              token);
    CHECK(cache.get(pk(1), digest_of(2)).has_value());
  }
  SECTION("a clear on another node moves the epoch: nothing from before it answers") {
    RedisCache other(options_for(*redis, prefix, false));
    other.clear();
    CHECK_FALSE(cache.get(pk(1), digest_of(1)).has_value());
    fill(cache, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    const std::uint64_t scripts = scripts_run(inspect);
    CHECK(cache.get(pk(1), digest_of(1)).has_value());
    CHECK(other.get(pk(1), digest_of(1)).has_value());
    CHECK(scripts_run(inspect) - scripts <= 1);  // `other` learns the epoch once
  }
  SECTION("an erase on another node hides the verdict at once") {
    RedisCache other(options_for(*redis, prefix, false));
    other.erase(pk(1));
    CHECK_FALSE(cache.get(pk(1), digest_of(1)).has_value());
  }
  SECTION("a lost epoch key is created again, and hides every older verdict") {
    inspect.del(prefix + "e");
    CHECK_FALSE(cache.get(pk(1), digest_of(1)).has_value());
    CHECK_FALSE(inspect.run({"GET", prefix + "e"}).empty());
    CHECK_FALSE(cache.get(pk(1), digest_of(1)).has_value());
    fill(cache, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    CHECK(cache.get(pk(1), digest_of(1)).has_value());
  }
  SECTION("an epoch in a form the scripts never write is read through the script") {
    // A leading zero: the client could not name the keys the script names.
    const std::string epoch = inspect.run({"GET", prefix + "e"});
    inspect.set_keep_ttl(prefix + "e", "00" + epoch);
    CHECK_FALSE(cache.get(pk(1), digest_of(1)).has_value());
    fill(cache, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    const std::uint64_t scripts = scripts_run(inspect);
    CHECK(cache.get(pk(1), digest_of(1)).has_value());
    CHECK(scripts_run(inspect) - scripts == 1);
  }
  SECTION("a verdict of an older generation is deleted, not answered") {
    const std::string generation = inspect.run({"GET", prefix + "g:" + pk(1)});
    REQUIRE_FALSE(generation.empty());
    inspect.set_keep_ttl(prefix + "g:" + pk(1), std::to_string(std::stoull(generation) + 1));
    CHECK_FALSE(cache.get(pk(1), digest_of(1)).has_value());
    for (const auto& k : inspect.keys(prefix + "v:")) CHECK(k.find(pk(1)) == std::string::npos);
  }
}

TEST_CASE("RedisCache: local_ttl bounds a local entry whose invalidation was lost",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  Inspector inspect(*redis);
  RedisCacheOptions o = options_for(*redis, prefix, true);
  o.local_ttl = milliseconds(1'000);
  RedisCache cache(o);
  REQUIRE(apikeys_test::eventually([&] { return cache.local_tier_live(); }));
  fill(cache, pk(3), digest_of(3), valid_verdict(3), milliseconds(600'000));
  REQUIRE(cache.get(pk(3), digest_of(3)).has_value());  // now in the local tier too
  // An erase whose message never arrives: the generation moves (the Redis copy is
  // hidden, invariant 1) and nothing is published.
  const std::string generation = inspect.run({"GET", prefix + "g:" + pk(3)});
  REQUIRE_FALSE(generation.empty());
  inspect.set_keep_ttl(prefix + "g:" + pk(3), std::to_string(std::stoull(generation) + 1));
  CHECK(cache.get(pk(3), digest_of(3)).has_value());  // the local copy still answers
  // Gone once local_ttl has passed (with a margin for a slow machine; the default
  // local_ttl is 10 s, so a bound that did not hold would show as a 10 s wait).
  CHECK(apikeys_test::eventually([&] { return !cache.get(pk(3), digest_of(3)).has_value(); },
                                 milliseconds(4'000)));
  CHECK(cache.local_tier_live());  // the subscription never dropped: only local_ttl acted
}

TEST_CASE("RedisCache: verdicts keep the key's expiry, another layout reads as a miss",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  RedisCache cache(options_for(*redis, prefix, false));
  Inspector inspect(*redis);
  apikeys::Verdict v = valid_verdict(1);
  v.expires_at = apikeys_test::test_start() + std::chrono::hours(5);
  fill(cache, pk(1), digest_of(1), v, milliseconds(60'000));
  fill(cache, pk(2), digest_of(2), valid_verdict(2), milliseconds(60'000));
  const auto got = cache.get(pk(1), digest_of(1));
  REQUIRE(got);
  CHECK(got->code == ValidationCode::valid);
  CHECK(got->key_id == v.key_id);
  CHECK(got->expires_at == v.expires_at);
  const auto never = cache.get(pk(2), digest_of(2));
  REQUIRE(never);
  CHECK_FALSE(never->expires_at);

  // Rewrite the stored value in other layouts (older libraries' 33 and 42 bytes, a newer
  // version byte, a truncated value): each must be a miss, never a verdict.
  std::string verdict_key;
  std::string stored;
  for (const auto& [k, value] : inspect.dump(prefix)) {
    if (k.find(":v:") != std::string::npos && k.find(pk(1)) != std::string::npos) {
      verdict_key = k;
      stored = value;
    }
  }
  REQUIRE_FALSE(verdict_key.empty());
  const std::string generation = stored.substr(0, stored.find(':') + 1);
  const std::string body = stored.substr(generation.size());
  REQUIRE(body.size() == 52);  // no scopes, no metadata, no lineage, no rate limits
  std::string newer = body;
  newer[0] = 5;
  // Layout 2: version, code, the ids and the expiry, without flags or the key's policy.
  const std::string v2 = std::string(1, '\x02') + body[1] + body.substr(3, 40);
  // Layout 3: the same as this one up to the metadata, without the rate limits.
  const std::string v3 = std::string(1, '\x03') + body.substr(1, 50);
  for (const std::string& other :
       {std::string(33, '\0'), v2, v3, newer, body.substr(0, 51), body + "x"}) {
    inspect.set_keep_ttl(verdict_key, generation + other);
    CHECK_FALSE(cache.get(pk(1), digest_of(1)).has_value());
  }
  inspect.set_keep_ttl(verdict_key, generation + body);
  CHECK(cache.get(pk(1), digest_of(1)).has_value());
}

TEST_CASE("RedisCache: a verdict written by a newer encoder is a miss, and the store answers",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  // No in-process tier: every validation reads what Redis holds.
  auto cache = std::make_shared<RedisCache>(options_for(*redis, prefix, false));
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  apikeys::KeyManager manager(store, hasher(), Node::options(cache));
  apikeys::CreateRequest req = request("foreign");
  req.scopes = {"orders.read", "reports.**"};
  req.metadata = R"({"team":"payments"})";
  const auto key = manager.create(apikeys_test::account_id(6), req);
  const std::string& pk1 = key.info.public_key;
  const std::string sk(key.secret_key.reveal());
  REQUIRE(manager.validate(pk1, sk).ok());  // the store's answer, now in Redis

  Inspector inspect(*redis);
  std::string verdict_key;
  std::string stored;
  for (const auto& [k, value] : inspect.dump(prefix)) {
    if (k.find(":v:") != std::string::npos && k.find(pk1) != std::string::npos) {
      verdict_key = k;
      stored = value;
    }
  }
  REQUIRE_FALSE(verdict_key.empty());
  const std::string generation = stored.substr(0, stored.find(':') + 1);
  const std::string body = stored.substr(generation.size());
  // Layout 4: 52 bytes, the scopes joined by a space, the metadata; no lineage (the
  // key's own) and no rate limits (doc/redis-cache.md).
  const std::string scopes = "orders.read reports.**";
  REQUIRE(body.size() == 52 + scopes.size() + req.metadata.size());
  REQUIRE(static_cast<int>(body[0]) == 4);
  CHECK(static_cast<int>(body[2]) == 3);  // has_policy, has_admission
  CHECK(body.substr(47, scopes.size()) == scopes);
  CHECK(body.substr(51 + scopes.size(), req.metadata.size()) == req.metadata);
  CHECK(body.back() == '\0');  // no rate limits

  // A hit answers with the key's policy, without the store.
  int finds = store->finds.load();
  const apikeys::ValidationResult hit = manager.validate(pk1, sk);
  CHECK(store->finds.load() == finds);
  CHECK(hit.ok());
  CHECK(hit.scopes == req.scopes);
  CHECK(hit.metadata == req.metadata);
  CHECK(manager.validator().validate(pk1, sk, apikeys::Requirements{{"reports.daily.csv"}}).ok());
  CHECK(manager.validator().validate(pk1, sk, apikeys::Requirements{{"orders.write"}}).code ==
        ValidationCode::insufficient_scope);
  CHECK(store->finds.load() == finds);

  // What an encoder of this layout would write for `revoked`: read as a verdict (the
  // store is not asked), which shows the check below can tell a hit from a miss.
  std::string ours_revoked(52, '\0');
  ours_revoked[0] = 4;
  ours_revoked[1] = static_cast<char>(ValidationCode::revoked);
  ours_revoked.replace(35, 8, body.substr(35, 8));
  inspect.set_keep_ttl(verdict_key, generation + ours_revoked);
  CHECK(manager.validate(pk1, sk).code == ValidationCode::revoked);
  CHECK(store->finds.load() == finds);

  // Values this library must not answer from, each a miss: the store answers `valid`, and
  // its verdict replaces the foreign value. Newer encoders: versions 5 and 255 (same
  // length, and longer), version 4 with a code past kLastValidationCode (10) or 255, or
  // a flag it does not know. Version 4 with lengths that do not add up. And older
  // layouts: version 3 (51 bytes and the policy, without rate limits), for `revoked` and
  // for a `valid` with its policy; version 2 (42 bytes, without the key's policy).
  const auto with = [&](std::size_t at, char c) {
    std::string v = ours_revoked;
    v[at] = c;
    return v;
  };
  const auto be = [](std::uint64_t n, int bytes) {
    std::string out(static_cast<std::size_t>(bytes), '\0');
    for (int i = 0; i < bytes; ++i)
      out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * (bytes - 1 - i)));
    return out;
  };
  const auto be32 = [&](std::uint32_t n) { return be(n, 4); };
  const std::string head = ours_revoked.substr(0, 43);
  const std::string rps = std::string(1, '\x03') + "rps" + be(10, 8) + be(1000, 8) + be(0, 8);
  const std::string v4_scopes = head + be32(3) + "a.b" + be32(0) + std::string(1, '\x01') + rps;
  REQUIRE(v4_scopes.size() == 55 + rps.size());
  const std::string v2 = std::string(1, '\x02') + body[1] + body.substr(3, 40);
  const std::string v3 = std::string(1, '\x03') + ours_revoked.substr(1, 50);
  std::string v3_valid = std::string(1, '\x03') + body.substr(1, body.size() - 2);
  v3_valid[2] = 1;  // has_policy: layout 3 knew no other flag
  REQUIRE(static_cast<std::uint8_t>(apikeys::kLastValidationCode) + 1 == 11);
  const std::string foreign[] = {
      with(0, 5),
      with(0, 5) + std::string(8, '\x7f'),
      with(0, static_cast<char>(0xff)),
      with(1, 11),
      with(1, static_cast<char>(0xff)),
      with(2, 0x10),
      with(2, static_cast<char>(0x80)),
      with(2, 0x08),  // a lineage flag, no lineage
      ours_revoked + "x",
      ours_revoked.substr(0, 51),
      head + be32(1) + be32(0) + '\0',            // S past the end
      head + be32(0) + be32(1) + '\0',            // M past the end
      head + be32(0) + be32(0) + '\0' + "x",      // a byte after the limits
      head + be32(4) + "a.b " + be32(0) + '\0',   // an empty scope at the end
      head + be32(4) + " a.b" + be32(0) + '\0',   // ... at the start
      head + be32(5) + "a  .b" + be32(0) + '\0',  // ... between two spaces
      head + be32(0xffffffff) + be32(0) + '\0',
      head + be32(0) + be32(0) + '\x01',                                  // a rate limit missing
      head + be32(0) + be32(0) + '\x01' + rps.substr(0, rps.size() - 1),  // ... cut short
      head + be32(0) + be32(0) + '\x02' + rps,                            // ... the second missing
      head + be32(0) + be32(0) + '\x01' + '\0' + rps.substr(4) + "rps",   // an empty name
      v3,
      v3_valid,
      v2,
      v2.substr(0, 1) + std::string(1, static_cast<char>(ValidationCode::revoked)) + v2.substr(2),
  };
  // The same value with well-formed scopes and a rate limit is a hit: the lengths above
  // are what differ.
  inspect.set_keep_ttl(verdict_key, generation + v4_scopes);
  finds = store->finds.load();
  CHECK(manager.validate(pk1, sk).code == ValidationCode::revoked);
  CHECK(store->finds.load() == finds);
  for (const std::string& value : foreign) {
    INFO("version " << static_cast<int>(value[0] & 0xff) << ", code "
                    << static_cast<int>(value[1] & 0xff) << ", " << value.size() << " bytes");
    inspect.set_keep_ttl(verdict_key, generation + value);
    finds = store->finds.load();
    const apikeys::ValidationResult r = manager.validate(pk1, sk);
    CHECK(r.ok());
    CHECK(r.key_id == key.info.key_id);
    CHECK(r.scopes == req.scopes);
    CHECK(store->finds.load() == finds + 1);  // a miss: the store answered
    CHECK(manager.validate(pk1, sk).ok());
    CHECK(store->finds.load() == finds + 1);  // and its verdict is cached again
  }
}

TEST_CASE("RedisCache: a not_found verdict is never written to Redis", "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  Inspector inspect(*redis);
  const auto no_key_for = [&](const std::string& prefix, const std::string& public_key) {
    for (const auto& k : inspect.keys(prefix)) {
      INFO("key " << k);
      CHECK(k.find(public_key) == std::string::npos);
    }
  };

  SECTION("Redis only: the put is dropped") {
    const std::string prefix = janitor.make();
    RedisCache cache(options_for(*redis, prefix, false));
    fill(cache, pk(4), digest_of(4), negative(ValidationCode::not_found), milliseconds(300'000));
    no_key_for(prefix, pk(4));
    CHECK_FALSE(cache.get(pk(4), digest_of(4)).has_value());
  }
  SECTION("with the in-process tier: kept there only") {
    const std::string prefix = janitor.make();
    RedisCache cache(options_for(*redis, prefix, true));
    REQUIRE(apikeys_test::eventually([&] { return cache.local_tier_live(); }));
    fill(cache, pk(4), digest_of(4), negative(ValidationCode::not_found), milliseconds(300'000));
    no_key_for(prefix, pk(4));
    const auto v = cache.get(pk(4), digest_of(4));
    REQUIRE(v.has_value());
    CHECK(v->code == ValidationCode::not_found);
    // Another instance (another process) does not see it.
    RedisCache other(options_for(*redis, prefix, false));
    CHECK_FALSE(other.get(pk(4), digest_of(4)).has_value());
  }
  SECTION("through a Validator: unknown public keys leave nothing in Redis") {
    const std::string prefix = janitor.make();
    auto cache = std::make_shared<RedisCache>(options_for(*redis, prefix, false));
    apikeys::Validator v(std::make_shared<apikeys::MemoryStore>(), hasher(),
                         validator_options(cache));
    // Well-formed keys from another store: unknown to this one.
    apikeys::KeyManager elsewhere(std::make_shared<apikeys::MemoryStore>(), hasher());
    for (int i = 0; i < 10; ++i) {
      const auto key = elsewhere.create(apikeys_test::account_id(7), request("elsewhere"));
      CHECK(v.validate(key.info.public_key, key.secret_key.reveal()).code ==
            ValidationCode::not_found);
    }
    for (const auto& k : inspect.keys(prefix)) {
      INFO("key " << k);
      CHECK((k == prefix + "e" || k == prefix + "r"));  // the epoch and the server's run_id
    }
  }
}

TEST_CASE("RedisCache: an erase whose index set was evicted still hides every older verdict",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  Inspector inspect(*redis);
  // What memory-pressure eviction does: the index sets (or the generations) vanish
  // while the verdicts survive.
  const auto evict = [&](const std::string& kind) {
    std::size_t n = 0;
    for (const auto& k : inspect.keys(prefix + kind)) {
      inspect.del(k);
      ++n;
    }
    return n;
  };

  SECTION("the cache alone") {
    RedisCache cache(options_for(*redis, prefix, false));
    fill(cache, pk(5), digest_of(1), valid_verdict(1), milliseconds(60'000));
    fill(cache, pk(5), digest_of(2), negative(ValidationCode::wrong_secret), milliseconds(60'000));
    REQUIRE(cache.get(pk(5), digest_of(1)).has_value());
    REQUIRE(evict("i:") == 1);
    cache.erase(pk(5));
    CHECK_FALSE(cache.get(pk(5), digest_of(1)).has_value());
    CHECK_FALSE(cache.get(pk(5), digest_of(2)).has_value());
    // And caching works again afterwards.
    fill(cache, pk(5), digest_of(1), valid_verdict(1), milliseconds(60'000));
    CHECK(cache.get(pk(5), digest_of(1)).has_value());
  }
  SECTION("a lost generation key hides the verdicts written under it") {
    RedisCache cache(options_for(*redis, prefix, false));
    fill(cache, pk(6), digest_of(1), valid_verdict(1), milliseconds(60'000));
    REQUIRE(cache.get(pk(6), digest_of(1)).has_value());
    REQUIRE(evict("g:") == 1);
    CHECK_FALSE(cache.get(pk(6), digest_of(1)).has_value());
    // An erase after the loss, and a later fill, never bring the old verdict back.
    REQUIRE(evict("i:") <= 1);
    cache.erase(pk(6));
    fill(cache, pk(6), digest_of(2), negative(ValidationCode::wrong_secret), milliseconds(60'000));
    CHECK_FALSE(cache.get(pk(6), digest_of(1)).has_value());
  }
  SECTION("a revoke through a Validator, on this node and another") {
    auto store = std::make_shared<apikeys::MemoryStore>();
    auto cache1 = std::make_shared<RedisCache>(options_for(*redis, prefix, false));
    auto cache2 = std::make_shared<RedisCache>(options_for(*redis, prefix, true));
    REQUIRE(apikeys_test::eventually([&] { return cache2->local_tier_live(); }));
    apikeys::KeyManagerOptions mo;
    mo.validation = validator_options(cache1);
    apikeys::KeyManager node1(store, hasher(), mo);
    apikeys::Validator node2(store, hasher(), validator_options(cache2));
    const auto key = node1.create(apikeys_test::account_id(5), request("evicted index"));
    const std::string secret(key.secret_key.reveal());
    REQUIRE(node1.validate(key.info.public_key, secret).ok());  // fills Redis
    REQUIRE(node2.validate(key.info.public_key, secret).ok());  // a Redis hit, now local too
    REQUIRE(evict("i:") == 1);
    node1.revoke(apikeys_test::account_id(5), key.info.key_id);
    CHECK(node1.validate(key.info.public_key, secret).code == ValidationCode::revoked);
    CHECK(apikeys_test::eventually(
        [&] { return node2.validate(key.info.public_key, secret).code == ValidationCode::revoked; },
        std::chrono::seconds(2)));
  }
}

TEST_CASE("RedisCache: a refused AUTH trips the breaker like a connection failure",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  RedisCacheOptions o = options_for(*redis, janitor.make(), false);
  o.password = "not-the-password";  // the test server has none (or another): AUTH fails
  o.retry_interval = milliseconds(60'000);
  RedisCache cache(o);
  try {
    (void)cache.get(pk(1), digest_of(1));
    FAIL("get succeeded with a refused AUTH");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
    CHECK(std::string(e.what()).find("AUTH") != std::string::npos);
  }
  // The breaker is open: the next call fails at once, without connecting.
  try {
    (void)cache.get(pk(1), digest_of(1));
    FAIL("get succeeded with a refused AUTH");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
    CHECK(std::string(e.what()).find("retrying later") != std::string::npos);
  }
}

// Every message a refused AUTH leads to (the call that connected, the breaker's, an
// erase's) is free of the password; and the cache's copy of it (and of the AUTH
// command it builds) is wiped before it is freed, by the time the cache is gone.
TEST_CASE("RedisCache: a refused password is in no message, and the cache wipes its copy",
          "[servers][redis][credentials]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  RedisCacheOptions o = options_for(*redis, janitor.make(), true);
  const std::string password = "Wr0ng pa55 '%zz'=\\x-Qv7-9Kq";
  o.password = password;  // the test server has none (or another): AUTH is refused
  std::vector<std::string> messages;
  std::size_t unwiped = 0;
  {
    apikeys_test::alloc_probe::WatchFrees watch(password);
    {
      RedisCache cache(o);
      for (int i = 0; i < 2; ++i) {
        try {
          (void)cache.get(pk(1), digest_of(1));
          FAIL("get succeeded with a refused AUTH");
        } catch (const apikeys::Error& e) {
          messages.emplace_back(e.what());
        }
      }
      try {
        cache.erase(pk(1));
        FAIL("erase succeeded with a refused AUTH");
      } catch (const apikeys::Error& e) {
        messages.emplace_back(e.what());
      }
      // The subscriber authenticates too (and is refused): let it try at least once.
      std::this_thread::sleep_for(milliseconds(300));
      CHECK_FALSE(cache.local_tier_live());
    }
    unwiped = apikeys_test::alloc_probe::unwiped_frees();
  }
  REQUIRE(messages.size() == 3);
  CHECK(messages[0].find("AUTH refused") != std::string::npos);
  for (const auto& m : messages) {
    INFO("message: " << m);
    CHECK(apikeys_test::leaked_piece(m, password).empty());
  }
  CHECK(unwiped == 0);
}

namespace {

// A stand-in for a Redis that wants a password, on a loopback port of its own: on each
// connection it reads the first command (`expected_auth.size()` bytes) and keeps it,
// answers +OK if it is exactly `expected_auth`, else an error, and then answers every
// later read with an error. Runs until destroyed.
class FakeRedis {
 public:
  explicit FakeRedis(std::string expected_auth) : expected_(std::move(expected_auth)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listener_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(listener_, 16) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeRedis() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }
  FakeRedis(const FakeRedis&) = delete;
  FakeRedis& operator=(const FakeRedis&) = delete;

  [[nodiscard]] int port() const { return port_; }
  // The first command of each connection so far.
  std::vector<std::string> first_commands() {
    std::lock_guard<std::mutex> lock(mu_);
    return firsts_;
  }

 private:
  struct Client {
    int fd;
    std::string first;
    bool answered = false;
  };

  void serve() {
    std::vector<Client> clients;
    while (!stop_) {
      std::vector<pollfd> p;
      p.push_back({listener_, POLLIN, 0});
      for (const auto& c : clients) p.push_back({c.fd, POLLIN, 0});
      if (::poll(p.data(), p.size(), 20) <= 0) continue;
      if ((p.front().revents & POLLIN) != 0) {
        const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) clients.push_back({fd, {}});
      }
      for (std::size_t i = 0; i < clients.size() && i + 1 < p.size(); ++i) {
        if ((p[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        Client& c = clients[i];
        char buf[4096];
        const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
        if (n <= 0) continue;  // closed: left to the end
        std::string_view reply = "-ERR fake server\r\n";
        if (!c.answered) {
          c.first.append(buf, static_cast<std::size_t>(n));
          if (c.first.size() < expected_.size()) continue;
          c.answered = true;
          if (c.first == expected_) reply = "+OK\r\n";
          std::lock_guard<std::mutex> lock(mu_);
          firsts_.push_back(c.first);
        }
        (void)!::send(c.fd, reply.data(), reply.size(), MSG_NOSIGNAL);
      }
    }
    for (const auto& c : clients) ::close(c.fd);
  }

  std::string expected_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::string> firsts_;  // Guarded by mu_.
  std::thread thread_;
};

}  // namespace

// AUTH is formatted by RedisCache itself (so that it can wipe it): it must be the exact
// RESP command, whatever bytes the password holds, and an accepted AUTH must let the
// connection carry on (here to SCRIPT LOAD, which the stand-in refuses). No server needed.
TEST_CASE("RedisCache: AUTH is sent as one exact command, and an accepted AUTH carries on",
          "[servers][redis][credentials]") {
  const std::string password = std::string("p@ss w0rd \r\n$5\r\n*%'\"=") + '\0' + "end";
  const std::string expected =
      "*2\r\n$4\r\nAUTH\r\n$" + std::to_string(password.size()) + "\r\n" + password + "\r\n";
  FakeRedis fake(expected);
  RedisCacheOptions o;
  o.host = "127.0.0.1";
  o.port = fake.port();
  o.password = password;
  o.local_tier = false;
  o.connect_timeout = milliseconds(2000);
  o.command_timeout = milliseconds(2000);
  RedisCache cache(o);
  try {
    (void)cache.get(pk(1), digest_of(1));
    FAIL("get succeeded against the stand-in");
  } catch (const apikeys::Error& e) {
    INFO("message: " << e.what());
    CHECK(e.code() == ErrorCode::storage);  // AUTH accepted; the stand-in refused SCRIPT LOAD
    CHECK(std::string(e.what()).find("SCRIPT LOAD") != std::string::npos);
    CHECK(apikeys_test::leaked_piece(e.what(), password).empty());
  }
  const auto firsts = fake.first_commands();
  REQUIRE_FALSE(firsts.empty());
  for (const auto& f : firsts) CHECK(f == expected);
}

TEST_CASE("RedisCache: instances sharing a prefix share verdicts, tokens and invalidations",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  RedisCache a(options_for(*redis, prefix, true));
  RedisCache b(options_for(*redis, prefix, true));
  REQUIRE(apikeys_test::eventually([&] { return a.local_tier_live() && b.local_tier_live(); }));

  SECTION("a verdict put by one is a hit for the other") {
    fill(a, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    CHECK(b.get(pk(1), digest_of(1)).has_value());
  }
  SECTION(
      "a token taken on one node is refused after an erase on another (the race across nodes)") {
    const std::uint64_t token = a.fill_token(pk(1));
    b.erase(pk(1));
    a.put(pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000), token);
    CHECK_FALSE(a.get(pk(1), digest_of(1)).has_value());
    CHECK_FALSE(b.get(pk(1), digest_of(1)).has_value());
  }
  SECTION("an erase on one node empties the other's in-process tier") {
    fill(a, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    REQUIRE(b.get(pk(1), digest_of(1)).has_value());  // now in b's local tier as well
    const std::uint64_t heard = b.invalidations_received();
    a.erase(pk(1));
    CHECK(apikeys_test::eventually([&] { return b.invalidations_received() > heard; },
                                   std::chrono::seconds(1)));
    CHECK_FALSE(b.get(pk(1), digest_of(1)).has_value());
  }
  SECTION("a clear on one node empties the other's in-process tier") {
    fill(a, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    REQUIRE(b.get(pk(1), digest_of(1)).has_value());
    a.clear();
    CHECK(apikeys_test::eventually([&] { return !b.get(pk(1), digest_of(1)).has_value(); },
                                   std::chrono::seconds(1)));
  }
}

// One InstrumentedStore and two RedisCache instances under one prefix of their own,
// each with its in-process tier live: a Validator's and a KeyManager's.
struct TwoTiers {
  explicit TwoTiers(const apikeys_test::RedisAddress& redis)
      : janitor{redis, {}},
        prefix(janitor.make()),
        validator_cache(std::make_shared<RedisCache>(options_for(redis, prefix, true))),
        manager_cache(std::make_shared<RedisCache>(options_for(redis, prefix, true))) {
    REQUIRE(apikeys_test::eventually(
        [&] { return validator_cache->local_tier_live() && manager_cache->local_tier_live(); }));
  }
  apikeys::KeyManagerOptions manager_options() const {
    apikeys::KeyManagerOptions mo;
    mo.validation = validator_options(manager_cache);
    return mo;
  }

  PrefixJanitor janitor;
  std::string prefix;
  std::shared_ptr<apikeys_test::InstrumentedStore> store =
      std::make_shared<apikeys_test::InstrumentedStore>();
  std::shared_ptr<RedisCache> validator_cache;
  std::shared_ptr<RedisCache> manager_cache;
};

TEST_CASE("RedisCache: a revoke on another node during a fill never leaves a stale valid",
          "[servers][redis][cache]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  TwoTiers tiers(*redis);
  auto& store = tiers.store;
  // Node 1's store has an identity of its own, as another process's would: only Redis
  // can tell it about node 2's revoke.
  apikeys::Validator node1(std::make_shared<apikeys_test::ForwardingStore>(store), hasher(),
                           validator_options(tiers.validator_cache));
  apikeys::KeyManager node2(store, hasher(), tiers.manager_options());
  const auto key = node2.create(apikeys_test::account_id(3), request("raced"));

  // Node 1 reads the store (key active) and pauses before its fill ...
  store->arm_pause();
  apikeys::ValidationResult first;
  std::thread t([&] { first = node1.validate(key.info.public_key, key.secret_key.reveal()); });
  store->wait_until_paused();
  // ... node 2 revokes (store, then Redis erase and publish) ...
  node2.revoke(apikeys_test::account_id(3), key.info.key_id);
  // ... and node 1's stale "valid" fill arrives: it must land nowhere.
  store->release();
  t.join();
  CHECK(first.ok());  // it read the store before the revoke
  CHECK(node1.validate(key.info.public_key, key.secret_key.reveal()).code ==
        ValidationCode::revoked);
  CHECK(node2.validate(key.info.public_key, key.secret_key.reveal()).code ==
        ValidationCode::revoked);
}

TEST_CASE("RedisCache: Redis restarting mid-run never breaks validation, and caching resumes",
          "[servers][redis][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis || !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_RESTART"})) return;
  Node node(*redis);
  auto& store = node.store;
  auto& cache = node.cache;
  auto& manager = node.manager;
  const apikeys::Uuid account = apikeys_test::account_id(4);
  const auto good = manager.create(account, request("good"));
  const auto bad = manager.create(account, request("bad"));
  manager.revoke(account, bad.info.key_id);

  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::atomic<int> checks{0};
  std::thread validating([&] {
    while (!stop.load()) {
      if (!manager.validate(good.info.public_key, good.secret_key.reveal()).ok()) ++wrong;
      if (manager.validate(bad.info.public_key, bad.secret_key.reveal()).code !=
          ValidationCode::revoked)
        ++wrong;
      checks += 2;
      std::this_thread::sleep_for(milliseconds(1));
    }
  });
  std::this_thread::sleep_for(milliseconds(300));
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_RESTART"));
  // The subscription comes back, and validations are cache hits again.
  CHECK(
      apikeys_test::eventually([&] { return cache->local_tier_live(); }, std::chrono::seconds(10)));
  CHECK(apikeys_test::eventually(
      [&] {
        const int before = store->finds.load();
        for (int i = 0; i < 20; ++i)
          (void)manager.validate(good.info.public_key, good.secret_key.reveal());
        return store->finds.load() == before;
      },
      std::chrono::seconds(10)));
  stop = true;
  validating.join();
  CHECK(wrong.load() == 0);
  CHECK(checks.load() > 0);
  // A revoke after the restart reaches Redis again.
  manager.revoke(account, good.info.key_id);
  CHECK(manager.validate(good.info.public_key, good.secret_key.reveal()).code ==
        ValidationCode::revoked);
}

TEST_CASE("RedisCache: a Redis restarted from a snapshot never brings back a revoked key",
          "[servers][redis][faults]") {
  // A snapshot taken while the key was valid, a revoke, then a restart that loads the
  // snapshot: Redis holds the valid verdict and the generation it was written under
  // again. Neither a node that lived through the restart nor one started after it may
  // answer from them (invariant 9, doc/redis-cache.md).
  const auto redis = apikeys_test::test_redis();
  if (!redis || !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_RESTART"})) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  apikeys::KeyManagerOptions mo;
  mo.validation =
      validator_options(std::make_shared<RedisCache>(options_for(*redis, prefix, false)));
  apikeys::KeyManager manager(store, hasher(), mo);
  const apikeys::Uuid account = apikeys_test::account_id(4);
  const auto revoked = manager.create(account, request("revoked after the snapshot"));
  const auto good = manager.create(account, request("good"));
  const auto validate = [](const auto& v, const apikeys::CreatedKey& k) {
    return v.validate(k.info.public_key, k.secret_key.reveal()).code;
  };
  REQUIRE(validate(manager, revoked) == ValidationCode::valid);  // its verdict in Redis
  REQUIRE(validate(manager, good) == ValidationCode::valid);
  // The next restart must start empty, as the other tests expect, however this one ends.
  struct Unsave {
    const apikeys_test::RedisAddress& redis;
    ~Unsave() {
      try {
        Inspector(redis).run({"FLUSHALL"});
        Inspector(redis).run({"SAVE"});
      } catch (...) {
      }
    }
  } unsave{*redis};
  Inspector client(*redis);
  client.run({"SAVE"});
  manager.revoke(account, revoked.info.key_id);
  REQUIRE(validate(manager, revoked) == ValidationCode::revoked);

  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_RESTART"));  // loads the snapshot
  // The cache answers again: the good key's validations stop reading the store.
  CHECK(apikeys_test::eventually(
      [&] {
        const int before = store->finds.load();
        for (int i = 0; i < 5; ++i) (void)validate(manager, good);
        return store->finds.load() == before;
      },
      std::chrono::seconds(10)));
  CHECK(validate(manager, revoked) == ValidationCode::revoked);
  // A node that meets the restored Redis first (its Validator also clears the cache
  // when it is built).
  apikeys::Validator fresh(
      store, hasher(),
      validator_options(std::make_shared<RedisCache>(options_for(*redis, prefix, false))));
  CHECK(validate(fresh, revoked) == ValidationCode::revoked);
  CHECK(validate(fresh, good) == ValidationCode::valid);
}

TEST_CASE("RedisCache: an instance that meets a server other than its last moves the epoch",
          "[servers][redis][faults]") {
  // x settles on the first server; the server restarts (another run_id), and y records
  // the new one under the prefix first. For x the server is still not the one it last
  // settled on (an old primary back at the address would look the same): its next
  // connection moves the epoch (invariant 9).
  const auto redis = apikeys_test::test_redis();
  if (!redis || !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_RESTART"})) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  RedisCache x(options_for(*redis, prefix, false));
  fill(x, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
  REQUIRE(x.get(pk(1), digest_of(1)).has_value());
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_RESTART"));
  RedisCache y(options_for(*redis, prefix, false));
  fill(y, pk(2), digest_of(2), valid_verdict(2), milliseconds(60'000));
  REQUIRE(y.get(pk(2), digest_of(2)).has_value());
  Inspector inspect(*redis);
  const std::string before = inspect.run({"GET", prefix + "e"});
  std::optional<apikeys::Verdict> seen_by_x;
  REQUIRE(apikeys_test::eventually(
      [&] {
        try {
          seen_by_x = x.get(pk(2), digest_of(2));  // a new connection: the old one died
          return true;
        } catch (const apikeys::Error&) {
          return false;  // the restart's breaker, for its retry interval
        }
      },
      std::chrono::seconds(10)));
  CHECK(inspect.run({"GET", prefix + "e"}) != before);
  CHECK_FALSE(seen_by_x.has_value());  // y's verdict was under the epoch that moved
}

TEST_CASE("RedisCache: a server that forgot the scripts is checked before the next script",
          "[servers][redis][faults]") {
  // NOSCRIPT on a live connection: the server behind it may be another one (a proxy that
  // moved the connection, a failover behind a virtual address). The connection settles
  // again before it retries the script; here the run_id recorded under the prefix is
  // another server's, so the epoch moves and the verdict written before is not answered.
  // (A hit reads with MGET, no script: only the next script, here a fill, can tell.)
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  PrefixJanitor janitor{*redis, {}};
  const std::string prefix = janitor.make();
  RedisCache x(options_for(*redis, prefix, false));
  fill(x, pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
  REQUIRE(x.get(pk(1), digest_of(1)).has_value());
  Inspector inspect(*redis);
  const std::string before = inspect.run({"GET", prefix + "e"});
  inspect.run({"SET", prefix + "r", std::string(40, '0')});
  inspect.run({"SCRIPT", "FLUSH"});
  fill(x, pk(2), digest_of(2), valid_verdict(2), milliseconds(60'000));
  CHECK(inspect.run({"GET", prefix + "e"}) != before);
  CHECK_FALSE(x.get(pk(1), digest_of(1)).has_value());
  // Settled on this server again: the verdict written after it is answered.
  CHECK(x.get(pk(2), digest_of(2)).has_value());
}

TEST_CASE("RedisCache: two in-process tiers in one process both reject a key when revoke() returns",
          "[servers][redis][cache]") {
  // An admin KeyManager and a hot-path Validator, each with its own RedisCache (and so
  // its own in-process tier) over one store: the hot path must not wait for pub/sub.
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  TwoTiers tiers(*redis);
  auto& store = tiers.store;
  apikeys::KeyManager admin(store, hasher(), tiers.manager_options());
  apikeys::Validator hot(store, hasher(), validator_options(tiers.validator_cache));
  const apikeys::Uuid account = apikeys_test::account_id(4);
  for (int i = 0; i < 20; ++i) {
    const auto key = admin.create(account, request("hot"));
    const std::string sk(key.secret_key.reveal());
    REQUIRE(hot.validate(key.info.public_key, sk).ok());
    const int finds = store->finds.load();
    REQUIRE(hot.validate(key.info.public_key, sk).ok());  // from the hot path's own tier
    REQUIRE(store->finds.load() == finds);
    admin.revoke(account, key.info.key_id);
    CHECK(hot.validate(key.info.public_key, sk).code == ValidationCode::revoked);
  }
}

TEST_CASE("RedisCache: Redis down, validation falls back to the store and recovers",
          "[servers][redis][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis ||
      !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_STOP", "APIKEYS_TEST_REDIS_START"}))
    return;
  Node node(*redis);
  auto& store = node.store;
  auto& cache = node.cache;
  auto& manager = node.manager;
  REQUIRE(apikeys_test::eventually([&] { return cache->local_tier_live(); }));
  const apikeys::Uuid account = apikeys_test::account_id(5);
  const auto good = manager.create(account, request("good"));
  const auto doomed = manager.create(account, request("revoked while Redis is down"));
  REQUIRE(manager.validate(good.info.public_key, good.secret_key.reveal()).ok());
  REQUIRE(manager.validate(doomed.info.public_key, doomed.secret_key.reveal()).ok());

  bool started = true;
  struct Restart {
    bool& started;
    ~Restart() {
      if (!started)
        (void)std::system(
            (std::string(std::getenv("APIKEYS_TEST_REDIS_START")) + " >/dev/null 2>&1").c_str());
    }
  } restart{started};
  started = false;
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_STOP"));

  // The subscription notices and the in-process tier is dropped (it could miss
  // invalidations now) ...
  CHECK(
      apikeys_test::eventually([&] { return !cache->local_tier_live(); }, std::chrono::seconds(3)));
  // ... so validations read the store: slower, still correct, and never stuck.
  const int finds_before = store->finds.load();
  auto slowest = std::chrono::steady_clock::duration::zero();
  for (int i = 0; i < 50; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(manager.validate(good.info.public_key, good.secret_key.reveal()).ok());
    slowest = std::max(slowest, std::chrono::steady_clock::now() - t0);
  }
  CHECK(store->finds.load() - finds_before == 50);
  CHECK(slowest < milliseconds(1000));  // at worst one connect timeout (250 ms)

  // A revoke commits to the store, then reports that Redis could not be told; the key
  // is rejected at once all the same (validation reads the store).
  try {
    manager.revoke(account, doomed.info.key_id);
    FAIL("revoke reported success although Redis could not be told");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
    CHECK(std::string(e.what()).find("RedisCache") != std::string::npos);
  }
  CHECK(store->find(doomed.info.public_key)->info.status == apikeys::KeyStatus::revoked);
  CHECK(manager.validate(doomed.info.public_key, doomed.secret_key.reveal()).code ==
        ValidationCode::revoked);

  // Creating a key still works (its secret is not lost to a cache failure).
  const auto born = manager.create(account, request("created while Redis is down"));
  CHECK(manager.validate(born.info.public_key, born.secret_key.reveal()).ok());

  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_START"));
  started = true;
  // Recovery: the subscription returns, verdicts are cached again, hits skip the store.
  CHECK(
      apikeys_test::eventually([&] { return cache->local_tier_live(); }, std::chrono::seconds(10)));
  CHECK(apikeys_test::eventually(
      [&] {
        const int before = store->finds.load();
        for (int i = 0; i < 20; ++i)
          (void)manager.validate(good.info.public_key, good.secret_key.reveal());
        return store->finds.load() == before;
      },
      std::chrono::seconds(10)));
  CHECK(manager.validate(doomed.info.public_key, doomed.secret_key.reveal()).code ==
        ValidationCode::revoked);
  // Retrying the revoke that reported the failure is safe and now succeeds.
  CHECK(manager.revoke(account, doomed.info.key_id).status == apikeys::KeyStatus::revoked);
}

TEST_CASE("RedisCache: a Redis that stops answering costs at most its timeouts, then recovers",
          "[servers][redis][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis ||
      !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_PAUSE", "APIKEYS_TEST_REDIS_RESUME"}))
    return;
  Node node(*redis);
  auto& store = node.store;
  auto& cache = node.cache;
  auto& manager = node.manager;
  REQUIRE(apikeys_test::eventually([&] { return cache->local_tier_live(); }));
  const apikeys::Uuid account = apikeys_test::account_id(6);
  const auto good = manager.create(account, request("good"));
  const auto doomed = manager.create(account, request("revoked while Redis hangs"));
  REQUIRE(manager.validate(good.info.public_key, good.secret_key.reveal()).ok());

  bool resumed = true;
  struct Resume {  // never leave the shared server stopped
    bool& resumed;
    ~Resume() {
      if (!resumed)
        (void)std::system(
            (std::string(std::getenv("APIKEYS_TEST_REDIS_RESUME")) + " >/dev/null 2>&1").c_str());
    }
  } resume{resumed};
  resumed = false;
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_PAUSE"));  // accepts, never answers

  // The heartbeat notices (two silent intervals of 200 ms) and the tier switches off.
  CHECK(
      apikeys_test::eventually([&] { return !cache->local_tier_live(); }, std::chrono::seconds(3)));
  // Every validation is answered from the store, each within connect_timeout +
  // command_timeout (250 ms each): a timeout trips the breaker, so most cost nothing.
  auto slowest = std::chrono::steady_clock::duration::zero();
  auto total = std::chrono::steady_clock::duration::zero();
  for (int i = 0; i < 40; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(manager.validate(good.info.public_key, good.secret_key.reveal()).ok());
    const auto took = std::chrono::steady_clock::now() - t0;
    slowest = std::max(slowest, took);
    total += took;
    std::this_thread::sleep_for(milliseconds(10));
  }
  CHECK(slowest < milliseconds(1000));
  // A revoke commits, then reports within its timeout that Redis could not be told.
  const auto t0 = std::chrono::steady_clock::now();
  try {
    manager.revoke(account, doomed.info.key_id);
    FAIL("revoke reported success although Redis could not be told");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
  CHECK(std::chrono::steady_clock::now() - t0 < milliseconds(1000));
  CHECK(manager.validate(doomed.info.public_key, doomed.secret_key.reveal()).code ==
        ValidationCode::revoked);

  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_RESUME"));
  resumed = true;
  CHECK(
      apikeys_test::eventually([&] { return cache->local_tier_live(); }, std::chrono::seconds(10)));
  CHECK(apikeys_test::eventually(
      [&] {
        const int before = store->finds.load();
        for (int i = 0; i < 20; ++i)
          (void)manager.validate(good.info.public_key, good.secret_key.reveal());
        return store->finds.load() == before;
      },
      std::chrono::seconds(10)));
  CHECK(manager.validate(doomed.info.public_key, doomed.secret_key.reveal()).code ==
        ValidationCode::revoked);
  WARN("Redis paused: slowest validation "
       << std::chrono::duration_cast<std::chrono::milliseconds>(slowest).count() << " ms, mean "
       << std::chrono::duration_cast<std::chrono::microseconds>(total).count() / 40 << " us");
}
