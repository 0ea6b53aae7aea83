// apikeys_timing: does validate() take the same time for an unknown public key
// (not_found) as for a known one with a wrong secret (wrong_secret)? If not, response
// time tells an attacker holding a public key whether it exists.
//
// dudect style (Reparaz, Balasch, Verbauwhede, "Dude, is my code constant time?", 2017):
// the two classes are interleaved in random order, each call is timed with the cycle
// counter, and Welch's t-test compares the two distributions, once on all samples and
// once per crop (samples above a percentile of the pooled distribution dropped; dudect's
// percentiles 1 - 0.5^(10 (k+1) / 100)). The verdict uses the largest |t| of the tests
// that hold enough samples: PASS below 4.5, the threshold of the dudect paper (the
// dudect.h tool itself says "probably not constant time" only above 10).
//
// Three stores: EqualCostStore, whose find() costs the same for a hit and a miss, so
// any difference is the Validator's own (it must hash and compare on a miss as on a
// wrong secret), once more with its keys under a legacy pepper (a wrong secret then
// verifies under that pepper, a second HMAC, which a miss must match); then
// MemoryStore and SqliteStore as shipped, where the store's read (what the Validator
// calls, Store::find_for_validation()) is also timed alone (--no-attribute skips it) to
// show how much of a difference is the store's lookup rather than the Validator.
//
// Then the attacker's view of each key state, on every store measured (MemoryStore,
// SqliteStore, and PostgresStore when built with it and --postgres is given): calls for
// keys in one state (not_found: unknown public keys; revoked, disabled and expired:
// such keys with their own secrets) interleaved at random with wrong_secret calls (known
// active keys, wrong secrets), one call at a time. Each prints
//   TARGET timing_<store>_<state> ratio=<|median(state) - median(wrong_secret)| /
//          median(wrong_secret)> limit=0.02 PASS|FAIL  t=<Welch's t, for information>
// after an `INFO timing_<store>_aa` line: two classes of identical calls, the
// harness's own floor on that store and machine.
//
// Usage: apikeys_timing [--samples N] [--keys K] [--store memory|sqlite|both]
//                       [--seed S] [--no-attribute] [--sparse F] [--postgres CONNINFO]
//                       [--states-only]
// --states-only skips the t-tests above and runs the state comparisons alone.
// --sparse F creates K*F keys and removes all but every F-th (rowid 1 among the
// removed): a table sized for K*F keys holding K, with gaps between its rows.
// Exit status: 0 when every validate() test passes, 1 otherwise, 2 on bad usage.
// Not a unit test: the verdict depends on the machine and its load.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include <openssl/crypto.h>

#include "apikeys/apikeys.hpp"
#if defined(APIKEYS_TIMING_POSTGRES)
#include <libpq-fe.h>
#include <unistd.h>

#include "apikeys/postgres_store.hpp"
#endif

namespace {

using Clock = std::chrono::steady_clock;

// Cycle counter, fenced so the timed call cannot be reordered around the reads; a
// steady_clock nanosecond count elsewhere.
inline std::uint64_t ticks() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_lfence();
  const std::uint64_t t = __rdtsc();
  _mm_lfence();
  return t;
#else
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count());
#endif
}

// Ticks per nanosecond, measured against steady_clock over 200 ms.
double ticks_per_ns() {
  const auto c0 = Clock::now();
  const std::uint64_t t0 = ticks();
  while (Clock::now() - c0 < std::chrono::milliseconds(200)) {
  }
  const std::uint64_t t1 = ticks();
  const double ns = static_cast<double>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c0).count());
  return static_cast<double>(t1 - t0) / ns;
}

// Welford's running mean and variance for one class.
struct Moments {
  double n = 0;
  double mean = 0;
  double m2 = 0;
  void add(double x) noexcept {
    n += 1;
    const double d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
  [[nodiscard]] double variance() const noexcept { return n > 1 ? m2 / (n - 1) : 0; }
};

// Welch's t statistic of two classes.
double welch_t(const Moments& a, const Moments& b) noexcept {
  const double se = std::sqrt(a.variance() / a.n + b.variance() / b.n);
  return se > 0 ? (a.mean - b.mean) / se : 0;
}

struct Sample {
  std::uint8_t cls;  // 0 not_found, 1 wrong_secret
  std::uint64_t t;   // ticks
};

struct TestResult {
  double t_all = 0;         // Welch's t on every sample
  double t_max = 0;         // largest |t| over all tests with enough samples
  double t_max_crop = 1.0;  // the crop (kept fraction) where t_max was found; 1: uncropped
  double median[2] = {0, 0};
  double p10[2] = {0, 0};
  double p90[2] = {0, 0};
  std::size_t n[2] = {0, 0};
};

double percentile(std::vector<std::uint64_t>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]);
}

