// The last-use throttle behind Validator (src/last_use_tracker.hpp) under the
// loads its lock-free filter has to survive: many threads presenting one new key at
// once, more keys than fit in a filter set or in the whole filter, a full queue, a clock
// set back. Every key is counted by a store that makes its keys up, so 70,000 keys cost
// no setup.
#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "test_support.hpp"

using namespace apikeys;

namespace {

constexpr std::string_view kDigits =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr std::string_view kSecret = "sk_S3cretS3cretS3cretS3cretS3cretAB";  // every key's
constexpr std::chrono::seconds kInterval{900};                               // the default

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The record of a valid key of account 1, as the test stores return it.
KeyRecord key_record(const Uuid& key_id, std::string_view public_key, const Digest& digest) {
  KeyRecord r;
  r.info.key_id = key_id;
  r.info.account_id = apikeys_test::account_id(1);
  r.info.public_key = std::string(public_key);
  r.info.title = "synthetic";
  r.info.created_at = apikeys_test::test_start();
  r.digest = digest;
  return r;
}

// `count` valid keys sharing one secret: key i is "pk_" + i in base62 (32 digits), its
// id random-looking but fixed, with i in its last four bytes. Counts last-use updates
// per key. Thread-safety: find() and record_last_use() from any thread.
class SyntheticStore final : public Store {
 public:
  SyntheticStore(std::size_t count, const Digest& digest)
      : count_(count), digest_(digest), writes_(count, 0) {}

  static std::string public_key(std::size_t i) {
    std::string pk(35, '0');
    pk[0] = 'p';
    pk[1] = 'k';
    pk[2] = '_';
    for (std::size_t pos = pk.size(); i != 0; i /= kDigits.size())
      pk[--pos] = kDigits[i % kDigits.size()];
    return pk;
  }

  static Uuid key_id(std::size_t i) {
    std::array<std::uint8_t, 16> b{};
    const std::uint64_t r = splitmix64(i);
    for (int k = 0; k < 8; ++k)
      b[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(r >> (8 * k));
    b[6] = static_cast<std::uint8_t>(0x40 | (b[6] & 0x0f));
    b[8] = 0x80;
    for (int k = 0; k < 4; ++k)
      b[static_cast<std::size_t>(15 - k)] = static_cast<std::uint8_t>(i >> (8 * k));
    return Uuid(b);
  }

  std::optional<KeyRecord> find(std::string_view pk) override {
    std::size_t i = 0;
    for (char c : pk.substr(3)) i = i * kDigits.size() + kDigits.find(c);
    if (i >= count_) return std::nullopt;
    return key_record(key_id(i), pk, digest_);
  }

  void record_last_use(const std::vector<LastUse>& uses) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const LastUse& u : uses) {
      const auto& b = u.key_id.bytes();
      const std::size_t i = (std::size_t{b[12]} << 24) | (std::size_t{b[13]} << 16) |
                            (std::size_t{b[14]} << 8) | std::size_t{b[15]};
      if (i < count_) ++writes_[i];
      ++total_;
    }
  }

  // Never called by a Validator.
  void insert(const KeyRecord&) override { throw std::logic_error("SyntheticStore::insert"); }
  std::vector<KeyInfo> list(const Uuid&) override {
    throw std::logic_error("SyntheticStore::list");
  }
  std::optional<KeyInfo> set_status(const Uuid&, const Uuid&, KeyStatus) override {
    throw std::logic_error("SyntheticStore::set_status");
  }
  std::optional<KeyInfo> remove(const Uuid&, const Uuid&) override {
    throw std::logic_error("SyntheticStore::remove");
  }

  std::size_t writes(std::size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return writes_[i];
  }
  std::size_t total() {
    std::lock_guard<std::mutex> lock(mu_);
    return total_;
  }
  // How many keys in [0, n) were written other than `expected` times.
  std::size_t keys_not_written(std::size_t n, std::size_t expected) {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<std::size_t>(std::count_if(writes_.begin(),
                                                  writes_.begin() + static_cast<std::ptrdiff_t>(n),
                                                  [&](std::size_t w) { return w != expected; }));
  }

