// apikeys_bench: measures validate() and the management calls against the floors their
// dependencies allow (HMAC-SHA256, a hash-map lookup, a raw SQLite point select), all in
// one run, then checks the targets from that same run and prints one
// `TARGET <name> ratio=<measured> limit=<limit> PASS|FAIL` line each.
//
//   apikeys_bench            full run (sizes of BENCHMARKS.md; minutes)
//   apikeys_bench --quick    tiny sizes, seconds; TARGET lines are informational
//                            (same as APIKEYS_BENCH_QUICK=1)
//   --skip=memory,threads,latency,scale,observer,admission
//                            leave sections out (their targets FAIL)
//   --profile=hit|hit_stats|hit_one_rate_limit|hit_leased_credits|hit_all_features|
//             sqlite_cold|sqlite_not_found|sqlite_wrong_secret|sqlite_floor
//             [--profile-calls=N] [--profile-reuse]
//                            one loop for callgrind (see BENCHMARKS.md)
//   --sqlite-memstatus=off   SQLite's memory statistics off for the process, as a host
//                            may set them (README.md, "Tuning")
//   APIKEYS_BENCH_CACHE_DIR=/tmp/x        keep the bulk-built SQLite files there
//   any --benchmark_* flag of Google Benchmark (e.g. --benchmark_filter=floor)
//
// Single-threaded timings come from Google Benchmark (median of repetitions, thread CPU
// time, repetitions interleaved at random so drift hits every benchmark alike). Thread
// scaling and latency percentiles are own loops timed with steady_clock. Exit status:
// 0, or 1 in the full mode when a target fails.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include <benchmark/benchmark.h>
#include <malloc.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "apikeys/memory_limiter.hpp"
#include "bench_support.hpp"
#include "siphash.hpp"

namespace ab = apikeys_bench;
using apikeys::ValidationCode;
using Clock = std::chrono::steady_clock;

namespace {

// ------------------------------------------------------------------------------------
// Configuration.

struct Config {
  bool quick = false;
  std::size_t store_keys = 100'000;   // cold paths, floors over SQLite
  std::size_t hit_keys = 10'000;      // cache-hit path, map floor
  std::size_t big_keys = 10'000'000;  // SQLite scaling (against store_keys)
  std::size_t memory_entries = 1'000'000;
  int reps = 5;
  double min_time = 0.5;  // seconds per Google Benchmark repetition
  std::size_t thread_ops_hit = 1'000'000;
  std::size_t thread_ops_cold = 200'000;
  std::size_t latency_calls_hit = 500'000;
  std::size_t latency_calls_cold = 200'000;
  std::set<std::string> skip;
  std::string cache_dir;

  void make_quick() {
    quick = true;
    store_keys = 5'000;
    hit_keys = 1'000;
    big_keys = 20'000;
    memory_entries = 20'000;
    reps = 3;
    min_time = 0.01;
    thread_ops_hit = 20'000;
    thread_ops_cold = 4'000;
    latency_calls_hit = 10'000;
    latency_calls_cold = 4'000;
  }
};

double elapsed_s(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

void progress(const std::string& what) {
  std::fprintf(stderr, "[apikeys_bench] %s\n", what.c_str());
}

// ------------------------------------------------------------------------------------
// Results of the run: Google Benchmark medians by name, and the own sections' values.

struct Timing {
  double cpu_ns = std::nan("");
  double real_ns = std::nan("");
  std::string label;
};

struct Results {
  std::map<std::string, Timing> bench;
  std::map<std::string, double> value;
  std::vector<std::string> errors;
  std::vector<std::string> notes;  // printed with the summary

  double cpu(const std::string& name) const {
    const auto it = bench.find(name);
    return it == bench.end() ? std::nan("") : it->second.cpu_ns;
  }
  double get(const std::string& name) const {
    const auto it = value.find(name);
    return it == value.end() ? std::nan("") : it->second;
  }
};

// Records the median of each benchmark's repetitions (or its only run) and passes
// everything on to the console.
class CapturingReporter final : public benchmark::ConsoleReporter {
 public:
  explicit CapturingReporter(Results& results)
      : benchmark::ConsoleReporter(benchmark::ConsoleReporter::OO_Tabular), results_(results) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      const std::string& name = run.run_name.function_name;
      if (run.error_occurred) {
        results_.errors.push_back(name + ": " + run.error_message);
        continue;
      }
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      const bool single = run.run_type == Run::RT_Iteration && run.repetitions <= 1;
      if (median || single) {
        const double to_ns = 1e9 / benchmark::GetTimeUnitMultiplier(run.time_unit);
        results_.bench[name] = Timing{run.GetAdjustedCPUTime() * to_ns,
                                      run.GetAdjustedRealTime() * to_ns, run.report_label};
      }
    }
    benchmark::ConsoleReporter::ReportRuns(runs);
  }

 private:
  Results& results_;
};

// ------------------------------------------------------------------------------------
// The world: data sets, stores, validators and floors, built once before timing.

constexpr std::uint64_t kSeedKeys = 0x61706b6579730001ULL;
constexpr std::uint64_t kSeedAbsent = 0x61706b6579730002ULL;
constexpr std::uint64_t kSeedBig = 0x61706b6579730003ULL;
constexpr std::uint64_t kSeedMemory = 0x61706b6579730004ULL;
constexpr std::size_t kAbsentKeys = 65'536;
constexpr std::size_t kMalformedKeys = 1'024;
// The branded format of the malformed_checksum case: "acme_pk_" + 32 + 6 characters.
constexpr std::string_view kBrand = "acme";
constexpr std::size_t kBrandedLength = 46;
// Cached verdicts must not expire while the run goes on (default ttl_valid is 120 s).
constexpr std::chrono::milliseconds kLongTtl{std::chrono::hours(2)};

std::size_t revoked_from(std::size_t n) { return n - n / 100; }

// A key's policy on the hit path (BENCHMARKS.md, "Key policy on the hit path"): five
// granted scopes, one a wildcard, of which a request requires three; and 1 KiB of metadata.
const std::vector<std::string> kGrantedScopes = {"billing:read", "orders.*", "profile.read",
                                                 "reports.daily", "users.read"};
const std::vector<std::string> kRequiredScopes = {"orders.write", "reports.daily", "users.read"};

// A JSON object of exactly `bytes` bytes (at least 16): {"note":"xx...x"}.
std::string metadata_of(std::size_t bytes) {
  const std::string head = "{\"note\":\"";
  return head + std::string(bytes - head.size() - 2, 'x') + "\"}";
}

std::string database_path(const Config& cfg, const ab::TempDir& tmp, std::size_t n) {
  const std::string name = "apikeys-bench-v1-" + std::to_string(n) + ".db";
  if (cfg.cache_dir.empty()) return tmp.file(name);
  std::filesystem::create_directories(cfg.cache_dir);
  return (std::filesystem::path(cfg.cache_dir) / name).string();
}

// A database of `keys` at the cached or temporary path, built if missing or stale.
std::string prepare_database(const Config& cfg, const ab::TempDir& tmp, const ab::KeySet& keys,
                             const apikeys::Hasher& hasher) {
  const std::string path = database_path(cfg, tmp, keys.size);
  if (ab::sqlite_file_matches(path, keys)) {
    progress("reusing " + path);
  } else {
    const auto t0 = Clock::now();
    ab::bulk_load_sqlite(path, keys, hasher, revoked_from(keys.size));
    std::ostringstream os;
    os << "built " << path << " (" << keys.size << " keys) in " << elapsed_s(t0) << " s";
    progress(os.str());
  }
  return path;
}

struct Floors {
  // HMAC
  EVP_MAC* mac = nullptr;
  EVP_MAC_CTX* mac_ctx = nullptr;
  SHA256_CTX inner{};
  SHA256_CTX outer{};
  // The secret's MAC on a MemoryCache hit: SipHash-2-4, 128-bit tag, random key.
  std::uint64_t mac_k0 = 0;
  std::uint64_t mac_k1 = 0;
  // Map
  std::unordered_map<std::string, apikeys::Verdict> map;
  std::vector<std::string> map_probes;  // separate strings: the compare reads real memory
  // SQLite
  sqlite3* db = nullptr;
  sqlite3_stmt* select = nullptr;

  Floors() = default;
  Floors(const Floors&) = delete;
  Floors& operator=(const Floors&) = delete;
  ~Floors() {
    sqlite3_finalize(select);
    sqlite3_close(db);
    EVP_MAC_CTX_free(mac_ctx);
    EVP_MAC_free(mac);
  }
};

void hmac_precomputed(const Floors& f, std::string_view msg, unsigned char* out) {
  unsigned char ih[SHA256_DIGEST_LENGTH];
  SHA256_CTX c = f.inner;
  SHA256_Update(&c, msg.data(), msg.size());
  SHA256_Final(ih, &c);
  c = f.outer;
  SHA256_Update(&c, ih, sizeof ih);
  SHA256_Final(out, &c);
}

bool hmac_evp_mac(const Floors& f, std::string_view msg, unsigned char* out) {
  std::size_t len = 0;
  // A null key re-initialises with the key set once at setup.
  return EVP_MAC_init(f.mac_ctx, nullptr, 0, nullptr) == 1 &&
         EVP_MAC_update(f.mac_ctx, reinterpret_cast<const unsigned char*>(msg.data()),
                        msg.size()) == 1 &&
         EVP_MAC_final(f.mac_ctx, out, &len, 32) == 1 && len == 32;
}

bool hmac_oneshot(std::string_view msg, unsigned char* out) {
  unsigned int len = 0;
  return HMAC(EVP_sha256(), ab::kPepper.data(), static_cast<int>(ab::kPepper.size()),
              reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out,
              &len) != nullptr &&
         len == 32;
}

// Reads the columns a verdict needs, as the floor of what SqliteStore::find must do.
bool sqlite_floor_select(const Floors& f, std::string_view pk, std::uint64_t& sink) {
  sqlite3_bind_text(f.select, 1, pk.data(), static_cast<int>(pk.size()), SQLITE_STATIC);
  bool found = false;
  if (sqlite3_step(f.select) == SQLITE_ROW) {
    found = true;
    const unsigned char* key_id = sqlite3_column_text(f.select, 0);
    const unsigned char* account = sqlite3_column_text(f.select, 1);
    const void* digest = sqlite3_column_blob(f.select, 2);
    const int digest_len = sqlite3_column_bytes(f.select, 2);
    sink += static_cast<std::uint64_t>(sqlite3_column_int64(f.select, 3)) +
            static_cast<std::uint64_t>(sqlite3_column_int(f.select, 4)) +
            static_cast<std::uint64_t>(sqlite3_column_type(f.select, 5)) + key_id[0] + account[0] +
            static_cast<const unsigned char*>(digest)[0] + static_cast<std::uint64_t>(digest_len);
  }
  sqlite3_reset(f.select);
  return found;
}

