// detail::LastUseTracker (src/last_use_tracker.hpp) on its own, without a Validator: what
// it promises the writer behind it. At most one queued update per key per interval,
// whichever thread notes the key and however the filter is crowded; every claimed use
// handed over by take() exactly once; a queue and a memory footprint that stay bounded
// whatever the number of keys. Clocks are plain millisecond counts (or a ManualClock).
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "../../src/last_use_tracker.hpp"
#include "apikeys/clock.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "test_support.hpp"

using apikeys::LastUse;
using apikeys::Uuid;
using apikeys::detail::LastUseTracker;

namespace {

constexpr std::int64_t kInterval = 900'000;  // ms: the Validator's default
constexpr std::int64_t kT0 = apikeys_test::kTestStartMillis;
constexpr std::size_t kNoQueueLimit = std::size_t{1} << 24;

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Key i: a random-looking but fixed version-4 id with i in its last four bytes.
Uuid key(std::size_t i) {
  std::array<std::uint8_t, 16> b{};
  const std::uint64_t r = splitmix64(i);
  for (int k = 0; k < 8; ++k) {
    b[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(r >> (8 * k));
  }
  b[6] = static_cast<std::uint8_t>(0x40 | (b[6] & 0x0f));
  b[8] = 0x80;
  for (int k = 0; k < 4; ++k) {
    b[static_cast<std::size_t>(15 - k)] = static_cast<std::uint8_t>(i >> (8 * k));
  }
  return Uuid(b);
}

// Homes under fixed seeds: every run puts these tests' keys in the same sets. Under
// random seeds (a Validator's tracker) two keys may share a set and a tag now and then
// (doc/last-use.md, invariant 10), which the exact counts below do not allow for.
apikeys::detail::FoldHasher fixed_homes() {
  return apikeys::detail::FoldHasher(0x6c6173742d757365ULL, 0x686f6d652d736574ULL);
}

// Key i's public key, from which the tracker takes the key's home (its set).
std::string public_key(std::size_t i) { return "pk_test" + std::to_string(i) + "Zq9XwT"; }

// A valid use of key i, as the Validator notes one.
void note(LastUseTracker& tracker, std::size_t i, std::int64_t now_ms) {
  tracker.note(tracker.home_of(public_key(i)), key(i), now_ms);
}
void note(LastUseTracker& tracker, std::size_t i, const apikeys::Clock& clock) {
  tracker.note(tracker.home_of(public_key(i)), key(i), clock);
}

std::size_t index_of(const Uuid& id) {
  const auto& b = id.bytes();
  return (std::size_t{b[12]} << 24) | (std::size_t{b[13]} << 16) | (std::size_t{b[14]} << 8) |
         std::size_t{b[15]};
}

std::vector<LastUse> take(LastUseTracker& tracker) {
  std::vector<LastUse> out;
  tracker.take(out);
  return out;
}

// How many updates each of keys [0, n) has in `batch`.
std::vector<std::size_t> counts(const std::vector<LastUse>& batch, std::size_t n) {
  std::vector<std::size_t> c(n, 0);
  for (const LastUse& u : batch) {
    const std::size_t i = index_of(u.key_id);
    if (i < n) ++c[i];
  }
  return c;
}

// How many of `c` are not `expected`.
std::size_t not_equal(const std::vector<std::size_t>& c, std::size_t expected) {
  return static_cast<std::size_t>(
      std::count_if(c.begin(), c.end(), [&](std::size_t x) { return x != expected; }));
}

// Notes keys [0, n) once each at `now`, in an order fixed by `seed` (a permutation).
void note_all(LastUseTracker& tracker, std::size_t n, std::uint64_t seed, std::int64_t now) {
  std::size_t step = 1 + splitmix64(seed) % (n - 1);
  while (std::gcd(step, n) != 1) ++step;
  for (std::size_t k = 0, i = seed % n; k < n; ++k, i = (i + step) % n) note(tracker, i, now);
}

#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 33)
#define APIKEYS_TEST_HEAP_IN_USE 1
// Bytes this process's main heap has handed out and not taken back (0 under a sanitizer
// that replaces malloc).
std::size_t heap_in_use() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}
#endif
#endif

}  // namespace