 private:
  const std::size_t count_;
  const Digest digest_;
  std::mutex mu_;
  std::vector<std::size_t> writes_;
  std::size_t total_ = 0;
};

struct Rig {
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  std::shared_ptr<HmacSha256Hasher> hasher =
      std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  std::shared_ptr<SyntheticStore> store;
  std::unique_ptr<Validator> validator;

  // Only flush_last_use() writes (the background flush is an hour away).
  Rig(std::size_t keys, std::size_t throttle_limit, bool with_cache,
      std::size_t queue_limit = 65'536)
      : store(std::make_shared<SyntheticStore>(keys, hasher->hash(kSecret))) {
    ValidatorOptions o;
    o.clock = clock;
    if (with_cache) {
      MemoryCacheOptions co;
      co.clock = clock;
      o.cache = std::make_shared<MemoryCache>(co);
    }
    o.last_use_interval = kInterval;
    o.last_use_throttle_limit = throttle_limit;
    o.last_use_queue_limit = queue_limit;
    o.flush_interval = std::chrono::hours(1);
    o.revision_poll_interval = std::chrono::milliseconds(0);
    validator = std::make_unique<Validator>(store, hasher, o);
  }

  bool use(std::size_t i) const {
    return validator->validate(SyntheticStore::public_key(i), kSecret).ok();
  }

  // Presents keys [0, n) once each, in a scrambled order (so keys move between the
  // filter and the spill maps in every pass); returns how many were not valid.
  std::size_t pass(std::size_t n, std::uint64_t seed) const {
    std::size_t bad = 0;
    std::size_t step = 1 + splitmix64(seed) % (n - 1);
    while (std::gcd(step, n) != 1) ++step;  // a permutation of [0, n)
    for (std::size_t k = 0, i = seed % n; k < n; ++k, i = (i + step) % n) bad += !use(i);
    return bad;
  }
};

// Releases `n` threads together, again and again.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void arrive_and_wait() {
    const int generation = generation_.load();
    if (waiting_.fetch_add(1) + 1 == n_) {
      waiting_.store(0);
      generation_.fetch_add(1);
      return;
    }
    while (generation_.load() == generation) std::this_thread::yield();
  }

 private:
  const int n_;
  std::atomic<int> waiting_{0};
  std::atomic<int> generation_{0};
};

// `threads` workers that each run work(thread index) once per round(), all starting at
// the same moment; round() returns when every one has finished its part.
class Crew {
 public:
  Crew(int threads, std::function<void(int)> work)
      : start_(threads + 1), done_(threads + 1), work_(std::move(work)) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, t] {
        for (;;) {
          start_.arrive_and_wait();
          if (stop_.load()) return;
          work_(t);
          done_.arrive_and_wait();
        }
      });
    }
  }
  ~Crew() {
    stop_.store(true);
    start_.arrive_and_wait();
    for (auto& t : threads_) t.join();
  }
  Crew(const Crew&) = delete;
  Crew& operator=(const Crew&) = delete;

  void round() {
    start_.arrive_and_wait();
    done_.arrive_and_wait();
  }

 private:
  SpinBarrier start_;
  SpinBarrier done_;
  std::atomic<bool> stop_{false};
  std::function<void(int)> work_;
  std::vector<std::thread> threads_;
};

}  // namespace