// The rate limit of the admission benchmarks: as many requests a second as a limit may
// allow, so it never refuses one.
apikeys::RateLimit never_refusing_limit() {
  apikeys::RateLimit l;
  l.name = "requests";
  l.limit = apikeys::KeyPolicyLimits::kMaxRateLimitValue;
  l.period = std::chrono::seconds(1);
  return l;
}

struct World {
  const Config& cfg;
  ab::TempDir tmp;
  std::shared_ptr<apikeys::HmacSha256Hasher> hasher;
  ab::KeySet keys;              // store_keys; the last 1 % revoked
  ab::KeySet absent;            // in no store
  std::vector<char> malformed;  // right length, one character outside base62
  // Branded keys: public keys of the right shape whose checksum is wrong (its last
  // character changed), and secrets with a right checksum.
  std::vector<char> branded_bad_sum;
  std::vector<char> branded_secrets;
  std::vector<apikeys::Digest> digests;
  std::size_t valid_count = 0;
  std::size_t hit_count = 0;
  std::string sqlite_path;
  std::shared_ptr<apikeys::SqliteStore> sqlite;
  std::shared_ptr<apikeys::MemoryStore> memory;
  std::shared_ptr<apikeys::MemoryCache> hit_cache;
  std::unique_ptr<apikeys::Validator> hit;             // defaults (last-use writer on)
  std::unique_ptr<apikeys::Validator> hit_writer_off;  // same cache, record_last_use off
  // validate/hit with an apikeys::Stats observing it: same store, cache and options.
  std::shared_ptr<apikeys::Stats> hit_stats_observer;
  std::unique_ptr<apikeys::Validator> hit_stats;
  // The hit path for keys with a policy: the hit keys again, in a MemoryStore of their
  // own with 5 granted scopes (one a wildcard), or 1 KiB of metadata; own caches.
  std::shared_ptr<apikeys::MemoryStore> scoped_store;
  std::unique_ptr<apikeys::Validator> hit_scoped;
  apikeys::Requirements three_scopes;
  std::shared_ptr<apikeys::MemoryStore> metadata_store;
  std::unique_ptr<apikeys::Validator> hit_metadata;
  // Admission on the hit path: the hit keys again, each with one rate limit that never
  // refuses (MemoryLimiter); and with credits too, a huge balance spent through leases.
  std::shared_ptr<apikeys::MemoryStore> limited_store;
  std::unique_ptr<apikeys::Validator> hit_limited;
  std::shared_ptr<apikeys::MemoryStore> leased_store;
  std::unique_ptr<apikeys::Validator> hit_leased;
  // Every hit-path feature at once (all_features_validator()), presented with the
  // 3-scope requirement.
  std::unique_ptr<apikeys::Validator> hit_all_features;
  std::unique_ptr<apikeys::Validator> memory_cold;
  // format = KeyFormat::branded(kBrand), also_accept = {KeyFormat{}}, on `memory`.
  std::unique_ptr<apikeys::Validator> memory_branded;
  std::unique_ptr<apikeys::Validator> sqlite_cold;
  std::unique_ptr<apikeys::KeyManager> sqlite_manager;
  std::unique_ptr<apikeys::KeyManager> memory_manager;
  std::unique_ptr<apikeys::KeyManager> create_manager;
  Floors floors;
  // Scaling: the same cold validator over a bigger file.
  ab::KeySet big_keys;
  std::size_t big_valid = 0;
  std::string big_path;
  std::shared_ptr<apikeys::SqliteStore> big;
  std::unique_ptr<apikeys::Validator> big_cold;

  explicit World(const Config& c) : cfg(c) {}

  std::string_view malformed_key(std::size_t i) const noexcept {
    return {malformed.data() + (i % kMalformedKeys) * ab::kKeyLength, ab::kKeyLength};
  }
  std::string_view branded_bad_sum_key(std::size_t i) const noexcept {
    return {branded_bad_sum.data() + (i % kMalformedKeys) * kBrandedLength, kBrandedLength};
  }
  std::string_view branded_secret(std::size_t i) const noexcept {
    return {branded_secrets.data() + (i % kMalformedKeys) * kBrandedLength, kBrandedLength};
  }

  void build();
  void build_branded();
  void build_policy_hits();
  void build_admission_hits();
  void build_floors();
  void build_big();
};

apikeys::ValidatorOptions cold_options() {
  apikeys::ValidatorOptions o;
  // The 100k / 1M warm-up passes would otherwise write every row's last_used_at; the
  // writer's cost is measured on its own in the latency section.
  o.record_last_use = false;
  return o;
}

apikeys::ValidatorOptions hit_options(std::shared_ptr<apikeys::MemoryCache> cache) {
  apikeys::ValidatorOptions o;
  o.cache = std::move(cache);
  o.ttl_valid = kLongTtl;
  return o;
}

// Every hit-path feature at once: keys [0, count) with the 5 granted scopes and the rate
// limit in a MemoryStore and a cache of their own, Stats attached, and two formats
// accepted (branded first, the keys' own second, as while a new format rolls out).
std::unique_ptr<apikeys::Validator> all_features_validator(
    const ab::KeySet& keys, std::size_t count, const std::vector<apikeys::Digest>& digests,
    std::shared_ptr<apikeys::HmacSha256Hasher> hasher) {
  const apikeys::RateLimit never_refuses = never_refusing_limit();
  auto store = std::make_shared<apikeys::MemoryStore>();
  for (std::size_t i = 0; i < count; ++i) {
    apikeys::KeyRecord r = ab::record_of(keys, i, digests[i], false);
    r.info.scopes = kGrantedScopes;
    r.info.rate_limits = {never_refuses};
    store->insert(std::move(r));
  }
  apikeys::ValidatorOptions o = hit_options(std::make_shared<apikeys::MemoryCache>());
  o.observers = {std::make_shared<apikeys::Stats>()};
  o.format = apikeys::KeyFormat::branded(kBrand);
  o.also_accept = {apikeys::KeyFormat{}};
  return std::make_unique<apikeys::Validator>(store, std::move(hasher), o);
}

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("setup check failed: " + what);
}

// Validates every key in [from, to) once and checks the verdicts.
void pass_over(const apikeys::Validator& v, const ab::KeySet& keys, std::size_t from,
               std::size_t to, ValidationCode code, const std::string& what) {
  std::size_t bad = 0;
  for (std::size_t i = from; i < to; ++i) {
    bad += v.validate(keys.public_key(i), keys.secret(i)).code != code;
  }
  expect(bad == 0, what + ": " + std::to_string(bad) + " unexpected verdicts");
}

void World::build() {
  auto t0 = Clock::now();
  hasher = std::make_shared<apikeys::HmacSha256Hasher>(ab::kPepper);
  keys = ab::make_keys(cfg.store_keys, kSeedKeys);
  absent = ab::make_keys(kAbsentKeys, kSeedAbsent);
  digests = ab::digests_of(keys, *hasher);
  malformed.resize(kMalformedKeys * ab::kKeyLength);
  for (std::size_t i = 0; i < kMalformedKeys; ++i) {
    std::memcpy(malformed.data() + i * ab::kKeyLength, absent.public_key(i).data(), ab::kKeyLength);
    malformed[i * ab::kKeyLength + ab::kKeyLength - 1] = '-';  // found only at the last char
  }
  valid_count = revoked_from(keys.size);
  hit_count = std::min(cfg.hit_keys, valid_count);

  sqlite_path = prepare_database(cfg, tmp, keys, *hasher);
  sqlite = std::make_shared<apikeys::SqliteStore>(sqlite_path);
  memory = std::make_shared<apikeys::MemoryStore>();
  for (std::size_t i = 0; i < keys.size; ++i) {
    memory->insert(ab::record_of(keys, i, digests[i], i >= valid_count));
  }

  ab::warm_page_cache(sqlite_path);
  memory_cold = std::make_unique<apikeys::Validator>(memory, hasher, cold_options());
  sqlite_cold = std::make_unique<apikeys::Validator>(sqlite, hasher, cold_options());
  pass_over(*memory_cold, keys, 0, valid_count, ValidationCode::valid, "memory cold");
  pass_over(*memory_cold, keys, valid_count, keys.size, ValidationCode::revoked, "memory revoked");
  pass_over(*sqlite_cold, keys, 0, valid_count, ValidationCode::valid, "sqlite cold");
  pass_over(*sqlite_cold, keys, valid_count, keys.size, ValidationCode::revoked, "sqlite revoked");
  pass_over(*sqlite_cold, absent, 0, 1000, ValidationCode::not_found, "sqlite not_found");
  build_branded();

  hit_cache = std::make_shared<apikeys::MemoryCache>();
  hit = std::make_unique<apikeys::Validator>(sqlite, hasher, hit_options(hit_cache));
  auto off = hit_options(hit_cache);
  off.record_last_use = false;
  hit_writer_off = std::make_unique<apikeys::Validator>(sqlite, hasher, off);
  // First use of each hit key: fills the cache and records last use once, so the timed
  // runs see the steady state (cached verdict, key already throttled).
  pass_over(*hit, keys, 0, hit_count, ValidationCode::valid, "hit warm-up");
  hit->flush_last_use();
  expect(hit_cache->size() >= hit_count, "the cache holds the hit keys");
  hit_stats_observer = std::make_shared<apikeys::Stats>();
  auto observed = hit_options(hit_cache);
  observed.observers = {hit_stats_observer};
  hit_stats = std::make_unique<apikeys::Validator>(sqlite, hasher, observed);
  pass_over(*hit_stats, keys, 0, hit_count, ValidationCode::valid, "hit_stats warm-up");
  hit_stats->flush_last_use();
  ab::checkpoint(sqlite_path);
  build_policy_hits();
  build_admission_hits();

  apikeys::KeyManagerOptions mo;
  mo.validation.record_last_use = false;
  sqlite_manager = std::make_unique<apikeys::KeyManager>(sqlite, hasher, mo);
  memory_manager = std::make_unique<apikeys::KeyManager>(memory, hasher, mo);
  apikeys::SqliteStoreOptions durable;
  durable.durable = true;
  create_manager = std::make_unique<apikeys::KeyManager>(
      std::make_shared<apikeys::SqliteStore>(tmp.file("create.db"), durable), hasher, mo);

  build_floors();
  std::ostringstream os;
  os << "world of " << keys.size << " keys ready in " << elapsed_s(t0) << " s";
  progress(os.str());
}