TEST_CASE("last-use tracker: a key is queued once per interval", "[last_use]") {
  LastUseTracker tracker(kInterval, 1'000'000, kNoQueueLimit, fixed_homes());
  note(tracker, 1, kT0);
  note(tracker, 1, kT0 + 1);
  note(tracker, 1, kT0 + kInterval - 1);
  note(tracker, 2, kT0 + 5);

  const std::vector<LastUse> first = take(tracker);
  REQUIRE(first.size() == 2);
  CHECK(first[0].key_id == key(1));
  CHECK(first[0].at == apikeys::from_unix_millis(kT0));  // the use that was claimed
  CHECK(first[1].key_id == key(2));
  CHECK(first[1].at == apikeys::from_unix_millis(kT0 + 5));

  // The interval runs from the claimed use, not from the last one seen.
  note(tracker, 1, kT0 + kInterval - 1);
  CHECK(take(tracker).empty());
  note(tracker, 1, kT0 + kInterval);
  note(tracker, 1, kT0 + kInterval + 1);
  note(tracker, 2, kT0 + kInterval);  // key 2's interval has 5 ms to go
  const std::vector<LastUse> second = take(tracker);
  REQUIRE(second.size() == 1);
  CHECK(second[0].key_id == key(1));
  CHECK(second[0].at == apikeys::from_unix_millis(kT0 + kInterval));

  // The renewed note starts a new interval.
  note(tracker, 1, kT0 + 2 * kInterval - 1);
  note(tracker, 2, kT0 + kInterval + 5);
  const std::vector<LastUse> third = take(tracker);
  REQUIRE(third.size() == 1);
  CHECK(third[0].key_id == key(2));
  note(tracker, 1, kT0 + 2 * kInterval);
  CHECK(take(tracker).size() == 1);
}

TEST_CASE("last-use tracker: the clock form notes the clock's time", "[last_use]") {
  apikeys::ManualClock clock(apikeys_test::test_start());
  LastUseTracker tracker(kInterval, 1'000'000, kNoQueueLimit, fixed_homes());
  note(tracker, 7, clock);
  clock.advance(std::chrono::milliseconds(kInterval - 1));
  note(tracker, 7, clock);
  const std::vector<LastUse> batch = take(tracker);
  REQUIRE(batch.size() == 1);
  CHECK(batch[0].key_id == key(7));
  CHECK(batch[0].at == apikeys_test::test_start());
  clock.advance(std::chrono::milliseconds(1));
  note(tracker, 7, clock);
  CHECK(take(tracker).size() == 1);
}