TEST_CASE("last use: threads presenting one new key at once queue one write",
          "[validator][last_use][concurrency]") {
  constexpr std::size_t kKeys = 150;
  constexpr int kThreads = 8;
  constexpr int kUsesPerThread = 8;
  Rig rig(kKeys, 1'000'000, true);
  std::atomic<std::size_t> key{0};
  std::atomic<int> invalid{0};
  Crew crew(kThreads, [&](int) {
    const std::size_t k = key.load();
    for (int u = 0; u < kUsesPerThread; ++u) invalid += !rig.use(k);
  });
  // Every round: all threads present one key at the same moment, then it is flushed.
  auto round = [&](std::size_t k) {
    key.store(k);
    crew.round();
    rig.validator->flush_last_use();
  };

  // Never seen before: exactly one write each.
  std::size_t wrong = 0;
  for (std::size_t k = 0; k < kKeys; ++k) {
    round(k);
    wrong += rig.store->writes(k) != 1;
  }
  CHECK(wrong == 0);
  CHECK(rig.store->total() == kKeys);

  // Within the interval: nothing more. After it: the renewal race, again one write each.
  rig.clock->advance(kInterval - std::chrono::seconds(1));
  for (std::size_t k = 0; k < kKeys; k += 10) round(k);
  CHECK(rig.store->total() == kKeys);
  rig.clock->advance(std::chrono::seconds(1));
  for (std::size_t k = 0; k < kKeys; ++k) round(k);
  CHECK(rig.store->keys_not_written(kKeys, 2) == 0);
  CHECK(rig.store->total() == 2 * kKeys);
  CHECK(invalid.load() == 0);
}