// Branded keys made from the absent keys' random parts (public) and the stored keys'
// (secret), each followed by its checksum; the public one's last character is then
// changed to another base62 character, so its shape is right and its checksum wrong.
void World::build_branded() {
  const apikeys::KeyFormat branded = apikeys::KeyFormat::branded(kBrand);
  branded_bad_sum.resize(kMalformedKeys * kBrandedLength);
  branded_secrets.resize(kMalformedKeys * kBrandedLength);
  std::vector<std::pair<std::string, std::string>> good;  // right checksums
  for (std::size_t i = 0; i < kMalformedKeys; ++i) {
    std::string pk = branded.public_prefix + std::string(absent.public_key(i).substr(3));
    apikeys::append_key_checksum(pk);
    std::string sk = branded.secret_prefix + std::string(keys.secret(i).substr(3));
    apikeys::append_key_checksum(sk);
    expect(pk.size() == kBrandedLength && sk.size() == kBrandedLength, "branded key length");
    expect(branded.is_public_key(pk) && branded.is_secret_key(sk), "branded keys accepted");
    good.emplace_back(pk, sk);
    char& last = pk.back();
    last = last == 'z' ? '0' : last == '9' ? 'A' : last == 'Z' ? 'a' : static_cast<char>(last + 1);
    expect(!branded.is_public_key(pk), "a changed checksum is refused");
    std::memcpy(branded_bad_sum.data() + i * kBrandedLength, pk.data(), kBrandedLength);
    std::memcpy(branded_secrets.data() + i * kBrandedLength, sk.data(), kBrandedLength);
  }
  apikeys::ValidatorOptions o = cold_options();
  o.format = branded;
  o.also_accept = {apikeys::KeyFormat{}};
  memory_branded = std::make_unique<apikeys::Validator>(memory, hasher, o);
  pass_over(*memory_branded, keys, 0, 1000, ValidationCode::valid, "branded: legacy keys");
  std::size_t bad = 0;
  for (std::size_t i = 0; i < kMalformedKeys; ++i) {
    bad +=
        memory_branded->validate(good[i].first, good[i].second).code != ValidationCode::not_found;
    bad += memory_branded->validate(branded_bad_sum_key(i), branded_secret(i)).code !=
           ValidationCode::malformed;
  }
  expect(bad == 0, "branded: " + std::to_string(bad) + " unexpected verdicts");
}

void World::build_policy_hits() {
  three_scopes.scopes = kRequiredScopes;
  const std::string metadata = metadata_of(1024);
  scoped_store = std::make_shared<apikeys::MemoryStore>();
  metadata_store = std::make_shared<apikeys::MemoryStore>();
  for (std::size_t i = 0; i < hit_count; ++i) {
    apikeys::KeyRecord scoped = ab::record_of(keys, i, digests[i], false);
    scoped.info.scopes = kGrantedScopes;
    scoped_store->insert(std::move(scoped));
    apikeys::KeyRecord described = ab::record_of(keys, i, digests[i], false);
    described.info.metadata = metadata;
    metadata_store->insert(std::move(described));
  }
  hit_scoped = std::make_unique<apikeys::Validator>(
      scoped_store, hasher, hit_options(std::make_shared<apikeys::MemoryCache>()));
  hit_metadata = std::make_unique<apikeys::Validator>(
      metadata_store, hasher, hit_options(std::make_shared<apikeys::MemoryCache>()));
  // Warm-up as for validate/hit: every key's verdict cached, its last use recorded.
  std::size_t bad = 0;
  for (std::size_t i = 0; i < hit_count; ++i) {
    const auto s = hit_scoped->validate(keys.public_key(i), keys.secret(i), three_scopes);
    bad += s.code != ValidationCode::valid || s.scopes != kGrantedScopes;
    const auto m = hit_metadata->validate(keys.public_key(i), keys.secret(i));
    bad += m.code != ValidationCode::valid || m.metadata != metadata;
  }
  expect(bad == 0, "policy hit warm-up: " + std::to_string(bad) + " unexpected verdicts");
  hit_scoped->flush_last_use();
  hit_metadata->flush_last_use();
}

// Admission on the hit path (BENCHMARKS.md, "Rate limits and credits on the hit path").
void World::build_admission_hits() {
  const apikeys::RateLimit never_refuses = never_refusing_limit();
  apikeys::Credits huge;
  huge.remaining = apikeys::KeyPolicyLimits::kMaxCredits;
  limited_store = std::make_shared<apikeys::MemoryStore>();
  leased_store = std::make_shared<apikeys::MemoryStore>();
  for (std::size_t i = 0; i < hit_count; ++i) {
    apikeys::KeyRecord limited = ab::record_of(keys, i, digests[i], false);
    limited.info.rate_limits = {never_refuses};
    limited_store->insert(limited);
    limited.info.credits = huge;
    leased_store->insert(std::move(limited));
  }
  hit_limited = std::make_unique<apikeys::Validator>(
      limited_store, hasher, hit_options(std::make_shared<apikeys::MemoryCache>()));
  hit_all_features = all_features_validator(keys, hit_count, digests, hasher);
  apikeys::MemoryLimiterOptions lo;
  lo.lease_size = 1000;
  auto leased = hit_options(std::make_shared<apikeys::MemoryCache>());
  leased.limiter = std::make_shared<apikeys::MemoryLimiter>(leased_store, lo);
  hit_leased = std::make_unique<apikeys::Validator>(leased_store, hasher, leased);
  // Warm-up as for validate/hit: every key's verdict cached, its last use recorded, its
  // rate-limit state allocated and its first lease taken.
  std::size_t bad = 0;
  for (std::size_t i = 0; i < hit_count; ++i) {
    const auto l = hit_limited->validate(keys.public_key(i), keys.secret(i));
    bad += l.code != ValidationCode::valid || l.limits.size() != 1;
    const auto c = hit_leased->validate(keys.public_key(i), keys.secret(i));
    bad += c.code != ValidationCode::valid || c.limits.size() != 1 || !c.credits_remaining;
    const auto a = hit_all_features->validate(keys.public_key(i), keys.secret(i), three_scopes);
    bad += a.code != ValidationCode::valid || a.limits.size() != 1;
  }
  expect(bad == 0, "admission hit warm-up: " + std::to_string(bad) + " unexpected verdicts");
  hit_limited->flush_last_use();
  hit_leased->flush_last_use();
  hit_all_features->flush_last_use();
}

// SQLite's floor: the store's file, a connection set up as the store sets up its readers,
// and the point SELECT of the six columns a verdict needs.
void open_sqlite_floor(Floors& f, const std::string& sqlite_path) {
  expect(sqlite3_open_v2(sqlite_path.c_str(), &f.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                         nullptr) == SQLITE_OK,
         "open SQLite floor connection");
  const apikeys::SqliteStoreOptions store_defaults;
  const std::string pragmas = "PRAGMA cache_size = -" +
                              std::to_string(store_defaults.cache_size_kib) +
                              "; PRAGMA mmap_size = " + std::to_string(store_defaults.mmap_size) +
                              "; PRAGMA query_only = 1;";
  sqlite3_exec(f.db, pragmas.c_str(), nullptr, nullptr, nullptr);
  expect(sqlite3_prepare_v2(f.db,
                            "SELECT key_id, account_id, digest, pepper_id, status, expires_at"
                            " FROM api_keys WHERE public_key = ?1",
                            -1, &f.select, nullptr) == SQLITE_OK,
         "prepare SQLite floor");
}

void World::build_floors() {
  Floors& f = floors;
  // HMAC: the precomputed inner/outer states (RFC 2104 with a 32-byte key).
  unsigned char k[64] = {};
  std::memcpy(k, ab::kPepper.data(), ab::kPepper.size());
  unsigned char pad[64];
  for (std::size_t i = 0; i < 64; ++i) pad[i] = static_cast<unsigned char>(k[i] ^ 0x36);
  SHA256_Init(&f.inner);
  SHA256_Update(&f.inner, pad, sizeof pad);
  for (std::size_t i = 0; i < 64; ++i) pad[i] = static_cast<unsigned char>(k[i] ^ 0x5c);
  SHA256_Init(&f.outer);
  SHA256_Update(&f.outer, pad, sizeof pad);
  std::uint64_t sip_key[2];
  expect(RAND_bytes(reinterpret_cast<unsigned char*>(sip_key), sizeof sip_key) == 1,
         "RAND_bytes for the SipHash floor");
  f.mac_k0 = sip_key[0];
  f.mac_k1 = sip_key[1];

  f.mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  expect(f.mac != nullptr, "EVP_MAC_fetch(HMAC)");
  f.mac_ctx = EVP_MAC_CTX_new(f.mac);
  char digest_name[] = "SHA256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest_name, 0),
                               OSSL_PARAM_construct_end()};
  expect(EVP_MAC_init(f.mac_ctx, reinterpret_cast<const unsigned char*>(ab::kPepper.data()),
                      ab::kPepper.size(), params) == 1,
         "EVP_MAC_init");

  // The three floors and the library agree on one digest.
  const std::string_view s = keys.secret(0);
  unsigned char a[32];
  unsigned char b[32];
  unsigned char c[32];
  hmac_precomputed(f, s, a);
  expect(hmac_evp_mac(f, s, b) && hmac_oneshot(s, c), "HMAC floors run");
  expect(std::memcmp(a, b, 32) == 0 && std::memcmp(a, c, 32) == 0 &&
             std::memcmp(a, digests[0].bytes.data(), 32) == 0,
         "HMAC floors agree with HmacSha256Hasher");

  for (std::size_t i = 0; i < hit_count; ++i) {
    f.map.emplace(std::string(keys.public_key(i)),
                  apikeys::Verdict{ValidationCode::valid, ab::account_of(i), keys.key_ids[i]});
    f.map_probes.emplace_back(keys.public_key(i));
  }

  open_sqlite_floor(f, sqlite_path);
  std::uint64_t sink = 0;
  std::size_t found = 0;
  for (std::size_t i = 0; i < valid_count; ++i)
    found += sqlite_floor_select(f, keys.public_key(i), sink);
  expect(found == valid_count, "SQLite floor finds every key");
}