// The median of `v` read as grouped data: the cycle counter of some virtual machines
// moves in steps (26 ticks, 10 ns, on the one BENCHMARKS.md describes), so a plain
// median is a multiple of the step and two classes closer than one step look equal or
// a step apart. Each distinct value x stands for [x - q/2, x + q/2), q the smallest gap
// between distinct values, and the median is placed within the bin holding it by the
// share of samples below it (the grouped-data median of textbook statistics). With a
// fine clock, q is small and this is the plain median.
double grouped_median(std::vector<std::uint64_t>& v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::uint64_t q = 0;
  for (std::size_t i = 1; i < v.size(); ++i) {
    const std::uint64_t gap = v[i] - v[i - 1];
    if (gap != 0 && (q == 0 || gap < q)) q = gap;
  }
  const std::size_t mid = v.size() / 2;
  const std::uint64_t m = v[mid];
  const auto first = std::lower_bound(v.begin(), v.end(), m);
  const auto last = std::upper_bound(v.begin(), v.end(), m);
  const auto below = static_cast<double>(first - v.begin());
  const auto at = static_cast<double>(last - first);
  const double half = static_cast<double>(v.size()) / 2;
  return static_cast<double>(m) - static_cast<double>(q) / 2 +
         (half - below) / at * static_cast<double>(q);
}

// dudect's analysis: uncropped test plus one test per crop percentile.
TestResult analyse(const std::vector<Sample>& samples) {
  constexpr int kCrops = 100;
  constexpr double kEnough = 10'000;  // dudect ignores tests with fewer samples
  std::vector<std::uint64_t> pooled;
  pooled.reserve(samples.size());
  for (const Sample& s : samples) pooled.push_back(s.t);
  std::array<double, kCrops> kept_fraction{};
  std::array<double, kCrops> limit{};
  for (int k = 0; k < kCrops; ++k) {
    kept_fraction[k] = 1.0 - std::pow(0.5, 10.0 * (k + 1) / kCrops);
    limit[k] = percentile(pooled, kept_fraction[k]);
  }

  Moments all[2];
  std::array<std::array<Moments, 2>, kCrops> cropped;
  std::vector<std::uint64_t> per_class[2];
  for (const Sample& s : samples) {
    const double x = static_cast<double>(s.t);
    all[s.cls].add(x);
    per_class[s.cls].push_back(s.t);
    for (int k = 0; k < kCrops; ++k) {
      if (x < limit[k]) cropped[k][s.cls].add(x);
    }
  }

  TestResult r;
  r.t_all = welch_t(all[0], all[1]);
  r.t_max = std::fabs(r.t_all);
  for (int k = 0; k < kCrops; ++k) {
    if (cropped[k][0].n + cropped[k][1].n < kEnough) continue;
    const double t = std::fabs(welch_t(cropped[k][0], cropped[k][1]));
    if (t > r.t_max) {
      r.t_max = t;
      r.t_max_crop = kept_fraction[k];
    }
  }
  for (int c = 0; c < 2; ++c) {
    r.n[c] = per_class[c].size();
    r.median[c] = grouped_median(per_class[c]);
    r.p10[c] = percentile(per_class[c], 0.1);
    r.p90[c] = percentile(per_class[c], 0.9);
  }
  return r;
}

std::string random_key(std::string_view prefix) {
  std::string s(prefix);
  apikeys::append_random_base62(s, 32);
  return s;
}