TEST_CASE("last use: threads presenting overlapping batches of new keys in a crowded filter",
          "[validator][last_use][concurrency]") {
  // The smallest filter (256 sets of 4 ways) and 1,024 keys: each round every thread
  // presents the same 256 new keys in its own order, so claims of one key, of keys
  // sharing a set, withdrawals and spills all overlap.
  constexpr std::size_t kKeys = 1'024;
  constexpr std::size_t kBatch = 256;
  constexpr int kThreads = 4;
  Rig rig(kKeys, 1'024, true);
  std::atomic<std::size_t> first{0};
  std::atomic<int> invalid{0};
  Crew crew(kThreads, [&](int t) {
    const auto thread = static_cast<std::size_t>(t);
    const std::size_t step = 1 + 2 * thread * 19;  // odd: a permutation
    const std::size_t base = first.load();
    for (std::size_t k = 0, i = 37 * thread; k < kBatch; ++k, i += step) {
      invalid += !rig.use(base + i % kBatch);
    }
  });
  auto all_batches = [&] {
    for (std::size_t b = 0; b < kKeys; b += kBatch) {
      first.store(b);
      crew.round();
    }
    rig.validator->flush_last_use();
  };

  // Keys sharing a note (the filter's seeds are random: about one run in a thousand
  // has two; doc/last-use.md, invariant 10) have one write between them: `shared` keys
  // unwritten, and never a key written twice.
  all_batches();
  const std::size_t shared = rig.store->keys_not_written(kKeys, 1);
  CHECK(shared <= 2);
  CHECK(rig.store->total() == kKeys - shared);
  rig.clock->advance(kInterval - std::chrono::seconds(1));
  all_batches();
  CHECK(rig.store->total() == kKeys - shared);
  rig.clock->advance(std::chrono::seconds(1));
  all_batches();
  all_batches();
  CHECK(rig.store->keys_not_written(kKeys, 2) <= 2 * shared);
  CHECK(rig.store->total() == 2 * (kKeys - shared));
  CHECK(invalid.load() == 0);
}

TEST_CASE("last use: keys crowding one filter set are throttled through the spill",
          "[validator][last_use]") {
  // A throttle limit of 1,024 gives the smallest filter: 1,024 ways, 256 sets of 4.
  // 1,024 keys are 4 a set on average, so many sets get more (about a third of them
  // hold 5 or more keys), and about 200 keys at a time live in the spill maps (room for
  // 1,024). Keys sharing a note (about one run in a thousand: the filter's seeds are
  // random; doc/last-use.md, invariant 10) have one write between them.
  constexpr std::size_t kKeys = 1'024;
  Rig rig(kKeys, 1'024, true);
  CHECK(rig.pass(kKeys, 1) == 0);
  rig.validator->flush_last_use();
  const std::size_t shared = rig.store->keys_not_written(kKeys, 1);
  CHECK(shared <= 2);

  // Uses in other orders move keys between the filter and the maps: no second write.
  rig.clock->advance(std::chrono::seconds(60));
  for (std::uint64_t seed = 2; seed < 6; ++seed) CHECK(rig.pass(kKeys, seed) == 0);
  rig.clock->advance(kInterval - std::chrono::seconds(61));
  CHECK(rig.pass(kKeys, 6) == 0);
  rig.validator->flush_last_use();
  CHECK(rig.store->total() == kKeys - shared);

  // Once the interval is over, one more write each, whether the key's note was in the
  // filter or in a map; then quiet again.
  rig.clock->advance(std::chrono::seconds(1));
  CHECK(rig.pass(kKeys, 7) == 0);
  CHECK(rig.pass(kKeys, 8) == 0);
  rig.validator->flush_last_use();
  CHECK(rig.store->keys_not_written(kKeys, 2) <= 2 * shared);
  CHECK(rig.store->total() == 2 * (kKeys - shared));
}

TEST_CASE("last use: more keys than the filter holds, each written once per interval",
          "[validator][last_use]") {
  // The filter stops at 65,536 ways; a throttle limit above that keeps the rest in the
  // spill maps. 70,000 keys: at least 4,464 of them live in a map at any time.
  // The filter's seeds are random: two of the keys share a set and a tag (21 bits)
  // now and then, about once in 14 runs, and then one's note covers the other's
  // (doc/last-use.md, invariant 10). So a few keys may go unwritten, the same ones each
  // interval, and no key is ever written twice.
  constexpr std::size_t kKeys = 70'000;
  Rig rig(kKeys, 100'000, false, 100'000);  // a queue for a whole pass
  CHECK(rig.pass(kKeys, 11) == 0);
  rig.validator->flush_last_use();
  const std::size_t shared = rig.store->keys_not_written(kKeys, 1);
  CHECK(shared <= 2);
  CHECK(rig.store->total() == kKeys - shared);

  rig.clock->advance(kInterval - std::chrono::seconds(1));
  CHECK(rig.pass(kKeys, 12) == 0);
  rig.validator->flush_last_use();
  CHECK(rig.store->total() == kKeys - shared);

  rig.clock->advance(std::chrono::seconds(1));
  CHECK(rig.pass(kKeys, 13) == 0);
  rig.validator->flush_last_use();
  // Of two keys sharing a note, whichever came first in a pass was written.
  CHECK(rig.store->keys_not_written(kKeys, 2) <= 2 * shared);
  CHECK(rig.store->total() == 2 * (kKeys - shared));
}

TEST_CASE("last use: a full queue drops updates until the next flush", "[validator][last_use]") {
  Rig rig(100, 1'000'000, true, 10);
  for (std::size_t k = 0; k < 50; ++k) REQUIRE(rig.use(k));
  rig.validator->flush_last_use();
  CHECK(rig.store->total() == 10);
  // Dropped updates are not retried within the interval (last use is advisory)...
  for (std::size_t k = 0; k < 50; ++k) REQUIRE(rig.use(k));
  rig.validator->flush_last_use();
  CHECK(rig.store->total() == 10);
  // ...and a flushed queue takes updates again, still at most 10 per batch.
  for (std::size_t k = 50; k < 100; ++k) REQUIRE(rig.use(k));
  rig.validator->flush_last_use();
  CHECK(rig.store->total() == 20);
}

TEST_CASE("last use: a clock set back before the first note still throttles",
          "[validator][last_use]") {
  Rig rig(10, 1'000'000, true);
  REQUIRE(rig.use(0));
  rig.clock->advance(-std::chrono::hours(24 * 365));
  REQUIRE(rig.use(0));  // noted in the future: inside the interval
  REQUIRE(rig.use(1));  // before the first note: a new key all the same
  REQUIRE(rig.use(1));
  rig.validator->flush_last_use();
  CHECK(rig.store->writes(0) == 1);
  CHECK(rig.store->writes(1) == 1);
  rig.clock->advance(kInterval);
  REQUIRE(rig.use(1));
  rig.validator->flush_last_use();
  CHECK(rig.store->writes(1) == 2);
  CHECK(rig.store->total() == 3);
}

namespace {

// A user's store whose lookup ignores ASCII case, as a case-insensitive collation
// would (MySQL's default, PostgreSQL's citext): it returns one key, as stored, for
// every spelling of its public key.
class CaseFoldStore final : public Store {
 public:
  static constexpr std::string_view kPk = "pk_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEf";

  explicit CaseFoldStore(const Digest& d) : digest_(d) {}

  std::optional<KeyRecord> find(std::string_view pk) override {
    if (pk.size() != kPk.size()) return std::nullopt;
    for (std::size_t i = 0; i < pk.size(); ++i) {
      if (std::tolower(static_cast<unsigned char>(pk[i])) !=
          std::tolower(static_cast<unsigned char>(kPk[i]))) {
        return std::nullopt;
      }
    }
    return key_record(SyntheticStore::key_id(42), kPk, digest_);  // as stored
  }
  void record_last_use(const std::vector<LastUse>& uses) override {
    std::lock_guard<std::mutex> lock(mu_);
    writes_ += uses.size();
  }
  void insert(const KeyRecord&) override {}
  std::vector<KeyInfo> list(const Uuid&) override { return {}; }
  std::optional<KeyInfo> set_status(const Uuid&, const Uuid&, KeyStatus) override {
    return std::nullopt;
  }
  std::optional<KeyInfo> remove(const Uuid&, const Uuid&) override { return std::nullopt; }

  std::size_t writes() {
    std::lock_guard<std::mutex> lock(mu_);
    return writes_;
  }

 private:
  std::mutex mu_;
  std::size_t writes_ = 0;
  Digest digest_;
};

// Counts the store failures a Validator reports.
class StoreErrors final : public Observer {
 public:
  void on_error(const BackgroundError& e) override {
    if (e.component == Component::store && e.operation == "find") ++count;
  }
  std::atomic<int> count{0};
};

}  // namespace

// Store::find() matches byte for byte. Were another spelling a key of its own, it would
// be cached apart from the key (a revoke erases only the key's own spelling) and get a
// last-use entry of its own (a write per spelling per interval).
TEST_CASE("a record found for another spelling of the public key is a miss",
          "[validator][last_use]") {
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  auto store = std::make_shared<CaseFoldStore>(hasher->hash(kSecret));
  ValidatorOptions o;
  o.clock = clock;
  o.flush_interval = std::chrono::hours(1);
  o.revision_poll_interval = std::chrono::milliseconds(0);
  auto errors = std::make_shared<StoreErrors>();
  o.observers = {errors};
  Validator v(store, hasher, o);
  REQUIRE(v.validate(CaseFoldStore::kPk, kSecret).ok());
  for (int n = 1; n < 32; ++n) {  // 31 other spellings: some letters' case swapped
    std::string spelling(CaseFoldStore::kPk);
    for (int b = 0; b < 5; ++b) {
      if ((n & (1 << b)) == 0) continue;
      char& c = spelling[static_cast<std::size_t>(3 + b)];
      const auto u = static_cast<unsigned char>(c);
      c = static_cast<char>(std::isupper(u) ? std::tolower(u) : std::toupper(u));
    }
    CHECK(v.validate(spelling, kSecret).code == ValidationCode::not_found);
  }
  CHECK(v.validate(CaseFoldStore::kPk, kSecret).ok());
  v.flush_last_use();
  CHECK(store->writes() == 1);
  CHECK(errors->count == 31);  // each one reported, so a loose store shows itself
}