void World::build_big() {
  const auto t0 = Clock::now();
  big_keys = ab::make_keys(cfg.big_keys, kSeedBig);
  big_valid = revoked_from(big_keys.size);
  big_path = prepare_database(cfg, tmp, big_keys, *hasher);
  big = std::make_shared<apikeys::SqliteStore>(big_path);
  big_cold = std::make_unique<apikeys::Validator>(big, hasher, cold_options());
  ab::warm_page_cache(big_path);
  // A sample: every key would be 10 million cold validations.
  pass_over(*big_cold, big_keys, 0, std::min<std::size_t>(big_valid, 100'000),
            ValidationCode::valid, "big sqlite cold");
  std::ostringstream os;
  os << "scaling store of " << big_keys.size << " keys ready in " << elapsed_s(t0) << " s";
  progress(os.str());
}

// ------------------------------------------------------------------------------------
// Single-threaded benchmarks (Google Benchmark).

using Pick = std::function<std::pair<std::string_view, std::string_view>(ab::Rng&)>;

benchmark::internal::Benchmark* register_validate(const std::string& name,
                                                  const apikeys::Validator* v, Pick pick,
                                                  ValidationCode code, std::string label = {}) {
  return benchmark::RegisterBenchmark(
      name.c_str(),
      [v, pick = std::move(pick), code, label = std::move(label)](benchmark::State& st) {
        ab::Rng rng(0x5eed);
        std::size_t bad = 0;
        for (auto _ : st) {
          const auto [pk, sk] = pick(rng);
          const apikeys::ValidationResult r = v->validate(pk, sk);
          bad += r.code != code;
          benchmark::DoNotOptimize(r);
        }
        if (bad != 0) st.SkipWithError("unexpected verdicts");
        if (!label.empty()) st.SetLabel(label);
      });
}

void register_benchmarks(World& w) {
  const auto ns = benchmark::kNanosecond;
  const auto n_hit = static_cast<std::uint32_t>(w.hit_count);
  const auto n_valid = static_cast<std::uint32_t>(w.valid_count);
  const auto n_revoked = static_cast<std::uint32_t>(w.keys.size - w.valid_count);
  const auto n_absent = static_cast<std::uint32_t>(w.absent.size);
  const ab::KeySet* keys = &w.keys;
  const ab::KeySet* absent = &w.absent;
  const World* world = &w;

  // Floors.
  benchmark::RegisterBenchmark("floor/hmac_oneshot", [keys, n_hit](benchmark::State& st) {
    ab::Rng rng(1);
    unsigned char out[32];
    for (auto _ : st) {
      hmac_oneshot(keys->secret(rng.below(n_hit)), out);
      benchmark::DoNotOptimize(out);
    }
  })->Unit(ns);
  benchmark::RegisterBenchmark("floor/hmac_evp_mac_reused", [world, keys,
                                                             n_hit](benchmark::State& st) {
    ab::Rng rng(1);
    unsigned char out[32];
    for (auto _ : st) {
      hmac_evp_mac(world->floors, keys->secret(rng.below(n_hit)), out);
      benchmark::DoNotOptimize(out);
    }
  })->Unit(ns);
  benchmark::RegisterBenchmark("floor/hmac_precomputed", [world, keys,
                                                          n_hit](benchmark::State& st) {
    ab::Rng rng(1);
    unsigned char out[32];
    for (auto _ : st) {
      hmac_precomputed(world->floors, keys->secret(rng.below(n_hit)), out);
      benchmark::DoNotOptimize(out);
    }
  })->Unit(ns);
  // What a MemoryCache hit computes of the secret instead of an HMAC (its proof; see
  // src/memory_cache_probe.hpp): a lower floor than the HMAC for the hit targets.
  benchmark::RegisterBenchmark("floor/secret_mac", [world, keys, n_hit](benchmark::State& st) {
    ab::Rng rng(1);
    for (auto _ : st) {
      const apikeys::detail::Sip128 t = apikeys::detail::siphash128<2, 4>(
          world->floors.mac_k0, world->floors.mac_k1, keys->secret(rng.below(n_hit)));
      benchmark::DoNotOptimize(t);
    }
  })->Unit(ns);
  benchmark::RegisterBenchmark("floor/map_lookup", [world, n_hit](benchmark::State& st) {
    ab::Rng rng(1);
    std::size_t missing = 0;
    for (auto _ : st) {
      const auto it = world->floors.map.find(world->floors.map_probes[rng.below(n_hit)]);
      missing += it == world->floors.map.end();
      benchmark::DoNotOptimize(it);
    }
    if (missing != 0) st.SkipWithError("map floor missed");
    st.SetLabel(std::to_string(n_hit) + " keys");
  })->Unit(ns);
  benchmark::RegisterBenchmark("floor/sqlite_select", [world, keys, n_valid](benchmark::State& st) {
    ab::Rng rng(1);
    std::uint64_t sink = 0;
    std::size_t missing = 0;
    for (auto _ : st) {
      missing += !sqlite_floor_select(world->floors, keys->public_key(rng.below(n_valid)), sink);
    }
    benchmark::DoNotOptimize(sink);
    if (missing != 0) st.SkipWithError("SQLite floor missed");
    st.SetLabel(std::to_string(keys->size) + " rows");
  })->Unit(ns);

  // Not floors of a path, but what explains them: the same select inside one long read
  // transaction (no per-statement locking), and one bare system call.
  benchmark::RegisterBenchmark("floor/sqlite_select_in_txn", [world, keys,
                                                              n_valid](benchmark::State& st) {
    ab::Rng rng(1);
    std::uint64_t sink = 0;
    std::size_t missing = 0;
    sqlite3_exec(world->floors.db, "BEGIN", nullptr, nullptr, nullptr);
    for (auto _ : st) {
      missing += !sqlite_floor_select(world->floors, keys->public_key(rng.below(n_valid)), sink);
    }
    sqlite3_exec(world->floors.db, "COMMIT", nullptr, nullptr, nullptr);
    benchmark::DoNotOptimize(sink);
    if (missing != 0) st.SkipWithError("SQLite floor missed");
  })->Unit(ns);
  benchmark::RegisterBenchmark("floor/syscall_getppid", [](benchmark::State& st) {
    for (auto _ : st) benchmark::DoNotOptimize(::getppid());
  })->Unit(ns);

  // Library parts, to see where a path's time goes.
  benchmark::RegisterBenchmark("part/hasher_hash", [world, keys, n_hit](benchmark::State& st) {
    ab::Rng rng(1);
    for (auto _ : st) {
      const apikeys::Digest d = world->hasher->hash(keys->secret(rng.below(n_hit)));
      benchmark::DoNotOptimize(d);
    }
  })->Unit(ns);
  benchmark::RegisterBenchmark("part/memory_cache_get", [world, keys, n_hit](benchmark::State& st) {
    ab::Rng rng(1);
    std::size_t missing = 0;
    for (auto _ : st) {
      const std::uint32_t i = rng.below(n_hit);
      const auto v = world->hit_cache->get(keys->public_key(i), world->digests[i]);
      missing += !v.has_value();
      benchmark::DoNotOptimize(v);
    }
    if (missing != 0) st.SkipWithError("cache missed");
  })->Unit(ns);
  benchmark::RegisterBenchmark("part/memory_store_find", [world, keys,
                                                          n_valid](benchmark::State& st) {
    ab::Rng rng(1);
    for (auto _ : st) {
      const auto r = world->memory->find(keys->public_key(rng.below(n_valid)));
      benchmark::DoNotOptimize(r);
    }
  })->Unit(ns);
  benchmark::RegisterBenchmark("part/memory_store_find_miss", [world, absent,
                                                               n_absent](benchmark::State& st) {
    ab::Rng rng(1);
    for (auto _ : st) {
      const auto r = world->memory->find(absent->public_key(rng.below(n_absent)));
      benchmark::DoNotOptimize(r);
    }
  })->Unit(ns);
  benchmark::RegisterBenchmark("part/sqlite_store_find", [world, keys,
                                                          n_valid](benchmark::State& st) {
    ab::Rng rng(1);
    for (auto _ : st) {
      const auto r = world->sqlite->find(keys->public_key(rng.below(n_valid)));
      benchmark::DoNotOptimize(r);
    }
  })->Unit(ns);
  // What the Validator reads on a miss: the same lookup, the verdict's fields only.
  benchmark::RegisterBenchmark("part/sqlite_store_find_for_validation", [world, keys, n_valid](
                                                                            benchmark::State& st) {
    ab::Rng rng(1);
    for (auto _ : st) {
      const auto r = world->sqlite->find_for_validation(keys->public_key(rng.below(n_valid)));
      benchmark::DoNotOptimize(r);
    }
  })->Unit(ns);

  // validate().
  auto valid_hit = [keys, n_hit](ab::Rng& rng) {
    const std::uint32_t i = rng.below(n_hit);
    return std::make_pair(keys->public_key(i), keys->secret(i));
  };
  register_validate("validate/hit", w.hit.get(), valid_hit, ValidationCode::valid,
                    std::to_string(n_hit) + " keys")
      ->Unit(ns);
  register_validate("validate/hit_writer_off", w.hit_writer_off.get(), valid_hit,
                    ValidationCode::valid)
      ->Unit(ns);
  register_validate("validate/hit_stats", w.hit_stats.get(), valid_hit, ValidationCode::valid,
                    "apikeys::Stats attached")
      ->Unit(ns);
  benchmark::RegisterBenchmark("validate/hit_3_scopes", [world, valid_hit](benchmark::State& st) {
    ab::Rng rng(0x5eed);
    std::size_t bad = 0;
    for (auto _ : st) {
      const auto [pk, sk] = valid_hit(rng);
      const apikeys::ValidationResult r = world->hit_scoped->validate(pk, sk, world->three_scopes);
      bad += r.code != ValidationCode::valid;
      benchmark::DoNotOptimize(r);
    }
    if (bad != 0) st.SkipWithError("unexpected verdicts");
    st.SetLabel("5 granted, 3 required");
  })->Unit(ns);
  benchmark::RegisterBenchmark("validate/hit_all_features", [world,
                                                             valid_hit](benchmark::State& st) {
    ab::Rng rng(0x5eed);
    std::size_t bad = 0;
    apikeys::ValidationResult r;
    for (auto _ : st) {
      const auto [pk, sk] = valid_hit(rng);
      world->hit_all_features->validate(pk, sk, world->three_scopes, r);
      bad += r.code != ValidationCode::valid;
      benchmark::DoNotOptimize(r);
    }
    if (bad != 0) st.SkipWithError("unexpected verdicts");
    st.SetLabel("3 of 5 scopes, 1 rate limit, Stats, 2 formats");
  })->Unit(ns);
  register_validate("validate/hit_1k_metadata", w.hit_metadata.get(), valid_hit,
                    ValidationCode::valid, "1024-byte metadata")
      ->Unit(ns);
  register_validate("validate/hit_one_rate_limit", w.hit_limited.get(), valid_hit,
                    ValidationCode::valid, "MemoryLimiter, 1 limit")
      ->Unit(ns);
  register_validate("validate/hit_leased_credits", w.hit_leased.get(), valid_hit,
                    ValidationCode::valid, "1 limit, credits, lease_size 1000")
      ->Unit(ns);

  auto valid = [keys, n_valid](ab::Rng& rng) {
    const std::uint32_t i = rng.below(n_valid);
    return std::make_pair(keys->public_key(i), keys->secret(i));
  };
  auto wrong_secret = [keys, absent, n_valid, n_absent](ab::Rng& rng) {
    return std::make_pair(keys->public_key(rng.below(n_valid)),
                          absent->secret(rng.below(n_absent)));
  };
  auto not_found = [absent, n_absent](ab::Rng& rng) {
    const std::uint32_t i = rng.below(n_absent);
    return std::make_pair(absent->public_key(i), absent->secret(i));
  };
  auto malformed = [world, keys, n_valid](ab::Rng& rng) {
    const std::uint32_t i = rng.below(n_valid);
    return std::make_pair(world->malformed_key(i), keys->secret(i));
  };
  // Same draws as `malformed`: a branded public key of the right shape whose checksum
  // is wrong, and a branded secret whose checksum is right.
  auto malformed_checksum = [world, n_valid](ab::Rng& rng) {
    const std::uint32_t i = rng.below(n_valid);
    return std::make_pair(world->branded_bad_sum_key(i), world->branded_secret(i));
  };
  auto revoked = [keys, n_valid, n_revoked](ab::Rng& rng) {
    const std::size_t i = n_valid + rng.below(n_revoked);
    return std::make_pair(keys->public_key(i), keys->secret(i));
  };
  const std::string size_label = std::to_string(w.keys.size) + " keys";
  for (const auto& [store, v] : {std::make_pair(std::string("memory"), w.memory_cold.get()),
                                 std::make_pair(std::string("sqlite"), w.sqlite_cold.get())}) {
    const std::string p = "validate/" + store + "_cold/";
    register_validate(p + "valid", v, valid, ValidationCode::valid, size_label)->Unit(ns);
    register_validate(p + "wrong_secret", v, wrong_secret, ValidationCode::wrong_secret)->Unit(ns);
    register_validate(p + "not_found", v, not_found, ValidationCode::not_found)->Unit(ns);
    register_validate(p + "malformed", v, malformed, ValidationCode::malformed)->Unit(ns);
    register_validate(p + "revoked", v, revoked, ValidationCode::revoked)->Unit(ns);
  }
  register_validate("validate/memory_cold/malformed_checksum", w.memory_branded.get(),
                    malformed_checksum, ValidationCode::malformed,
                    "branded + legacy formats, wrong checksum")
      ->Unit(ns);
  if (w.big_cold) {
    const auto n_big = static_cast<std::uint32_t>(w.big_valid);
    const ab::KeySet* big = &w.big_keys;
    register_validate(
        "validate/sqlite_cold_big/valid", w.big_cold.get(),
        [big, n_big](ab::Rng& rng) {
          const std::uint32_t i = rng.below(n_big);
          return std::make_pair(big->public_key(i), big->secret(i));
        },
        ValidationCode::valid, std::to_string(big->size) + " keys")
        ->Unit(ns);
  }

  // Management calls.
  const auto accounts = static_cast<std::uint32_t>(w.keys.size / ab::kKeysPerAccount);
  for (const auto& [store, m] : {std::make_pair(std::string("sqlite"), w.sqlite_manager.get()),
                                 std::make_pair(std::string("memory"), w.memory_manager.get())}) {
    benchmark::RegisterBenchmark(("list/" + store + "_100").c_str(), [m, accounts](
                                                                         benchmark::State& st) {
      ab::Rng rng(1);
      std::size_t bad = 0;
      for (auto _ : st) {
        const auto keys_of = m->list(ab::account_of(rng.below(accounts) * ab::kKeysPerAccount));
        bad += keys_of.size() != ab::kKeysPerAccount;
        benchmark::DoNotOptimize(keys_of);
      }
      if (bad != 0) st.SkipWithError("list did not return 100 keys");
    })->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("create/sqlite_durable", [world](benchmark::State& st) {
    apikeys::CreateRequest req;
    req.title = "benchmark key title!";  // 20 characters
    std::size_t n = 0;
    for (auto _ : st) {
      const apikeys::CreatedKey k = world->create_manager->create(ab::account_of(n++), req);
      benchmark::DoNotOptimize(k.info.key_id);
    }
  })->Unit(benchmark::kMicrosecond);
}

// find_keys throughput: source-code-like text (many '_', "pk_"/"sk_" in identifiers)
// with a branded key every ~64 KiB and a legacy one every ~1 MiB; bytes/s is the rate.
// 100 MB in the full mode, 1 MB in the quick one. Its floor: memchr() for a byte the
// text does not hold, one read of every byte.
void register_scan_benchmark(const Config& cfg) {
  const std::size_t size = cfg.quick ? 1'000'000 : 100'000'000;
  static const char* const kLines[] = {
      "  const auto pk_ = make_pk_(sk_, other_value);  // keep pk_ and sk_ apart\n",
      "static int parse_http_header(const char* buf, size_t buf_len, struct hdr* out_hdr);\n",
      "    if (self._sk_cache is None and not FLAG_use_disk_cache): return self._load()\n",
      "SELECT key_id, public_key, secret_key_hash FROM api_keys WHERE account_id = $1;\n",
      "        total_bytes += read_chunk(fd, &buffer[offset], MAX_CHUNK_SIZE - offset);\n",
      "# TODO(someone): retry with exponential back-off when the upstream returns 503\n",
  };
  auto text = std::make_shared<std::string>();
  text->reserve(size + 256);
  ab::Rng rng(0x7363616e);  // "scan"
  std::size_t next_key = 0;
  std::size_t keys = 0;
  const apikeys::KeyFormat fmt = apikeys::KeyFormat::branded("acme");
  apikeys::CsprngKeyGenerator gen;
  while (text->size() < size) {
    if (text->size() >= next_key) {
      const bool legacy = keys % 16 == 15;
      const apikeys::KeyPair p = gen.generate(legacy ? apikeys::KeyFormat{} : fmt);
      *text += "API_KEY = \"";
      *text += p.public_key;
      *text += "\"\n";
      next_key += 48 * 1024 + rng.below(32 * 1024);
      ++keys;
    }
    *text += kLines[rng.below(sizeof kLines / sizeof kLines[0])];
  }
  const std::string label =
      std::to_string(text->size() / 1'000'000) + " MB, " + std::to_string(keys) + " keys";
  benchmark::RegisterBenchmark("scan/find_keys", [text, keys, label](benchmark::State& st) {
    std::size_t bad = 0;
    for (auto _ : st) {
      const std::vector<apikeys::FoundKey> found = apikeys::find_keys(*text);
      bad += found.size() != keys;
      benchmark::DoNotOptimize(found.data());
    }
    if (bad != 0) st.SkipWithError("find_keys did not find every key");
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) *
                         static_cast<std::int64_t>(text->size()));
    st.SetLabel(label);
  })->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("scan/floor_memchr", [text, label](benchmark::State& st) {
    for (auto _ : st) benchmark::DoNotOptimize(std::memchr(text->data(), 1, text->size()));
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) *
                         static_cast<std::int64_t>(text->size()));
    st.SetLabel(label);
  })->Unit(benchmark::kMillisecond);
}