// `key` with every body character replaced by a different one of the same class
// (digit, upper case, lower case). KeyFormat's character checks branch on the class,
// so an unknown key made this way costs exactly what its known sibling costs to check:
// without it, two fixed keys differ by a few nanoseconds before the store is reached.
std::string sibling(std::string key, std::size_t prefix_length, std::mt19937_64& rng) {
  for (std::size_t i = prefix_length; i < key.size(); ++i) {
    char& c = key[i];
    const auto shift = [&](char first, int count) {
      const int offset = 1 + static_cast<int>(rng() % static_cast<unsigned>(count - 1));
      c = static_cast<char>(first + (c - first + offset) % count);
    };
    if (c >= '0' && c <= '9') {
      shift('0', 10);
    } else if (c >= 'A' && c <= 'Z') {
      shift('A', 26);
    } else {
      shift('a', 26);
    }
  }
  return key;
}

// A presented key: its public part and, when `secret` is empty, a wrong secret drawn
// from Inputs::secrets for each call. A key's own secret is wiped with each copy.
struct Token {
  std::string pk;
  std::string secret;

  Token(std::string p, std::string s) : pk(std::move(p)), secret(std::move(s)) {}
  Token(const Token&) = default;
  Token(Token&&) noexcept = default;
  Token& operator=(const Token&) = default;
  Token& operator=(Token&&) noexcept = default;
  ~Token() { OPENSSL_cleanse(secret.data(), secret.size()); }
};

struct Inputs {
  std::vector<Token> known;          // class 1: keys in the store (wrong_secret)
  std::vector<Token> unknown;        // class 0: not_found, or a key state's own tokens
  std::vector<std::string> secrets;  // wrong secrets for tokens without one (may be empty)
};

// Tokens for `public_keys`, each presented with a wrong secret.
std::vector<Token> wrong_secret_tokens(const std::vector<std::string>& public_keys) {
  std::vector<Token> out;
  for (const std::string& pk : public_keys) out.push_back(Token{pk, {}});
  return out;
}

// Times `op(cls, pk, sk)` for `n` calls with the class drawn at random for each call.
template <class Op>
std::vector<Sample> measure(std::size_t n, std::mt19937_64& rng, const Inputs& in, Op&& op) {
  std::vector<Sample> out;
  out.reserve(n);
  std::vector<std::uint8_t> classes(n);
  std::vector<std::uint32_t> picks(n);
  std::vector<std::uint32_t> secrets(n);
  for (std::size_t i = 0; i < n; ++i) {
    classes[i] = static_cast<std::uint8_t>(rng() & 1u);
    picks[i] =
        static_cast<std::uint32_t>(rng() % (classes[i] ? in.known.size() : in.unknown.size()));
    secrets[i] = in.secrets.empty() ? 0 : static_cast<std::uint32_t>(rng() % in.secrets.size());
  }
  for (std::size_t i = 0; i < n; ++i) {
    const Token& token = classes[i] ? in.known[picks[i]] : in.unknown[picks[i]];
    const std::string& pk = token.pk;
    const std::string& sk = token.secret.empty() ? in.secrets[secrets[i]] : token.secret;
    const std::uint64_t t0 = ticks();
    op(classes[i], pk, sk);
    const std::uint64_t t1 = ticks();
    out.push_back(Sample{classes[i], t1 - t0});
  }
  return out;
}

void print(const char* what, const TestResult& r, double tpn) {
  std::printf("  %-22s not_found median %8.0f ns (p10 %7.0f, p90 %7.0f), n=%zu\n", what,
              r.median[0] / tpn, r.p10[0] / tpn, r.p90[0] / tpn, r.n[0]);
  std::printf("  %-22s wrong_secret median %5.0f ns (p10 %7.0f, p90 %7.0f), n=%zu\n", "",
              r.median[1] / tpn, r.p10[1] / tpn, r.p90[1] / tpn, r.n[1]);
  std::printf("  %-22s t(all) = %+.2f   max |t| = %.2f (crop %.4f)   %s\n", "", r.t_all, r.t_max,
              r.t_max_crop, r.t_max < 4.5 ? "PASS (|t| < 4.5)" : "FAIL (|t| >= 4.5)");
}

