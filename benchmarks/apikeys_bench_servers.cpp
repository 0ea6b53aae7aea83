// apikeys_bench_servers: validation through the server backends beside local SQLite, on
// the same key set in the same run (BENCHMARKS.md, "Servers (PostgreSQL, Redis)"):
//   cold  — no cache, every validation reads the store (SqliteStore, PostgresStore);
//   hit   — the verdict is cached: in Redis (one round trip), or in RedisCache's
//           in-process tier (no I/O);
//   revoke — KeyManager::revoke through PostgreSQL and Redis (store write, Redis erase
//           and publish), the cost behind cross-node revocation;
//   floor  — one bare round trip (libpq "SELECT 1", hiredis PING) on the same servers,
//           what no backend call can beat;
//   admission — RedisLimiter admitting a key with one rate limit (one Lua script)
//           against a hiredis GET on the same kind of blocking connection; the
//           `redis_admission_vs_rtt` TARGET line compares them in interleaved pairs;
//   targets — `postgres_cold_vs_rtt` (a cold validation against a libpq prepared point
//           SELECT) and `redis_hit_vs_rtt` (a Redis hit without the in-process tier
//           against a hiredis GET), measured the same way after the run.
// Servers come from APIKEYS_TEST_PG (libpq conninfo) and APIKEYS_TEST_REDIS (host:port),
// as for the tests (eval "$(scripts/servers.sh start)"); without them only SQLite runs.
// Google Benchmark flags apply (--benchmark_min_time=..., --benchmark_filter=...).
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/hasher.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/postgres_store.hpp"
#include "apikeys/redis_cache.hpp"
#include "apikeys/redis_limiter.hpp"
#include "apikeys/sqlite_store.hpp"
#include "apikeys/validator.hpp"