// ------------------------------------------------------------------------------------
// Memory: allocator bytes per cached verdict and per MemoryStore key.

void memory_section(const Config& cfg, Results& res) {
  const std::size_t n = cfg.memory_entries;
  progress("memory: " + std::to_string(n) + " entries");
  const ab::KeySet keys = ab::make_keys(n, kSeedMemory);
  std::vector<apikeys::Digest> digests(n);
  ab::Rng rng(kSeedMemory);
  for (auto& d : digests) {
    for (std::size_t i = 0; i < d.bytes.size(); i += 8) {
      const std::uint64_t v = rng.next();
      std::memcpy(d.bytes.data() + i, &v, 8);
    }
    d.pepper_id = 1;
  }
  malloc_trim(0);
  {
    const std::size_t heap0 = ab::heap_bytes_in_use();
    const std::size_t rss0 = ab::rss_bytes();
    auto cache = std::make_shared<apikeys::MemoryCache>();  // default options
    for (std::size_t i = 0; i < n; ++i) {
      const std::string_view pk = keys.public_key(i);
      const std::uint64_t token = cache->fill_token(pk);
      cache->put(pk, digests[i],
                 apikeys::Verdict{ValidationCode::valid, ab::account_of(i), keys.key_ids[i]},
                 kLongTtl, token);
    }
    const double held = static_cast<double>(cache->size());
    res.value["memory/cache_entries"] = held;
    res.value["memory/cache_bytes_per_verdict"] =
        static_cast<double>(ab::heap_bytes_in_use() - heap0) / held;
    res.value["memory/cache_rss_per_verdict"] =
        (static_cast<double>(ab::rss_bytes()) - static_cast<double>(rss0)) / held;
    res.value["memory/cache_counted_per_verdict"] = static_cast<double>(cache->bytes()) / held;
  }
  malloc_trim(0);
  {
    // The same with 1 KiB of metadata per key, on fewer keys so that the default
    // max_bytes (256 MiB) evicts none.
    const std::size_t m = std::min<std::size_t>(n, 100'000);
    apikeys::Verdict v{ValidationCode::valid};
    v.metadata = metadata_of(1024);
    v.has_policy = true;
    const std::size_t heap0 = ab::heap_bytes_in_use();
    const std::size_t rss0 = ab::rss_bytes();
    auto cache = std::make_shared<apikeys::MemoryCache>();  // default options
    for (std::size_t i = 0; i < m; ++i) {
      const std::string_view pk = keys.public_key(i);
      const std::uint64_t token = cache->fill_token(pk);
      v.account_id = ab::account_of(i);
      v.key_id = keys.key_ids[i];
      cache->put(pk, digests[i], v, kLongTtl, token);
    }
    const double held = static_cast<double>(cache->size());
    res.value["memory/cache_1k_metadata_entries"] = held;
    res.value["memory/cache_bytes_per_verdict_1k_metadata"] =
        static_cast<double>(ab::heap_bytes_in_use() - heap0) / held;
    res.value["memory/cache_rss_per_verdict_1k_metadata"] =
        (static_cast<double>(ab::rss_bytes()) - static_cast<double>(rss0)) / held;
    res.value["memory/cache_counted_per_verdict_1k_metadata"] =
        static_cast<double>(cache->bytes()) / held;
  }
  malloc_trim(0);
  {
    const std::size_t heap0 = ab::heap_bytes_in_use();
    const std::size_t rss0 = ab::rss_bytes();
    auto store = std::make_shared<apikeys::MemoryStore>();
    for (std::size_t i = 0; i < n; ++i) store->insert(ab::record_of(keys, i, digests[i], false));
    const double held = static_cast<double>(store->size());
    res.value["memory/store_keys"] = held;
    res.value["memory/store_bytes_per_key"] =
        static_cast<double>(ab::heap_bytes_in_use() - heap0) / held;
    res.value["memory/store_rss_per_key"] =
        (static_cast<double>(ab::rss_bytes()) - static_cast<double>(rss0)) / held;
  }
  malloc_trim(0);
  // MemoryLimiter (default options): one rate limit per lineage, every state live (a
  // limit of one a day, spent), at 1,000, 10,000 and 100,000 lineages: bytes per
  // state held, the tables' slack included.
  for (const std::size_t states : {std::size_t{1'000}, std::size_t{10'000}, std::size_t{100'000}}) {
    if (states > n) break;
    const std::size_t heap0 = ab::heap_bytes_in_use();
    apikeys::MemoryLimiter limiter(nullptr);
    std::vector<apikeys::RateLimit> daily(1);
    daily[0].name = "per-day";
    daily[0].limit = 1;
    daily[0].period = std::chrono::hours(24);
    apikeys::AdmissionRequest r;
    r.limits = daily.data();
    r.limit_count = 1;
    r.now = apikeys::from_unix_millis(1'767'225'600'000);
    for (std::size_t i = 0; i < states; ++i) {
      r.lineage_id = keys.key_ids[i];
      r.key_id = keys.key_ids[i];
      (void)limiter.admit(r);
    }
    res.value["memory/limiter_bytes_per_state_" + std::to_string(states)] =
        static_cast<double>(ab::heap_bytes_in_use() - heap0) / static_cast<double>(states);
  }
  malloc_trim(0);
}

// ------------------------------------------------------------------------------------
// Two threads against one: throughput of the same validator, own timed loop.

struct Throughput {
  double per_s = 0;
  double process_cores = 0;       // CPU seconds this process used per wall second
  double machine_busy_cores = 0;  // the same for the whole machine (every process)
  double machine_idle_cores = 0;  // the machine's cores left idle, per wall second
};

Throughput throughput(const apikeys::Validator& v, const ab::KeySet& keys, std::size_t key_count,
                      std::size_t ops, int threads, std::uint64_t seed, std::size_t& bad) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<std::size_t> wrong{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ab::Rng rng(seed + static_cast<std::uint64_t>(t) * 7919);
      const auto n = static_cast<std::uint32_t>(key_count);
      std::size_t local_bad = 0;
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (std::size_t i = 0; i < ops; ++i) {
        const std::uint32_t k = rng.below(n);
        local_bad += !v.validate(keys.public_key(k), keys.secret(k)).ok();
      }
      wrong.fetch_add(local_bad);
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const ab::CpuSample c0 = ab::cpu_sample();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  const double s = elapsed_s(t0);
  const ab::CpuSample c1 = ab::cpu_sample();
  bad += wrong.load();
  Throughput out;
  out.per_s = static_cast<double>(ops) * threads / s;
  out.process_cores = (c1.process_s - c0.process_s) / s;
  out.machine_busy_cores = (c1.machine_busy_s - c0.machine_busy_s) / s;
  out.machine_idle_cores =
      ((c1.machine_total_s - c0.machine_total_s) - (c1.machine_busy_s - c0.machine_busy_s)) / s;
  return out;
}

// The targets use wall-clock throughput. The CPU columns are the evidence of what the
// machine allowed: on 2 shared cores, two threads cannot scale while other processes
// hold one of them (process_cores well under 2 while machine_busy_cores is ~2).
void threads_section(const Config& cfg, const World& w, Results& res) {
  struct Case {
    std::string name;
    const apikeys::Validator* v;
    std::size_t key_count;
    std::size_t ops;
  };
  const Case cases[] = {{"hit", w.hit.get(), w.hit_count, cfg.thread_ops_hit},
                        {"sqlite_cold", w.sqlite_cold.get(), w.valid_count, cfg.thread_ops_cold}};
  for (const Case& c : cases) {
    progress("threads: " + c.name);
    std::size_t bad = 0;
    // Opens and warms the second reader connection before timing.
    (void)throughput(*c.v, w.keys, c.key_count, c.ops / 4, 2, 99, bad);
    std::map<std::string, std::vector<double>> series;
    for (int r = 0; r < cfg.reps; ++r) {
      const auto seed = static_cast<std::uint64_t>(r) * 1000;
      Throughput t1;
      Throughput t2;
      if (r % 2 == 0) {
        t1 = throughput(*c.v, w.keys, c.key_count, c.ops, 1, seed, bad);
        t2 = throughput(*c.v, w.keys, c.key_count, c.ops, 2, seed + 1, bad);
      } else {
        t2 = throughput(*c.v, w.keys, c.key_count, c.ops, 2, seed + 1, bad);
        t1 = throughput(*c.v, w.keys, c.key_count, c.ops, 1, seed, bad);
      }
      series["one_per_s"].push_back(t1.per_s);
      series["two_per_s"].push_back(t2.per_s);
      series["ratio"].push_back(t2.per_s / t1.per_s);
      series["one_process_cores"].push_back(t1.process_cores);
      series["two_process_cores"].push_back(t2.process_cores);
      series["two_machine_busy_cores"].push_back(t2.machine_busy_cores);
      series["two_machine_idle_cores"].push_back(t2.machine_idle_cores);
      // Validations per CPU-second of two threads over one (1.0: the code itself scales).
      series["cpu_efficiency_two_vs_one"].push_back((t2.per_s / t2.process_cores) /
                                                    (t1.per_s / t1.process_cores));
    }
    if (bad != 0)
      res.errors.push_back("threads " + c.name + ": " + std::to_string(bad) + " not valid");
    for (const auto& [k, v] : series) res.value["threads/" + c.name + "/" + k] = ab::median(v);
  }
}

// ------------------------------------------------------------------------------------
// Latency percentiles with the last_used_at writer on and off.

struct Percentiles {
  double p50;
  double p99;
  double p999;
};

Percentiles latency_run(const apikeys::Validator& v, const ab::KeySet& keys, std::size_t key_count,
                        std::size_t calls, std::uint64_t seed, std::vector<std::int64_t>& buf,
                        std::size_t& bad) {
  buf.resize(calls);
  ab::Rng rng(seed);
  const auto n = static_cast<std::uint32_t>(key_count);
  for (std::size_t c = 0; c < calls; ++c) {
    const std::uint32_t k = rng.below(n);
    const auto t0 = Clock::now();
    const apikeys::ValidationResult r = v.validate(keys.public_key(k), keys.secret(k));
    const auto t1 = Clock::now();
    buf[c] = std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
    bad += !r.ok();
  }
  std::sort(buf.begin(), buf.end());
  return {ab::percentile_sorted(buf, 0.50), ab::percentile_sorted(buf, 0.99),
          ab::percentile_sorted(buf, 0.999)};
}

std::int64_t rows_used_since(const std::string& path, std::int64_t since_ms) {
  sqlite3* db = nullptr;
  std::int64_t n = -1;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM api_keys WHERE last_used_at >= ?1", -1, &s,
                           nullptr) == SQLITE_OK) {
      sqlite3_bind_int64(s, 1, since_ms);
      if (sqlite3_step(s) == SQLITE_ROW) n = sqlite3_column_int64(s, 0);
    }
    sqlite3_finalize(s);
  }
  sqlite3_close(db);
  return n;
}