TEST_CASE("last-use tracker: take hands the batch over once and takes turns with buffers",
          "[last_use]") {
  LastUseTracker tracker(kInterval, 1'000'000, kNoQueueLimit, fixed_homes());
  for (std::size_t i = 0; i < 5; ++i) note(tracker, i, kT0 + static_cast<std::int64_t>(i));

  std::vector<LastUse> out{LastUse{key(99), {}}};  // stale contents are discarded
  out.reserve(1'000);
  const LastUse* const caller_buffer = out.data();
  tracker.take(out);
  REQUIRE(out.size() == 5);
  for (std::size_t i = 0; i < 5; ++i) {
    CHECK(out[i].key_id == key(i));  // in the order they were claimed
    CHECK(out[i].at == apikeys::from_unix_millis(kT0 + static_cast<std::int64_t>(i)));
  }

  // The queue now fills the caller's old buffer: a batch up to its capacity costs the
  // noting threads no allocation.
  for (std::size_t i = 5; i < 500; ++i) note(tracker, i, kT0);
  std::vector<LastUse> next;
  tracker.take(next);
  CHECK(next.size() == 495);
  CHECK(next.data() == caller_buffer);
  CHECK(counts(next, 5) == std::vector<std::size_t>(5, 0));  // handed over once only
  CHECK(take(tracker).empty());
}

TEST_CASE(
    "last-use tracker: a full queue drops updates, and a dropped use is not retried "
    "within its interval",
    "[last_use]") {
  LastUseTracker tracker(kInterval, 1'000'000, 10, fixed_homes());
  for (std::size_t i = 0; i < 50; ++i) note(tracker, i, kT0);
  std::vector<std::size_t> c = counts(take(tracker), 50);
  CHECK(std::accumulate(c.begin(), c.end(), std::size_t{0}) == 10);
  CHECK(std::all_of(c.begin(), c.begin() + 10, [](std::size_t x) { return x == 1; }));

  // Last use is advisory: the 40 dropped keys count as noted until their interval ends.
  for (std::size_t i = 0; i < 50; ++i) note(tracker, i, kT0 + 1);
  CHECK(take(tracker).empty());

  // An emptied queue takes updates again, still 10 at most.
  for (std::size_t i = 50; i < 100; ++i) note(tracker, i, kT0 + 2);
  CHECK(take(tracker).size() == 10);
  for (std::size_t i = 0; i < 5; ++i) note(tracker, i, kT0 + kInterval);
  CHECK(take(tracker).size() == 5);
}

TEST_CASE("last-use tracker: keys crowding the filter are still throttled exactly", "[last_use]") {
  // A throttle limit of 1,024 gives the smallest filter (256 sets of 4 ways): 1,024 keys
  // overflow many sets, so notes move between the filter and the spill maps.
  constexpr std::size_t kKeys = 1'024;
  LastUseTracker tracker(kInterval, kKeys, kNoQueueLimit, fixed_homes());
  note_all(tracker, kKeys, 1, kT0);
  CHECK(not_equal(counts(take(tracker), kKeys), 1) == 0);

  for (std::uint64_t seed = 2; seed < 6; ++seed) {
    note_all(tracker, kKeys, seed, kT0 + kInterval - 1);
  }
  CHECK(take(tracker).empty());

  note_all(tracker, kKeys, 6, kT0 + kInterval);
  note_all(tracker, kKeys, 7, kT0 + kInterval + 1);
  CHECK(not_equal(counts(take(tracker), kKeys), 1) == 0);
}

TEST_CASE("last-use tracker: far more keys than the throttle limit cost bounded memory",
          "[last_use]") {
  // 64 queued updates at most, 1,024 keys remembered: the tracker forgets (at worst an
  // early extra write of a forgotten key) rather than grow with the key population.
  LastUseTracker tracker(kInterval, 1'024, 64, fixed_homes());
  std::size_t next = 0;
  auto note_new = [&](std::size_t n) {
    std::size_t queued = 0;
    for (const std::size_t end = next + n; next < end; ++next) {
      // Later keys a little later: the filter evicts the notes taken longest ago.
      note(tracker, next, kT0 + static_cast<std::int64_t>(next / 256));
      if (next % 1'000 == 999) {
        const std::size_t batch = take(tracker).size();
        CHECK(batch <= 64);
        queued += batch;
      }
    }
    return queued + take(tracker).size();
  };
  note_new(10'000);  // every spill map has filled and been emptied
#if defined(APIKEYS_TEST_HEAP_IN_USE)
  const std::size_t before = heap_in_use();
#endif
  CHECK(note_new(200'000) == 200 * 64);  // every batch is full
#if defined(APIKEYS_TEST_HEAP_IN_USE)
  // Remembering 200,000 keys would take several MB.
  CHECK(heap_in_use() <= before + 256 * 1'024);
#endif

  // The first keys were forgotten: a use of one now is a first use again.
  note(tracker, 0, kT0 + 1'000);
  note(tracker, 1, kT0 + 1'000);
  CHECK(take(tracker).size() == 2);
}

TEST_CASE("last-use tracker: threads noting the same keys claim each exactly once",
          "[last_use][concurrency]") {
  // Every thread notes every key of the crowded filter above, while another thread takes
  // batches: no use is claimed twice, none is lost, and
  // take() hands each one over exactly once.
  constexpr std::size_t kKeys = 1'024;
  constexpr int kThreads = 6;
  LastUseTracker tracker(kInterval, kKeys, kNoQueueLimit, fixed_homes());

  auto race = [&](std::int64_t now) {
    std::vector<LastUse> taken;
    std::atomic<int> running{kThreads};
    std::thread taker([&] {
      std::vector<LastUse> batch;
      while (running.load() > 0) {
        tracker.take(batch);
        taken.insert(taken.end(), batch.begin(), batch.end());
        std::this_thread::yield();
      }
    });
    std::vector<std::thread> threads;
    std::atomic<int> ready{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        ++ready;
        while (ready.load() < kThreads) std::this_thread::yield();
        // First all in one order (threads presenting one new key at once), then each in
        // its own (claims of neighbouring keys crossing).
        note_all(tracker, kKeys, 1, now);
        for (int round = 1; round < 3; ++round) {
          note_all(tracker, kKeys, static_cast<std::uint64_t>(10 * t + round + 1), now);
        }
        --running;
      });
    }
    for (auto& th : threads) th.join();
    taker.join();
    const std::vector<LastUse> rest = take(tracker);
    taken.insert(taken.end(), rest.begin(), rest.end());
    return taken;
  };

  const std::vector<LastUse> first = race(kT0);
  CHECK(first.size() == kKeys);
  CHECK(not_equal(counts(first, kKeys), 1) == 0);

  // All within the interval: nothing. After it: the renewal race, again once each.
  CHECK(race(kT0 + kInterval - 1).empty());
  const std::vector<LastUse> renewed = race(kT0 + kInterval);
  CHECK(renewed.size() == kKeys);
  CHECK(not_equal(counts(renewed, kKeys), 1) == 0);
}

TEST_CASE("last-use tracker: threads presenting one new key at the same moment claim it once",
          "[last_use][concurrency]") {
  // Key by key, all threads are released together on one key: the claims race for one
  // set, each on its own way, and exactly one of them may stand.
  constexpr std::size_t kKeys = 2'000;
  constexpr int kThreads = 3;
  LastUseTracker tracker(kInterval, 1'000'000, kNoQueueLimit, fixed_homes());
  std::atomic<std::size_t> go{0};  // key + 1 to present; 0: not yet
  std::atomic<int> done{0};
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> now{kT0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (std::size_t seen = 0;;) {
        std::size_t k;
        while ((k = go.load()) == seen) {
          if (stop.load()) return;
          std::this_thread::yield();
        }
        seen = k;
        note(tracker, (k - 1) % kKeys, now.load());
        ++done;
      }
    });
  }
  auto present_all = [&](std::size_t round) {
    for (std::size_t k = 0; k < kKeys; ++k) {
      done.store(0);
      go.store(round * kKeys + k + 1);
      while (done.load() < kThreads) std::this_thread::yield();
    }
  };
  present_all(0);
  std::vector<std::size_t> c = counts(take(tracker), kKeys);
  CHECK(not_equal(c, 1) == 0);
  now.store(kT0 + kInterval);  // the renewal race
  present_all(1);
  stop.store(true);
  for (auto& th : threads) th.join();
  c = counts(take(tracker), kKeys);
  CHECK(not_equal(c, 1) == 0);
}

TEST_CASE("last-use tracker: counter ids of a custom store sharing one set keep their notes",
          "[last_use]") {
  // A store of the user's own may number its keys: ids 00000000-...-000000000001 on,
  // which differ only in their last bytes. Every key here has the same home (the same
  // set), so each needs a tag of its own to be claimed: a tag that ignored the last
  // bytes gave all of them one note, and one write between them.
  LastUseTracker tracker(kInterval, 1'000'000, kNoQueueLimit, fixed_homes());
  const std::uint64_t home = tracker.home_of("pk_shared_home");
  constexpr std::size_t kKeys = 300;
  for (std::size_t i = 1; i <= kKeys; ++i) {
    std::array<std::uint8_t, 16> b{};
    b[14] = static_cast<std::uint8_t>(i >> 8);
    b[15] = static_cast<std::uint8_t>(i);
    tracker.note(home, Uuid(b), kT0);
  }
  CHECK(take(tracker).size() == kKeys);
}