// A store whose find() does the same work whatever the answer: a constant-time
// comparison with each of its few keys, a branch-free choice of the record, and one
// record copy, discarded on a miss. Validating against it measures the Validator's own
// code. With `always_hit`, every well-formed key finds the first record (both classes
// then take the wrong_secret path): an A/A run that shows the harness's own floor.
class EqualCostStore final : public apikeys::Store {
 public:
  EqualCostStore(std::vector<apikeys::KeyRecord> records, bool always_hit)
      : records_(std::move(records)), always_hit_(always_hit) {}
  void insert(const apikeys::KeyRecord&) override {}
  std::optional<apikeys::KeyRecord> find(std::string_view public_key) override {
    std::size_t index = 0;
    std::size_t hit = 0;
    for (std::size_t i = 0; i < records_.size(); ++i) {
      const std::string& pk = records_[i].info.public_key;
      const std::size_t same = public_key.size() == pk.size() &&
                               CRYPTO_memcmp(public_key.data(), pk.data(), pk.size()) == 0;
      index |= i & (0 - same);
      hit |= same;
    }
    std::optional<apikeys::KeyRecord> copy(records_[index]);
    if (hit == 0 && !always_hit_) copy.reset();
    return copy;
  }
  std::vector<apikeys::KeyInfo> list(const apikeys::Uuid&) override { return {}; }
  std::optional<apikeys::KeyInfo> set_status(const apikeys::Uuid&, const apikeys::Uuid&,
                                             apikeys::KeyStatus) override {
    return std::nullopt;
  }
  std::optional<apikeys::KeyInfo> remove(const apikeys::Uuid&, const apikeys::Uuid&) override {
    return std::nullopt;
  }
  void record_last_use(const std::vector<apikeys::LastUse>&) override {}

 private:
  const std::vector<apikeys::KeyRecord> records_;
  const bool always_hit_;
};

struct Config {
  std::size_t samples = 1'000'000;
  std::size_t keys = 10'000;
  bool memory = true;
  bool sqlite = true;
  bool attribute = true;
  std::uint64_t seed = 0;
  std::size_t sparse = 1;
  std::string postgres;  // libpq conninfo; empty: no PostgresStore
  bool states_only = false;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "apikeys_timing: %s\nusage: apikeys_timing [--samples N] [--keys K] "
               "[--store memory|sqlite|both] [--seed S] [--no-attribute] [--sparse F]\n"
               "                      [--postgres CONNINFO] [--states-only]\n",
               msg);
  std::exit(2);
}

const std::shared_ptr<apikeys::Hasher>& shared_hasher() {
  static const std::shared_ptr<apikeys::Hasher> h =
      std::make_shared<apikeys::HmacSha256Hasher>("apikeys-timing-pepper-0123456789");
  return h;
}

// `keys` keys made through KeyManager (the real create path), with realistic titles;
// with sparse > 1, keys * sparse made and all but every sparse-th removed.
std::vector<std::string> fill(const char* name, const std::shared_ptr<apikeys::Store>& store,
                              std::size_t keys, std::size_t sparse) {
  apikeys::KeyManagerOptions o;
  o.validation.record_last_use = false;
  apikeys::KeyManager manager(store, shared_hasher(), o);
  std::vector<std::string> out;
  std::vector<std::pair<apikeys::Uuid, apikeys::Uuid>> removals;  // account, key
  const auto started = Clock::now();
  for (std::size_t i = 0; i < keys * sparse; ++i) {
    apikeys::CreateRequest req;
    req.title = "service key " + std::to_string(i);
    req.description = "created by apikeys_timing";
    const apikeys::KeyInfo info = manager.create(apikeys::Uuid::random(), req).info;
    if (i % sparse == sparse - 1) {
      out.push_back(info.public_key);
    } else {
      removals.emplace_back(info.account_id, info.key_id);
    }
  }
  for (const auto& [account, key] : removals) (void)store->remove(account, key);
  std::printf("%s: %zu keys created, %zu of them removed, in %.1f s\n", name, keys * sparse,
              removals.size(), std::chrono::duration<double>(Clock::now() - started).count());
  return out;
}