void latency_section(const Config& cfg, const World& w, Results& res) {
  struct Case {
    std::string name;
    std::shared_ptr<apikeys::MemoryCache> cache;  // null: the SQLite cold path
    std::size_t key_count;
    std::size_t calls;
  };
  const Case cases[] = {{"hit", w.hit_cache, w.hit_count, cfg.latency_calls_hit},
                        {"sqlite_cold", nullptr, w.valid_count, cfg.latency_calls_cold}};
  std::vector<std::int64_t> buf;
  for (const Case& c : cases) {
    progress("latency: " + c.name);
    std::map<std::string, std::vector<double>> series;
    std::vector<double> written;
    std::size_t bad = 0;
    for (int r = 0; r < cfg.reps; ++r) {
      for (int k = 0; k < 2; ++k) {
        const bool writer = (k == 0) == (r % 2 == 0);  // alternate which goes first
        apikeys::ValidatorOptions o;
        o.cache = c.cache;
        o.ttl_valid = kLongTtl;
        o.record_last_use = writer;
        // A fresh validator (empty throttle) and a short interval, so every key's first
        // use in the run, and again each second, becomes a write. The flush interval is
        // the library's default (1 s): what a service runs with. The writer is then
        // active throughout (the SQLite run writes ~70,000 rows while it is measured);
        // BENCHMARKS.md also gives the figures with 50 ms flushes, 20 times the commits.
        o.last_use_interval = std::chrono::seconds(1);
        const std::int64_t start_ms = apikeys::to_unix_millis(std::chrono::system_clock::now());
        Percentiles p{};
        {
          apikeys::Validator v(w.sqlite, w.hasher, o);
          p = latency_run(v, w.keys, c.key_count, c.calls, 77 + static_cast<std::uint64_t>(r), buf,
                          bad);
        }
        const std::string tag = writer ? "on" : "off";
        series[tag + "/p50"].push_back(p.p50);
        series[tag + "/p99"].push_back(p.p99);
        series[tag + "/p999"].push_back(p.p999);
        if (writer)
          written.push_back(static_cast<double>(rows_used_since(w.sqlite_path, start_ms)));
        ab::checkpoint(w.sqlite_path);
      }
    }
    if (bad != 0)
      res.errors.push_back("latency " + c.name + ": " + std::to_string(bad) + " not valid");
    for (const auto& [k, v] : series) res.value["latency/" + c.name + "/" + k] = ab::median(v);
    res.value["latency/" + c.name + "/rows_written"] = ab::median(written);
  }
}

// ------------------------------------------------------------------------------------
// Observing the hit path, paired: blocks of the same keys through validate/hit and
// validate/hit_stats in alternation (which of the two goes first alternates too), each
// block timed in thread CPU time; the ratio of each pair, and the median over the
// pairs. A preemption or a neighbour's burst on the shared machine then lands in one
// block and moves one pair's ratio, instead of one benchmark's whole repetition.

double thread_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

// Interleaved pairs of blocks: `block` calls through `plain`, then as many through
// `other` over the same keys (which goes first alternates), thread CPU time per block.
// Records under `prefix`: the pairs, each side's median and fastest block per call, and
// the median of the pairs' ratios (other / plain), `prefix` + "/" + `ratio_name`. The
// Google Benchmark rows of two paths run in different repetitions; on a shared machine
// their ratio moves by more than a target's margin within minutes, the pairs' far less.
// With `reuse`, both sides answer into one ValidationResult per block (the hot-path
// form of validate()) rather than return a fresh one per call.
void paired_blocks(const Config& cfg, const World& w, const apikeys::Validator& plain,
                   const apikeys::Validator& other, const std::string& prefix,
                   const std::string& plain_name, const std::string& other_name,
                   const std::string& ratio_name, Results& res, bool reuse = false) {
  const std::size_t pairs = cfg.quick ? 21 : 401;
  const std::size_t block = cfg.quick ? 200 : 2000;
  const auto n = static_cast<std::uint32_t>(w.hit_count);
  std::vector<double> ratios;
  std::vector<double> plain_ns;
  std::vector<double> other_ns;
  std::size_t bad = 0;
  for (std::size_t p = 0; p < pairs; ++p) {
    double ns[2] = {0, 0};  // [0] plain, [1] other
    for (int j = 0; j < 2; ++j) {
      const int which = (p % 2 == 0) ? j : 1 - j;
      const apikeys::Validator& v = which == 1 ? other : plain;
      ab::Rng rng(0x0b5e + p);  // the same keys for both blocks of a pair
      apikeys::ValidationResult out;
      const apikeys::Requirements none;
      const double t0 = thread_cpu_ns();
      if (reuse) {
        for (std::size_t c = 0; c < block; ++c) {
          const std::uint32_t k = rng.below(n);
          v.validate(w.keys.public_key(k), w.keys.secret(k), none, out);
          bad += !out.ok();
        }
      } else {
        for (std::size_t c = 0; c < block; ++c) {
          const std::uint32_t k = rng.below(n);
          bad += !v.validate(w.keys.public_key(k), w.keys.secret(k)).ok();
        }
      }
      ns[which] = thread_cpu_ns() - t0;
    }
    ratios.push_back(ns[1] / ns[0]);
    plain_ns.push_back(ns[0] / static_cast<double>(block));
    other_ns.push_back(ns[1] / static_cast<double>(block));
  }
  expect(bad == 0, prefix + " pairs: " + std::to_string(bad) + " unexpected verdicts");
  res.value[prefix + "/pairs"] = static_cast<double>(pairs);
  res.value[prefix + "/" + plain_name + "_cpu_ns"] = ab::median(plain_ns);
  res.value[prefix + "/" + other_name + "_cpu_ns"] = ab::median(other_ns);
  res.value[prefix + "/" + ratio_name] = ab::median(ratios);
  // The fastest block of each: what each costs when nothing else got in the way.
  res.value[prefix + "/" + plain_name + "_min_cpu_ns"] =
      *std::min_element(plain_ns.begin(), plain_ns.end());
  res.value[prefix + "/" + other_name + "_min_cpu_ns"] =
      *std::min_element(other_ns.begin(), other_ns.end());
}