namespace {

constexpr std::size_t kKeys = 2'000;
constexpr std::string_view kPepper = "apikeys-benchmark-pepper-0123456";

struct Key {
  std::string public_key;
  std::string secret;
};

// kKeys active keys, the same in every store.
struct KeySet {
  std::vector<Key> keys;
  std::vector<apikeys::KeyRecord> records;
};

KeySet make_keys(const apikeys::Hasher& hasher) {
  KeySet s;
  apikeys::CsprngKeyGenerator gen;
  const apikeys::KeyFormat format;
  const apikeys::Uuid account = apikeys::Uuid::random();
  const auto now =
      apikeys::from_unix_millis(apikeys::to_unix_millis(std::chrono::system_clock::now()));
  for (std::size_t i = 0; i < kKeys; ++i) {
    apikeys::KeyPair pair = gen.generate(format);
    apikeys::KeyRecord r;
    r.info.key_id = apikeys::Uuid::random();
    r.info.account_id = account;
    r.info.public_key = pair.public_key;
    r.info.title = "bench key " + std::to_string(i);
    r.info.created_at = now + std::chrono::milliseconds(i);
    r.digest = hasher.hash(pair.secret_key.reveal());
    s.keys.push_back({pair.public_key, std::string(pair.secret_key.reveal())});
    s.records.push_back(std::move(r));
  }
  return s;
}

apikeys::ValidatorOptions plain_options(std::shared_ptr<apikeys::Cache> cache) {
  apikeys::ValidatorOptions o;
  o.cache = std::move(cache);
  o.record_last_use = false;                                // reads only
  o.revision_poll_interval = std::chrono::milliseconds(0);  // no background reads
  return o;
}

// Validates keys round-robin (each thread from its own offset); fails the run on any
// answer but `valid`.
void validate_loop(benchmark::State& state, const apikeys::Validator& v, const KeySet& ks) {
  std::size_t i = static_cast<std::size_t>(state.thread_index()) * 7919;
  for (auto _ : state) {
    const Key& k = ks.keys[i++ % ks.keys.size()];
    const auto r = v.validate(k.public_key, k.secret);
    if (!r.ok()) {
      state.SkipWithError("a validation was not valid");
      break;
    }
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}

// The median of `v`.
double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Interleaved pairs of blocks of `path` and `floor` calls (which goes first alternates;
// a shared machine drifts by more than a target's margin between two separate
// measurements), wall time per call: prints both medians and the TARGET line, `name`
// with the median of the pairs' ratios against `limit`. `ok` is false once a call
// failed (the line then reads FAIL).
template <class Path, class Floor>
void paired_target(const char* name, const char* what, double limit, Path&& path, Floor&& floor,
                   const bool& ok) {
  for (int i = 0; i < 200; ++i) {  // warm both
    path();
    floor();
  }
  constexpr int kPairs = 41;
  constexpr int kBlock = 200;
  std::vector<double> ratios;
  std::vector<double> floor_ns;
  std::vector<double> path_ns;
  for (int p = 0; p < kPairs; ++p) {
    double ns[2] = {0, 0};  // [0] floor, [1] path
    for (int j = 0; j < 2; ++j) {
      const int which = (p % 2 == 0) ? j : 1 - j;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kBlock; ++i) {
        if (which == 0) {
          floor();
        } else {
          path();
        }
      }
      ns[which] =
          std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
          kBlock;
    }
    floor_ns.push_back(ns[0]);
    path_ns.push_back(ns[1]);
    ratios.push_back(ns[1] / ns[0]);
  }
  const double ratio = median_of(ratios);
  std::printf(
      "%s: median %.0f ns; floor: median %.0f ns (%d pairs of %d-call blocks; the ratio "
      "is the median of the pairs')\n",
      what, median_of(path_ns), median_of(floor_ns), kPairs, kBlock);
  std::printf("TARGET %s ratio=%.3f limit=%g %s\n", name, ratio, limit,
              ok && ratio <= limit ? "PASS" : "FAIL");
  std::fflush(stdout);
}

// RedisLimiter admission (one rate limit, never refused) against a hiredis GET on a
// blocking connection like the limiter's own: registered as benchmarks, then measured
// again after the run, for the TARGET line (limit: admission <= 1.2 x GET).
class RedisAdmission {
 public:
  RedisAdmission(const std::string& host, int port, const std::string& prefix)
      : get_key_(prefix + "get"), limiter_(nullptr, limiter_options(host, port, prefix)) {
    timeval tv{2, 0};
    c_ = redisConnectWithTimeout(host.c_str(), port, tv);
    if (c_ == nullptr || c_->err != 0) {
      ok_ = false;
      return;
    }
    freeReplyObject(redisCommand(c_, "SET %b 1", get_key_.data(), get_key_.size()));
    limit_.name = "per-second";
    limit_.limit = 1'000'000'000;
    limit_.period = std::chrono::seconds(1);
    req_.lineage_id = apikeys::Uuid::random();
    req_.key_id = req_.lineage_id;
    req_.limits = &limit_;
    req_.limit_count = 1;
    benchmark::RegisterBenchmark("admission/redis-limiter", [this](benchmark::State& s) {
      for (auto _ : s) admit();
      if (!ok_) s.SkipWithError("an admission failed");
    })->UseRealTime();
    benchmark::RegisterBenchmark("floor/redis-get", [this](benchmark::State& s) {
      for (auto _ : s) get();
      if (!ok_) s.SkipWithError("GET failed");
    })->UseRealTime();
  }
  ~RedisAdmission() {
    if (c_ == nullptr) return;
    freeReplyObject(redisCommand(c_, "DEL %b", get_key_.data(), get_key_.size()));
    redisFree(c_);
  }
  RedisAdmission(const RedisAdmission&) = delete;
  RedisAdmission& operator=(const RedisAdmission&) = delete;

  // One more measurement of each, in pairs, and the TARGET line.
  void report() {
    if (c_ == nullptr || c_->err != 0) {
      std::printf("TARGET redis_admission_vs_rtt ratio=0 limit=1.2 FAIL (no Redis)\n");
      return;
    }
    paired_target(
        "redis_admission_vs_rtt", "redis admission", 1.2, [this] { admit(); }, [this] { get(); },
        ok_);
  }

 private:
  static apikeys::RedisLimiterOptions limiter_options(const std::string& host, int port,
                                                      const std::string& prefix) {
    apikeys::RedisLimiterOptions o;
    o.connection.host = host;
    o.connection.port = port;
    o.connection.prefix = prefix;
    o.connection.pool_size = 1;
    return o;
  }
  void admit() {
    try {
      if (limiter_.admit(req_).outcome != apikeys::AdmissionOutcome::admitted) ok_ = false;
    } catch (...) {
      ok_ = false;
    }
  }
  void get() {
    auto* r =
        static_cast<redisReply*>(redisCommand(c_, "GET %b", get_key_.data(), get_key_.size()));
    if (r == nullptr) {
      ok_ = false;
      return;
    }
    freeReplyObject(r);
  }

  std::string get_key_;
  apikeys::RedisLimiter limiter_;
  redisContext* c_ = nullptr;
  apikeys::RateLimit limit_;
  apikeys::AdmissionRequest req_;
  bool ok_ = true;  // false once a call failed
};

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(kPepper);
  const KeySet ks = make_keys(*hasher);

  // SQLite, cold: a file on local disk (page cache warm after the first pass).
  const auto dir = std::filesystem::temp_directory_path() /
                   ("apikeys-bench-servers-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  apikeys::SqliteStoreOptions sqo;
  sqo.durable = false;
  auto sqlite = std::make_shared<apikeys::SqliteStore>((dir / "keys.db").string(), sqo);
  for (const auto& r : ks.records) sqlite->insert(r);
  auto sqlite_cold = std::make_unique<apikeys::Validator>(sqlite, hasher, plain_options(nullptr));
  for (int threads : {1, 4}) {
    benchmark::RegisterBenchmark("validate/cold/sqlite",
                                 [&](benchmark::State& s) { validate_loop(s, *sqlite_cold, ks); })
        ->Threads(threads)
        ->UseRealTime();
  }

  const auto pg = env("APIKEYS_TEST_PG");
  const auto redis = env("APIKEYS_TEST_REDIS");
  std::shared_ptr<apikeys::PostgresStore> postgres;
  std::unique_ptr<apikeys::Validator> pg_cold, redis_hit, local_hit;
  std::unique_ptr<apikeys::KeyManager> manager;
  const std::string schema = "apikeys_bench_" + std::to_string(::getpid());
  const apikeys::Uuid revoke_account = apikeys::Uuid::random();
  std::vector<apikeys::Uuid> revocable;
  std::size_t next_revocable = 0;
  PGconn* pg_floor = nullptr;
  redisContext* redis_floor = nullptr;
  if (!pg) {
    std::cerr
        << "apikeys_bench_servers: APIKEYS_TEST_PG not set: PostgreSQL and Redis benchmarks skipped\n";
  } else {
    apikeys::PostgresStoreOptions po;
    po.schema = schema;
    po.pool_size = 4;
    postgres = std::make_shared<apikeys::PostgresStore>(*pg, po);
    for (const auto& r : ks.records) postgres->insert(r);
    pg_cold = std::make_unique<apikeys::Validator>(postgres, hasher, plain_options(nullptr));
    for (int threads : {1, 4}) {
      benchmark::RegisterBenchmark("validate/cold/postgres",
                                   [&](benchmark::State& s) { validate_loop(s, *pg_cold, ks); })
          ->Threads(threads)
          ->UseRealTime();
    }
    if (!redis) {
      std::cerr << "apikeys_bench_servers: APIKEYS_TEST_REDIS not set: Redis benchmarks skipped\n";
    } else {
      const auto colon = redis->rfind(':');
      apikeys::RedisCacheOptions ro;
      ro.host = redis->substr(0, colon);
      ro.port = std::atoi(redis->c_str() + colon + 1);
      ro.prefix = "apikeys-bench:" + std::to_string(::getpid()) + ":";
      ro.local_tier = false;
      ro.pool_size = 4;
      redis_hit = std::make_unique<apikeys::Validator>(
          postgres, hasher, plain_options(std::make_shared<apikeys::RedisCache>(ro)));
      ro.local_tier = true;
      auto two_tier = std::make_shared<apikeys::RedisCache>(ro);
      local_hit = std::make_unique<apikeys::Validator>(postgres, hasher, plain_options(two_tier));
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (!two_tier->local_tier_live() && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      for (const auto& k : ks.keys) {  // warm both: every measured validation is a hit
        (void)redis_hit->validate(k.public_key, k.secret);
        (void)local_hit->validate(k.public_key, k.secret);
      }
      for (int threads : {1, 4}) {
        benchmark::RegisterBenchmark("validate/hit/redis",
                                     [&](benchmark::State& s) { validate_loop(s, *redis_hit, ks); })
            ->Threads(threads)
            ->UseRealTime();
        benchmark::RegisterBenchmark("validate/hit/redis+local-tier",
                                     [&](benchmark::State& s) { validate_loop(s, *local_hit, ks); })
            ->Threads(threads)
            ->UseRealTime();
      }

      apikeys::KeyManagerOptions mo;
      mo.validation = plain_options(two_tier);
      manager = std::make_unique<apikeys::KeyManager>(postgres, hasher, mo);
      // Keys of their own, revoked round robin: revoking a revoked key does the same
      // work (the row update, the revision bump, the Redis erase and publish).
      for (int i = 0; i < 100; ++i) {
        apikeys::CreateRequest req;
        req.title = "revoked in the benchmark";
        revocable.push_back(manager->create(revoke_account, req).info.key_id);
      }
      benchmark::RegisterBenchmark("revoke/postgres+redis", [&](benchmark::State& s) {
        for (auto _ : s)
          manager->revoke(revoke_account, revocable[next_revocable++ % revocable.size()]);
        s.SetItemsProcessed(s.iterations());
      })->UseRealTime();
    }
    // Floors: one bare round trip to each server.
    pg_floor = PQconnectdb(pg->c_str());
    if (PQstatus(pg_floor) == CONNECTION_OK) {
      benchmark::RegisterBenchmark("floor/postgres-select-1", [&](benchmark::State& s) {
        for (auto _ : s) {
          PGresult* r = PQexec(pg_floor, "SELECT 1");
          if (PQresultStatus(r) != PGRES_TUPLES_OK) s.SkipWithError("SELECT 1 failed");
          PQclear(r);
        }
      })->UseRealTime();
    }
    if (redis) {
      const auto colon = redis->rfind(':');
      timeval tv{2, 0};
      redis_floor = redisConnectWithTimeout(redis->substr(0, colon).c_str(),
                                            std::atoi(redis->c_str() + colon + 1), tv);
      if (redis_floor != nullptr && redis_floor->err == 0) {
        benchmark::RegisterBenchmark("floor/redis-ping", [&](benchmark::State& s) {
          for (auto _ : s) {
            auto* r = static_cast<redisReply*>(redisCommand(redis_floor, "PING"));
            if (r == nullptr) {
              s.SkipWithError("PING failed");
              break;
            }
            freeReplyObject(r);
          }
        })->UseRealTime();
      }
    }
  }

  std::unique_ptr<RedisAdmission> admission;
  if (redis) {
    const auto colon = redis->rfind(':');
    admission = std::make_unique<RedisAdmission>(
        redis->substr(0, colon), std::atoi(redis->c_str() + colon + 1),
        "apikeys-bench-" + std::to_string(::getpid()) + ":");
  }

  benchmark::RunSpecifiedBenchmarks();
  if (admission) admission->report();
  // The server paths against their round trips, in pairs: a cold validation through
  // PostgreSQL against a libpq prepared point SELECT of the six columns a verdict needs
  // (binary results), and a Redis hit without the in-process tier against a hiredis GET
  // of a verdict-sized value, each on the same server.
  if (pg_cold && pg_floor != nullptr && PQstatus(pg_floor) == CONNECTION_OK) {
    const std::string point =
        "SELECT key_id, account_id, digest, pepper_id, status, expires_at "
        "FROM \"" +
        schema + "\".apikeys_keys WHERE public_key = $1";
    PGresult* prepared = PQprepare(pg_floor, "apikeys_bench_point", point.c_str(), 1, nullptr);
    const bool ready = PQresultStatus(prepared) == PGRES_COMMAND_OK;
    if (!ready) std::fprintf(stderr, "apikeys_bench_servers: %s", PQerrorMessage(pg_floor));
    PQclear(prepared);
    bool ok = ready;
    std::size_t path_i = 0;
    std::size_t floor_i = 0;
    paired_target(
        "postgres_cold_vs_rtt", "postgres cold validation", 1.3,
        [&] {
          const Key& k = ks.keys[path_i++ % ks.keys.size()];
          if (!pg_cold->validate(k.public_key, k.secret).ok()) ok = false;
        },
        [&] {
          const Key& k = ks.keys[floor_i++ % ks.keys.size()];
          const char* values[1] = {k.public_key.c_str()};
          PGresult* r =
              PQexecPrepared(pg_floor, "apikeys_bench_point", 1, values, nullptr, nullptr, 1);
          if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
            if (ok) std::fprintf(stderr, "apikeys_bench_servers: %s", PQerrorMessage(pg_floor));
            ok = false;
          }
          PQclear(r);
        },
        ok);
  } else {
    std::printf("TARGET postgres_cold_vs_rtt ratio=0 limit=1.3 FAIL (no PostgreSQL)\n");
  }
  if (redis_hit && redis_floor != nullptr && redis_floor->err == 0) {
    const std::string key = "apikeys-bench:" + std::to_string(::getpid()) + ":verdict";
    const std::string value(120, 'v');  // about a cached verdict's size
    freeReplyObject(
        redisCommand(redis_floor, "SET %b %b", key.data(), key.size(), value.data(), value.size()));
    // Warmed again: the verdicts cached before the Google Benchmark rows may have outlived
    // ttl_valid in a long run, and every timed call must be a hit.
    for (const auto& k : ks.keys) (void)redis_hit->validate(k.public_key, k.secret);
    bool ok = true;
    std::size_t path_i = 0;
    paired_target(
        "redis_hit_vs_rtt", "redis hit (no in-process tier)", 1.2,
        [&] {
          const Key& k = ks.keys[path_i++ % ks.keys.size()];
          if (!redis_hit->validate(k.public_key, k.secret).ok()) ok = false;
        },
        [&] {
          auto* r =
              static_cast<redisReply*>(redisCommand(redis_floor, "GET %b", key.data(), key.size()));
          if (r == nullptr || r->type != REDIS_REPLY_STRING) ok = false;
          if (r != nullptr) freeReplyObject(r);
        },
        ok);
    freeReplyObject(redisCommand(redis_floor, "DEL %b", key.data(), key.size()));
  } else {
    std::printf("TARGET redis_hit_vs_rtt ratio=0 limit=1.2 FAIL (no Redis)\n");
  }
  benchmark::Shutdown();
  admission.reset();

  if (pg_floor != nullptr) PQfinish(pg_floor);
  if (redis_floor != nullptr) redisFree(redis_floor);
  manager.reset();
  local_hit.reset();
  redis_hit.reset();
  pg_cold.reset();
  postgres.reset();
  if (pg) {  // drop the benchmark's schema
    PGconn* c = PQconnectdb(pg->c_str());
    if (PQstatus(c) == CONNECTION_OK) {
      PQsetNoticeProcessor(
          c, [](void*, const char*) {}, nullptr);
      PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS \"" + schema + "\" CASCADE").c_str()));
    }
    PQfinish(c);
  }
  sqlite_cold.reset();
  sqlite.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