// `run(store)` on a SqliteStore in a fresh temporary directory, removed after; its
// answer, or false when the directory cannot be made.
template <class Run>
bool with_sqlite_store(Run&& run) {
  char dir_template[] = "/tmp/apikeys_timing.XXXXXX";
  const char* dir = mkdtemp(dir_template);
  if (dir == nullptr) {
    std::perror("apikeys_timing: mkdtemp");
    return false;
  }
  bool pass = false;
  {
    apikeys::SqliteStoreOptions so;
    so.durable = false;  // only the fill writes; validation reads either way
    pass = run(std::make_shared<apikeys::SqliteStore>(std::string(dir) + "/timing.db", so));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return pass;
}

// Returns true when validate() passed on this store; `known` are its public keys.
bool run_store(const char* name, const std::shared_ptr<apikeys::Store>& store,
               const std::vector<std::string>& known, const Config& cfg, double tpn, bool attribute,
               bool a_a = false, const std::shared_ptr<apikeys::Hasher>& hasher = shared_hasher()) {
  std::mt19937_64 rng(cfg.seed);
  Inputs in;
  in.known = wrong_secret_tokens(known);
  // Unknown keys are siblings of known ones (see sibling()), one per known key.
  for (const std::string& pk : known) in.unknown.push_back(Token{sibling(pk, 3, rng), {}});
  for (int i = 0; i < 4096; ++i) in.secrets.push_back(random_key("sk_"));

  apikeys::ValidatorOptions vo;
  vo.cache = nullptr;          // every call reads the store: that is what is measured
  vo.record_last_use = false;  // no background thread competing for the cores
  vo.rehash_on_use = false;
  const apikeys::Validator validator(store, hasher, vo);

  bool wrong = false;
  auto validate = [&](std::uint8_t cls, const std::string& pk, const std::string& sk) {
    const apikeys::ValidationCode want =
        cls || a_a ? apikeys::ValidationCode::wrong_secret : apikeys::ValidationCode::not_found;
    if (validator.validate(pk, sk).code != want) wrong = true;
  };
  (void)measure(std::min<std::size_t>(cfg.samples / 10, 50'000), rng, in, validate);  // warm up
  const auto started = Clock::now();
  const TestResult r = analyse(measure(cfg.samples, rng, in, validate));
  const double secs = std::chrono::duration<double>(Clock::now() - started).count();
  if (wrong) {
    std::fprintf(stderr, "%s: validate() gave an unexpected code; the measurement is void\n", name);
    return false;
  }
  std::printf("%s: %zu validations in %.1f s, cache off\n", name, cfg.samples, secs);
  print("validate()", r, tpn);

  if (attribute) {
    auto find = [&](std::uint8_t, const std::string& pk, const std::string&) {
      volatile bool found = store->find_for_validation(pk).has_value();
      (void)found;
    };
    (void)measure(std::min<std::size_t>(cfg.samples / 10, 50'000), rng, in, find);
    print("find_for_validation()", analyse(measure(cfg.samples, rng, in, find)), tpn);
  }
  return r.t_max < 4.5;
}

// Keys in every state the attacker's view compares, made through KeyManager: `keys`
// active ones (presented with wrong secrets) and as many revoked, disabled and expiring
// ones (presented with their own secrets), created in turn so that each state's rows
// spread over the table as the active ones do. An expiring key expires in one day; the
// Validator of run_states() reads a clock two days on.
struct StateKeys {
  std::vector<std::string> active;
  std::vector<Token> revoked;
  std::vector<Token> disabled;
  std::vector<Token> expired;
};

StateKeys fill_states(const char* name, const std::shared_ptr<apikeys::Store>& store,
                      std::size_t keys) {
  apikeys::KeyManagerOptions o;
  o.validation.record_last_use = false;
  apikeys::KeyManager manager(store, shared_hasher(), o);
  StateKeys out;
  const auto started = Clock::now();
  for (std::size_t i = 0; i < keys; ++i) {
    for (int state = 0; state < 4; ++state) {
      apikeys::CreateRequest req;
      req.title = "service key " + std::to_string(i);
      req.description = "created by apikeys_timing";
      if (state == 3) req.expires_in_days = 1;
      const apikeys::Uuid account = apikeys::Uuid::random();
      const apikeys::CreatedKey key = manager.create(account, req);
      if (state == 0) {
        out.active.push_back(key.info.public_key);
        continue;
      }
      Token token{key.info.public_key, std::string(key.secret_key.reveal())};
      if (state == 1) {
        manager.revoke(account, key.info.key_id);
        out.revoked.push_back(std::move(token));
      } else if (state == 2) {
        (void)manager.disable(account, key.info.key_id);
        out.disabled.push_back(std::move(token));
      } else {
        out.expired.push_back(std::move(token));
      }
    }
  }
  std::printf("%s: %zu keys in each of 4 states created in %.1f s\n", name, keys,
              std::chrono::duration<double>(Clock::now() - started).count());
  return out;
}

// The attacker's view on `store`: each state's calls against wrong_secret calls,
// interleaved one at a time; one TARGET line per state. True when every state is
// within kLimit of wrong_secret.
bool run_states(const char* store_name, const std::shared_ptr<apikeys::Store>& store,
                const StateKeys& keys, const Config& cfg, double tpn) {
  constexpr double kLimit = 0.02;
  std::mt19937_64 rng(cfg.seed + 1);
  apikeys::ValidatorOptions vo;
  vo.cache = nullptr;          // every call reads the store: that is what is measured
  vo.record_last_use = false;  // no background thread competing for the cores
  vo.rehash_on_use = false;
  vo.clock = std::make_shared<apikeys::ManualClock>(apikeys::system_clock()->now() +
                                                    std::chrono::hours(48));
  const apikeys::Validator validator(store, shared_hasher(), vo);

  // Every token carries its own secret, as the states' tokens do: a secret drawn from a
  // shared pool on each call would be one more random load on one side only (it made
  // wrong_secret look 10 to 40 ns slower than every other state on MemoryStore).
  std::vector<Token> not_found;
  std::vector<Token> wrong_secret;
  std::vector<Token> other_wrong_secret;  // the A/A class: the same keys, other secrets
  for (const std::string& pk : keys.active) {
    not_found.push_back(Token{sibling(pk, 3, rng), random_key("sk_")});
    wrong_secret.push_back(Token{pk, random_key("sk_")});
    other_wrong_secret.push_back(Token{pk, random_key("sk_")});
  }
  struct State {
    const char* name;
    const std::vector<Token>* tokens;
    apikeys::ValidationCode code;
  };
  // First an A/A pair, two classes of identical calls: the harness's own floor on this
  // store and machine, printed for information (not a target).
  const State states[] = {{"aa", &other_wrong_secret, apikeys::ValidationCode::wrong_secret},
                          {"not_found", &not_found, apikeys::ValidationCode::not_found},
                          {"revoked", &keys.revoked, apikeys::ValidationCode::revoked},
                          {"disabled", &keys.disabled, apikeys::ValidationCode::disabled},
                          {"expired", &keys.expired, apikeys::ValidationCode::expired}};
  bool pass = true;
  for (const State& state : states) {
    // Both classes' strings allocated in turn, so that neither lies in fresher, more
    // compact memory than the other (copies made one class after the other showed a
    // 3-4 % bias between two classes of identical calls on MemoryStore at 10,000 keys).
    Inputs in;
    const std::size_t count = std::max(wrong_secret.size(), state.tokens->size());
    in.known.reserve(wrong_secret.size());
    in.unknown.reserve(state.tokens->size());
    for (std::size_t i = 0; i < count; ++i) {
      if (i < wrong_secret.size()) in.known.push_back(wrong_secret[i]);
      if (i < state.tokens->size()) in.unknown.push_back((*state.tokens)[i]);
    }
    bool wrong = false;  // every token carries its secret: no pool of wrong ones
    auto validate = [&](std::uint8_t cls, const std::string& pk, const std::string& sk) {
      const apikeys::ValidationCode want = cls ? apikeys::ValidationCode::wrong_secret : state.code;
      if (validator.validate(pk, sk).code != want) wrong = true;
    };
    (void)measure(std::min<std::size_t>(cfg.samples / 10, 50'000), rng, in, validate);  // warm up
    const TestResult r = analyse(measure(cfg.samples, rng, in, validate));
    const std::string target = std::string("timing_") + store_name + "_" + state.name;
    if (wrong) {
      std::printf("%s %s ratio=nan limit=%g FAIL (an unexpected code)\n",
                  std::strcmp(state.name, "aa") == 0 ? "INFO" : "TARGET", target.c_str(), kLimit);
      pass = false;
      continue;
    }
    const double ratio = std::fabs(r.median[0] - r.median[1]) / r.median[1];
    std::printf("  %s: %s median %.0f ns, wrong_secret median %.0f ns (n=%zu, %zu)\n", store_name,
                state.name, r.median[0] / tpn, r.median[1] / tpn, r.n[0], r.n[1]);
    if (std::strcmp(state.name, "aa") == 0) {
      std::printf("INFO %s ratio=%.4f (two classes of identical calls)  t=%+.2f\n", target.c_str(),
                  ratio, r.t_all);
      continue;
    }
    std::printf("TARGET %s ratio=%.4f limit=%g %s  t=%+.2f\n", target.c_str(), ratio, kLimit,
                ratio <= kLimit ? "PASS" : "FAIL", r.t_all);
    pass = pass && ratio <= kLimit;
    if (cfg.attribute) {
      // The store's share: its read alone for the same tokens, for information.
      auto find = [&](std::uint8_t, const std::string& pk, const std::string&) {
        volatile bool found = store->find_for_validation(pk).has_value();
        (void)found;
      };
      (void)measure(std::min<std::size_t>(cfg.samples / 10, 50'000), rng, in, find);
      const TestResult f = analyse(measure(cfg.samples, rng, in, find));
      std::printf("  %s: store read alone: %s median %.0f ns, wrong_secret median %.0f ns\n",
                  store_name, state.name, f.median[0] / tpn, f.median[1] / tpn);
    }
  }
  return pass;
}

// The dudect t-tests of not_found against wrong_secret: EqualCostStore (the
// Validator's own code, under the current and a legacy pepper), then MemoryStore and
// SqliteStore as shipped. True when every verdict passed.
bool run_t_tests(const Config& cfg, double tpn) {
  bool pass = true;
  // 16 keys and their siblings: nothing but the Validator's own code differs between
  // the classes (16 of each, so that where a string happens to lie in memory averages
  // out). Their digests are made by `hasher` under `pepper_id`.
  const auto equal_cost_records = [](const apikeys::Hasher& hasher, std::uint32_t pepper_id,
                                     std::vector<std::string>& known) {
    std::vector<apikeys::KeyRecord> records;
    for (int i = 0; i < 16; ++i) {
      apikeys::KeyRecord record;
      record.info.key_id = apikeys::Uuid::random();
      record.info.account_id = apikeys::Uuid::random();
      record.info.public_key = random_key("pk_");
      record.info.title = "service key " + std::to_string(i);
      record.info.description = "created by apikeys_timing";
      record.digest = *hasher.hash_with(random_key("sk_"), pepper_id);
      known.push_back(record.info.public_key);
      records.push_back(std::move(record));
    }
    return records;
  };
  {
    // Then the same store answering every key: the A/A floor of this harness.
    std::vector<std::string> known;
    const std::vector<apikeys::KeyRecord> records =
        equal_cost_records(*shared_hasher(), shared_hasher()->current_pepper_id(), known);
    std::printf("EqualCostStore: 16 keys, lookups of equal cost (the Validator's own code)\n");
    pass = run_store("EqualCostStore", std::make_shared<EqualCostStore>(records, false), known, cfg,
                     tpn, cfg.attribute) &&
           pass;
    std::printf(
        "EqualCostStore A/A: every key found, both classes wrong_secret (harness floor; "
        "not part of the verdict)\n");
    (void)run_store("EqualCostStore A/A", std::make_shared<EqualCostStore>(records, true), known,
                    cfg, tpn, false, /*a_a=*/true);
  }
  {
    // Keys under the legacy pepper, with a legacy pepper configured: a wrong secret costs
    // the current pepper's HMAC and one under the legacy pepper in verify(); a miss must
    // spend its second HMAC under the same pepper (doc/validate.md, "Equal work on the
    // store path").
    const auto legacy = std::make_shared<apikeys::HmacSha256Hasher>(
        std::vector<apikeys::Pepper>{apikeys::Pepper{1, "apikeys-timing-pepper-0123456789"}}, 1,
        "timing-legacy");
    std::vector<std::string> known;
    const std::vector<apikeys::KeyRecord> records =
        equal_cost_records(*legacy, apikeys::kLegacyPepperId, known);
    std::printf("EqualCostStore, legacy pepper: 16 keys under the legacy pepper\n");
    pass = run_store("EqualCostStore, legacy pepper",
                     std::make_shared<EqualCostStore>(records, false), known, cfg, tpn, false,
                     /*a_a=*/false, legacy) &&
           pass;
  }
  if (cfg.memory) {
    auto store = std::make_shared<apikeys::MemoryStore>();
    pass = run_store("MemoryStore", store, fill("MemoryStore", store, cfg.keys, cfg.sparse), cfg,
                     tpn, cfg.attribute) &&
           pass;
  }
  if (cfg.sqlite) {
    pass =
        with_sqlite_store([&](const std::shared_ptr<apikeys::SqliteStore>& store) {
          return run_store("SqliteStore", store, fill("SqliteStore", store, cfg.keys, cfg.sparse),
                           cfg, tpn, cfg.attribute);
        }) &&
        pass;
  }
  return pass;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  cfg.seed = std::random_device{}();
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) usage("missing value");
      return argv[++i];
    };
    auto number = [&](std::string_view v) -> std::uint64_t {
      char* end = nullptr;
      const std::string s(v);
      const unsigned long long n = std::strtoull(s.c_str(), &end, 10);
      if (s.empty() || *end != '\0' || n == 0) usage("expected a positive number");
      return n;
    };
    if (a == "--samples") {
      cfg.samples = number(value());
    } else if (a == "--keys") {
      cfg.keys = number(value());
    } else if (a == "--seed") {
      cfg.seed = number(value());
    } else if (a == "--sparse") {
      cfg.sparse = number(value());
    } else if (a == "--no-attribute") {
      cfg.attribute = false;
    } else if (a == "--postgres") {
      cfg.postgres = std::string(value());
#if !defined(APIKEYS_TIMING_POSTGRES)
      usage("--postgres: built without PostgreSQL (-DAPIKEYS_WITH_POSTGRES=ON)");
#endif
    } else if (a == "--states-only") {
      cfg.states_only = true;
    } else if (a == "--store") {
      const std::string_view s = value();
      cfg.memory = s == "memory" || s == "both";
      cfg.sqlite = s == "sqlite" || s == "both";
      if (!cfg.memory && !cfg.sqlite) usage("--store takes memory, sqlite or both");
    } else {
      usage("unknown argument");
    }
  }
  if (cfg.samples < 20'000) usage("--samples must be at least 20000 (dudect's tests need 10000)");

  const double tpn = ticks_per_ns();
  std::printf(
      "apikeys_timing %s: %zu samples per store (classes interleaved at random), %zu keys, "
      "seed %llu, %.3f ticks/ns, sparse %zu\n",
      apikeys::version(), cfg.samples, cfg.keys, static_cast<unsigned long long>(cfg.seed), tpn,
      cfg.sparse);
  bool pass = true;
  if (!cfg.states_only) pass = run_t_tests(cfg, tpn);
  // The attacker's view of each key state, on each store.
  if (cfg.memory) {
    auto store = std::make_shared<apikeys::MemoryStore>();
    pass =
        run_states("memory", store, fill_states("MemoryStore", store, cfg.keys), cfg, tpn) && pass;
  }
  if (cfg.sqlite) {
    pass =
        with_sqlite_store([&](const std::shared_ptr<apikeys::SqliteStore>& store) {
          return run_states("sqlite", store, fill_states("SqliteStore", store, cfg.keys), cfg, tpn);
        }) &&
        pass;
  }
#if defined(APIKEYS_TIMING_POSTGRES)
  if (!cfg.postgres.empty()) {
    const std::string schema = "apikeys_timing_" + std::to_string(::getpid());
    {
      apikeys::PostgresStoreOptions po;
      po.schema = schema;
      auto store = std::make_shared<apikeys::PostgresStore>(cfg.postgres, po);
      pass =
          run_states("postgres", store, fill_states("PostgresStore", store, cfg.keys), cfg, tpn) &&
          pass;
    }
    PGconn* c = PQconnectdb(cfg.postgres.c_str());  // drop the harness's schema
    if (PQstatus(c) == CONNECTION_OK) {
      PQsetNoticeProcessor(
          c, [](void*, const char*) {}, nullptr);
      PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS \"" + schema + "\" CASCADE").c_str()));
    }
    PQfinish(c);
  }
#endif
  std::printf("%s\n", pass ? "RESULT: PASS" : "RESULT: FAIL");
  return pass ? 0 : 1;
}