void observer_section(const Config& cfg, const World& w, Results& res) {
  progress("observer pairs");
  paired_blocks(cfg, w, *w.hit, *w.hit_stats, "observer", "hit", "hit_stats", "hit_stats_vs_hit",
                res);
}

// The admission targets from pairs (paired_blocks()): a hit with one in-process rate
// limit, and with leased credits as well, each against the plain hit.
void admission_section(const Config& cfg, const World& w, Results& res) {
  progress("admission pairs");
  paired_blocks(cfg, w, *w.hit, *w.hit_limited, "admission", "hit", "hit_one_rate_limit",
                "hit_one_rate_limit_vs_hit", res);
  paired_blocks(cfg, w, *w.hit, *w.hit_leased, "admission_leased", "hit", "hit_leased_credits",
                "hit_leased_credits_vs_hit", res);
  paired_blocks(cfg, w, *w.hit, *w.hit_limited, "admission_reused", "hit", "hit_one_rate_limit",
                "hit_one_rate_limit_vs_hit", res, true);
  paired_blocks(cfg, w, *w.hit, *w.hit_leased, "admission_leased_reused", "hit",
                "hit_leased_credits", "hit_leased_credits_vs_hit", res, true);
}

// ------------------------------------------------------------------------------------
// Targets.

struct Target {
  std::string name;
  double measured;
  double limit;
  bool at_least;  // true: measured >= limit passes; false: measured <= limit
  // Thread targets: the CPU cores the process used while two threads ran, and the cores
  // the machine left idle meanwhile (medians over the repetitions). A missed target reads
  // SKIP (cores) only when the process used fewer than kMinCores and the machine had
  // fewer idle cores than the process lacked of two: other processes held them. A
  // process that used less while cores sat idle (threads waiting on a lock) FAILs.
  double cores = std::numeric_limits<double>::quiet_NaN();
  double idle_cores = std::numeric_limits<double>::quiet_NaN();
};

constexpr double kMinCores = 1.8;

std::vector<Target> targets(const Results& r) {
  // A MemoryCache hit computes a SipHash-2-4 of the secret, not its HMAC: the floor of
  // the secret's check is the lower of the two (the HMAC's while the hit computed one).
  // Either one missing (a filter left it out) leaves the floor unknown, never the other.
  const double hmac = r.cpu("floor/hmac_precomputed");
  const double mac = r.cpu("floor/secret_mac");
  const double hit_floor = std::isnan(hmac) || std::isnan(mac)
                               ? std::numeric_limits<double>::quiet_NaN()
                               : std::min(hmac, mac) + r.cpu("floor/map_lookup");
  const double sqlite_floor = r.cpu("floor/sqlite_select") + r.cpu("floor/hmac_precomputed");
  return {
      // The second round (BENCHMARKS.md, "Targets"): the plain hit, the cost of last-use
      // tracking, and every hit-path feature at once, against the same floors.
      {"hit_vs_floor", r.cpu("validate/hit") / hit_floor, 1.3, false},
      {"hit_last_use_cost", r.cpu("validate/hit") / r.cpu("validate/hit_writer_off"), 1.1, false},
      {"hit_all_features", r.cpu("validate/hit_all_features") / hit_floor, 1.6, false},
      // SQLite cold against a point SELECT in one long read transaction (no HMAC: the
      // floor of the read alone).
      {"sqlite_cold_vs_txn_floor",
       r.cpu("validate/sqlite_cold/valid") / r.cpu("floor/sqlite_select_in_txn"), 1.25, false},
      {"sqlite_cold_vs_floor", r.cpu("validate/sqlite_cold/valid") / sqlite_floor, 1.3, false},
      {"two_threads_hit", r.get("threads/hit/ratio"), 1.9, true,
       r.get("threads/hit/two_process_cores"), r.get("threads/hit/two_machine_idle_cores")},
      {"two_threads_sqlite_cold", r.get("threads/sqlite_cold/ratio"), 1.7, true,
       r.get("threads/sqlite_cold/two_process_cores"),
       r.get("threads/sqlite_cold/two_machine_idle_cores")},
      {"p99_writer_on_vs_off_hit", r.get("latency/hit/on/p99") / r.get("latency/hit/off/p99"), 1.3,
       false},
      {"p99_writer_on_vs_off_sqlite_cold",
       r.get("latency/sqlite_cold/on/p99") / r.get("latency/sqlite_cold/off/p99"), 1.3, false},
      {"cache_bytes_per_verdict", r.get("memory/cache_bytes_per_verdict"), 128, false},
      {"memory_store_bytes_per_key", r.get("memory/store_bytes_per_key"), 512, false},
      // SQLite cold at 10,000,000 keys against 100,000 (full mode; quick: 20,000 vs 5,000).
      {"sqlite_cold_10m_vs_100k",
       r.cpu("validate/sqlite_cold_big/valid") / r.cpu("validate/sqlite_cold/valid"), 1.6, false},
      // A wrong checksum costs little more than a bad character (the legacy format).
      {"malformed_checksum_vs_malformed",
       r.cpu("validate/memory_cold/malformed_checksum") / r.cpu("validate/memory_cold/malformed"),
       1.2, false},
      // Admission on a cache hit: one in-process rate limit; and credits through leases.
      {"hit_one_rate_limit_vs_hit", r.cpu("validate/hit_one_rate_limit") / r.cpu("validate/hit"),
       1.25, false},
      {"hit_leased_credits_vs_hit", r.cpu("validate/hit_leased_credits") / r.cpu("validate/hit"),
       1.3, false},
      // Observing the hit path: apikeys::Stats attached (the event, its clock reads, the
      // counters).
      {"hit_stats_vs_hit", r.cpu("validate/hit_stats") / r.cpu("validate/hit"), 1.15, false},
      // The same, from interleaved pairs of blocks (observer_section).
      {"hit_stats_vs_hit_paired", r.get("observer/hit_stats_vs_hit"), 1.15, false},
      // The admission targets from interleaved pairs of blocks (admission_section).
      {"hit_one_rate_limit_vs_hit_paired", r.get("admission/hit_one_rate_limit_vs_hit"), 1.25,
       false},
      {"hit_leased_credits_vs_hit_paired", r.get("admission_leased/hit_leased_credits_vs_hit"), 1.3,
       false},
      // The same pairs through the hot-path form, validate(..., ValidationResult& out).
      {"hit_one_rate_limit_vs_hit_reused", r.get("admission_reused/hit_one_rate_limit_vs_hit"),
       1.25, false},
      {"hit_leased_credits_vs_hit_reused",
       r.get("admission_leased_reused/hit_leased_credits_vs_hit"), 1.3, false},
  };
}

// ------------------------------------------------------------------------------------
// Profiling: a small world and one loop, for valgrind --tool=callgrind with
// --toggle-collect='*profile_loop*' (instruction counts are stable on a noisy machine).

[[gnu::noinline]] std::size_t profile_loop(const apikeys::Validator& v, const ab::KeySet& pks,
                                           const ab::KeySet& sks, std::size_t key_count,
                                           std::size_t calls, ValidationCode expected, bool reuse,
                                           const apikeys::Requirements& req) {
  ab::Rng rng(42);
  std::size_t as_expected = 0;
  const auto n = static_cast<std::uint32_t>(key_count);
  if (reuse) {
    apikeys::ValidationResult out;
    for (std::size_t c = 0; c < calls; ++c) {
      const std::uint32_t k = rng.below(n);
      v.validate(pks.public_key(k), sks.secret(k), req, out);
      as_expected += out.code == expected;
    }
    return as_expected;
  }
  for (std::size_t c = 0; c < calls; ++c) {
    const std::uint32_t k = rng.below(n);
    as_expected += v.validate(pks.public_key(k), sks.secret(k), req).code == expected;
  }
  return as_expected;
}

// The SQLite floor's loop (floor/sqlite_select_in_txn), for comparing a cold
// validation's instructions with the SELECT it is measured against.
[[gnu::noinline]] std::size_t profile_loop_sqlite_floor(const Floors& f, const ab::KeySet& keys,
                                                        std::size_t key_count, std::size_t calls) {
  ab::Rng rng(42);
  std::uint64_t sink = 0;
  std::size_t found = 0;
  const auto n = static_cast<std::uint32_t>(key_count);
  for (std::size_t c = 0; c < calls; ++c)
    found += sqlite_floor_select(f, keys.public_key(rng.below(n)), sink);
  benchmark::DoNotOptimize(sink);
  return found;
}

// A MemoryStore of `keys` as build_admission_hits() makes them (one rate limit; and
// credits when `credits`), with the validator over it, warmed up.
std::unique_ptr<apikeys::Validator> admission_profile_validator(
    const ab::KeySet& keys, std::shared_ptr<apikeys::HmacSha256Hasher> hasher, bool credits) {
  const apikeys::RateLimit never_refuses = never_refusing_limit();
  auto store = std::make_shared<apikeys::MemoryStore>();
  const std::vector<apikeys::Digest> digests = ab::digests_of(keys, *hasher);
  for (std::size_t i = 0; i < keys.size; ++i) {
    apikeys::KeyRecord r = ab::record_of(keys, i, digests[i], false);
    r.info.rate_limits = {never_refuses};
    if (credits) {
      r.info.credits = apikeys::Credits();
      r.info.credits->remaining = apikeys::KeyPolicyLimits::kMaxCredits;
    }
    store->insert(std::move(r));
  }
  apikeys::ValidatorOptions o = hit_options(std::make_shared<apikeys::MemoryCache>());
  if (credits) {
    apikeys::MemoryLimiterOptions lo;
    lo.lease_size = 1000;
    o.limiter = std::make_shared<apikeys::MemoryLimiter>(store, lo);
  }
  return std::make_unique<apikeys::Validator>(store, std::move(hasher), o);
}

int profile(const std::string& what, std::size_t calls, bool reuse) {
  const bool stats = what == "hit_stats";
  const bool hit = what == "hit" || stats;
  const bool not_found = what == "sqlite_not_found";
  const bool wrong_secret = what == "sqlite_wrong_secret";
  const bool limited = what == "hit_one_rate_limit";
  const bool leased = what == "hit_leased_credits";
  const bool all = what == "hit_all_features";
  const bool floor = what == "sqlite_floor";
  if (!hit && !not_found && !wrong_secret && !limited && !leased && !all && !floor &&
      what != "sqlite_cold") {
    std::fprintf(stderr,
                 "apikeys_bench: --profile=hit|hit_stats|hit_one_rate_limit|hit_leased_credits|"
                 "hit_all_features|sqlite_cold|sqlite_not_found|sqlite_wrong_secret|"
                 "sqlite_floor\n");
    return 2;
  }
  apikeys::Requirements req;
  if (all) req.scopes = kRequiredScopes;
  constexpr std::size_t kKeys = 10'000;
  ab::TempDir tmp;
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(ab::kPepper);
  const ab::KeySet keys = ab::make_keys(kKeys, kSeedKeys);
  const ab::KeySet absent = ab::make_keys(kKeys, kSeedAbsent);
  if (floor) {
    const std::string path = tmp.file("profile.db");
    ab::bulk_load_sqlite(path, keys, *hasher, kKeys);
    Floors f;
    open_sqlite_floor(f, path);
    sqlite3_exec(f.db, "BEGIN", nullptr, nullptr, nullptr);
    profile_loop_sqlite_floor(f, keys, kKeys, kKeys);  // warm-up, as the validations'
    const std::size_t found = profile_loop_sqlite_floor(f, keys, kKeys, calls);
    sqlite3_exec(f.db, "COMMIT", nullptr, nullptr, nullptr);
    std::printf("profile sqlite_floor: %zu calls, %zu found\n", calls, found);
    return found == calls ? 0 : 1;
  }
  std::unique_ptr<apikeys::Validator> v;
  if (limited || leased) {
    v = admission_profile_validator(keys, hasher, leased);
  } else if (all) {
    v = all_features_validator(keys, keys.size, ab::digests_of(keys, *hasher), hasher);
  } else {
    const std::string path = tmp.file("profile.db");
    ab::bulk_load_sqlite(path, keys, *hasher, kKeys);
    auto store = std::make_shared<apikeys::SqliteStore>(path);
    apikeys::ValidatorOptions o = cold_options();
    if (hit) o = hit_options(std::make_shared<apikeys::MemoryCache>());
    if (stats) o.observers = {std::make_shared<apikeys::Stats>()};
    v = std::make_unique<apikeys::Validator>(store, hasher, o);
  }
  pass_over(*v, keys, 0, kKeys, ValidationCode::valid, "profile warm-up");
  v->flush_last_use();
  const ab::KeySet& pks = not_found ? absent : keys;
  const ab::KeySet& sks = not_found || wrong_secret ? absent : keys;
  const ValidationCode expected = not_found      ? ValidationCode::not_found
                                  : wrong_secret ? ValidationCode::wrong_secret
                                                 : ValidationCode::valid;
  const std::size_t ok = profile_loop(*v, pks, sks, kKeys, calls, expected, reuse, req);
  std::printf("profile %s: %zu calls, %zu as expected (%s)\n", what.c_str(), calls, ok,
              apikeys::to_string(expected));
  return ok == calls ? 0 : 1;
}

// ------------------------------------------------------------------------------------
// Output.

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void print_summary(const Results& r) {
  std::printf("\nSUMMARY (medians; Google Benchmark rows: thread CPU time and wall time per op)\n");
  std::printf(
      "| measurement | cpu ns/op | real ns/op | ops/s (cpu) | note |\n|---|---:|---:|---:|---|\n");
  for (const auto& [name, t] : r.bench) {
    std::printf("| %s | %.1f | %.1f | %.0f | %s |\n", name.c_str(), t.cpu_ns, t.real_ns,
                1e9 / t.cpu_ns, t.label.c_str());
  }
  std::printf("\n| measurement | value |\n|---|---:|\n");
  for (const auto& [name, v] : r.value) std::printf("| %s | %.1f |\n", name.c_str(), v);
  for (const auto& n : r.notes) std::printf("note: %s\n", n.c_str());
  for (const auto& e : r.errors) std::printf("ERROR: %s\n", e.c_str());
  std::printf("\n");
}

int print_targets(const Results& r, bool quick) {
  int pass = 0;
  int total = 0;
  int skipped = 0;
  for (const Target& t : targets(r)) {
    const bool ok =
        std::isfinite(t.measured) && (t.at_least ? t.measured >= t.limit : t.measured <= t.limit);
    ++total;
    if (std::isfinite(t.cores)) {
      std::printf("CORES %s process=%.2f idle=%.2f\n", t.name.c_str(), t.cores, t.idle_cores);
    }
    if (!ok && std::isfinite(t.cores) && t.cores < kMinCores && t.idle_cores < 2.0 - t.cores) {
      ++skipped;
      std::printf("TARGET %s ratio=%.3f limit=%g SKIP (cores)\n", t.name.c_str(), t.measured,
                  t.limit);
      continue;
    }
    pass += ok;
    std::printf("TARGET %s ratio=%.3f limit=%g %s\n", t.name.c_str(), t.measured, t.limit,
                ok ? "PASS" : "FAIL");
  }
  std::printf("TARGETS %d/%d PASS, %d SKIP (cores)%s\n", pass, total, skipped,
              quick ? " (quick mode: informational, sizes too small to judge)" : "");
  std::fflush(stdout);
  return total - pass - skipped;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  std::vector<char*> args{argv[0]};
  std::vector<std::string> owned;  // storage for the default Google Benchmark flags
  const char* quick_env = std::getenv("APIKEYS_BENCH_QUICK");
  if (quick_env != nullptr && std::strcmp(quick_env, "") != 0 && std::strcmp(quick_env, "0") != 0) {
    cfg.make_quick();
  }
  std::vector<char*> user;
  std::string profile_what;
  std::size_t profile_calls = 100'000;
  bool profile_reuse = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      cfg.make_quick();
    } else if (a.rfind("--skip=", 0) == 0) {
      std::stringstream ss(a.substr(7));
      std::string part;
      while (std::getline(ss, part, ',')) cfg.skip.insert(part);
    } else if (a.rfind("--profile=", 0) == 0) {
      profile_what = a.substr(10);
    } else if (a.rfind("--profile-calls=", 0) == 0) {
      profile_calls = std::stoul(a.substr(16));
    } else if (a == "--profile-reuse") {
      profile_reuse = true;
    } else if (a == "--sqlite-memstatus=off") {
      // What a host may do before it first uses SQLite (README.md, "Tuning"): without
      // memory statistics, an allocation takes no process-wide mutex.
      if (sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) != SQLITE_OK) {
        std::fprintf(stderr, "apikeys_bench: sqlite3_config(SQLITE_CONFIG_MEMSTATUS) failed\n");
        return 2;
      }
      std::printf("sqlite memstatus: off\n");
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: apikeys_bench [--quick] [--skip=memory,threads,latency,scale,observer,admission]\n"
          "                     [--sqlite-memstatus=off] [--benchmark_*]\n"
          "       apikeys_bench --profile=hit|hit_stats|hit_one_rate_limit|hit_leased_credits|\n"
          "                     hit_all_features|\n"
          "                     sqlite_cold|sqlite_not_found|sqlite_wrong_secret|sqlite_floor\n"
          "                     [--profile-calls=N] [--profile-reuse]  (one loop, for\n"
          "                     callgrind; --profile-reuse: one ValidationResult reused)\n"
          "env: APIKEYS_BENCH_QUICK=1 (same as --quick), APIKEYS_BENCH_CACHE_DIR=dir (keep the\n"
          "bulk-built SQLite files there between runs)\n");
      return 0;
    } else {
      user.push_back(argv[i]);
    }
  }
  if (const char* dir = std::getenv("APIKEYS_BENCH_CACHE_DIR")) cfg.cache_dir = dir;
  if (!profile_what.empty()) {
    try {
      return profile(profile_what, profile_calls, profile_reuse);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "apikeys_bench: %s\n", e.what());
      return 2;
    }
  }

  // Defaults first, so flags given on the command line override them.
  owned = {"--benchmark_repetitions=" + std::to_string(cfg.reps),
           "--benchmark_min_time=" + std::to_string(cfg.min_time),
           "--benchmark_display_aggregates_only=true",
           "--benchmark_enable_random_interleaving=true"};
  for (auto& s : owned) args.push_back(s.data());
  args.insert(args.end(), user.begin(), user.end());
  int bargc = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&bargc, args.data());
  if (benchmark::ReportUnrecognizedArguments(bargc, args.data())) return 2;

  std::printf("apikeys_bench %s mode | %s | nproc %ld | %s | load %s\n",
              cfg.quick ? "quick" : "full", utc_now().c_str(), sysconf(_SC_NPROCESSORS_ONLN),
              cpu_model().c_str(), load_average().c_str());
  std::printf(
      "sizes: store %zu keys (1%% revoked), hit %zu keys, scale %zu keys, memory %zu "
      "entries; %d repetitions\n",
      cfg.store_keys, cfg.hit_keys, cfg.big_keys, cfg.memory_entries, cfg.reps);
  std::fflush(stdout);

  const auto started = Clock::now();
  Results res;
  int failed = 0;
  try {
    if (cfg.skip.count("memory") == 0) memory_section(cfg, res);
    World world(cfg);
    world.build();
    if (cfg.skip.count("scale") == 0) world.build_big();
    register_benchmarks(world);
    register_scan_benchmark(cfg);
    CapturingReporter reporter(res);
    benchmark::RunSpecifiedBenchmarks(&reporter);
    if (cfg.skip.count("threads") == 0) threads_section(cfg, world, res);
    if (cfg.skip.count("latency") == 0) latency_section(cfg, world, res);
    if (cfg.skip.count("observer") == 0) observer_section(cfg, world, res);
    if (cfg.skip.count("admission") == 0) admission_section(cfg, world, res);
    std::ostringstream os;
    os << "total run time " << elapsed_s(started) << " s; load at end " << load_average();
    res.notes.push_back(os.str());
    print_summary(res);
    failed = print_targets(res, cfg.quick);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "apikeys_bench: %s\n", e.what());
    benchmark::Shutdown();
    return 2;
  }
  benchmark::Shutdown();
  return cfg.quick || failed == 0 ? 0 : 1;
}
