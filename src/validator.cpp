#include "apikeys/validator.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "apikeys/error.hpp"
#include "cache_registry.hpp"

namespace apikeys {

namespace {

// The rare paths stay out of the caller, so the hit path's inlined part stays small.
#if defined(__GNUC__)
#define APIKEYS_OUT_OF_LINE __attribute__((noinline))
#else
#define APIKEYS_OUT_OF_LINE
#endif

// Decides which uses of a key are worth a last_used_at write (at most one per key per
// interval) and queues them for the background writer.
//
// The decision is taken in a 4-way set-associative filter of atomics (a set is 32 bytes,
// one cache line at most), one word per way: a 22-bit tag of the key id (an occupied bit
// and a 21-bit fingerprint), a "pending" bit, a "spilled" bit and 40 bits of "noted at"
// (milliseconds; the first note sits in the middle of that window, which spans ±17 years).
// - A repeat use within the interval: relaxed loads of the set, no lock, no write (the
//   common case on a hot key).
// - The key's note has expired: a compare_exchange renews its way; the winner queues.
// - A first use (the key is in no way of its set): the key claims a way (an empty one,
//   else the one noted longest ago, never a pending one) with a compare_exchange, as a
//   pending claim, then reads the set again (seq_cst). Another way holding the key means
//   another thread is claiming it too: a claim that sees a finished note of the key, or
//   a pending claim at a lower way, withdraws and starts over; one that sees a pending
//   claim at a higher way waits until that finishes or withdraws. So exactly one of the
//   threads presenting a new key at once finishes its claim and queues. (Of two claims the
//   later always sees the earlier, but the earlier may miss the later: "the lower way
//   wins" alone would let both queue when only the lower one is seen.) A thread that
//   meets a pending claim of its key leaves the decision to the claim's owner. Deciding
//   takes no allocation and no mutex (a compare_exchange and a store on the key's own
//   cache line); queueing the write takes the queue's mutex for one push_back, which
//   after the first batches never allocates (see take()).
// - Overflow: a claim whose victim was noted within the interval would forget that
//   note (and write that key again early). Such a claim takes the mutex of the set's
//   shard, moves the victim's (tag, time) into the shard's map and marks the set
//   "spilled" (the bit rides along every later write of the word, so a mark stays).
//   Only first uses in a marked set look in the map, under the mutex; a key found there
//   moves back into the filter, and the map node it leaves is reused for whoever it
//   displaces (a population larger than the filter turns over without allocating). All
//   moves between the filter and a map happen under that mutex; a claim made without it
//   that then sees its set marked withdraws and starts over under it. A thread holding
//   a pending claim never blocks on a mutex and waits only for claims at higher ways,
//   so no wait can deadlock. Marks are never cleared: once most sets are marked (more
//   active keys than ways), first uses cost the mutex and a map lookup again.
// Bounds: the filter has 1,024 to 65,536 ways (8 bytes each), picked from the throttle
// limit; the maps hold at most last_use_throttle_limit notes (a full shard map is
// emptied, costing at worst an early extra write); the queue holds last_use_queue_limit
// updates, beyond which updates are dropped (last use is advisory; the next use after
// the interval queues it again). A tag collision within a set (2^-21 per way) can skip
// an advisory update of the other key; a clock more than 17 years away from the first
// note records nothing.
class LastUseTracker {
 public:
  LastUseTracker(std::int64_t interval_ms, std::size_t throttle_limit, std::size_t queue_limit)
      : interval_ms_(interval_ms),
        per_shard_limit_(std::max<std::size_t>(1, throttle_limit / kShards)),
        queue_limit_(queue_limit),
        set_mask_(filter_slots(throttle_limit) / kWays - 1),
        filter_(std::make_unique<Set[]>(set_mask_ + 1)) {}

  void note(const Uuid& key_id, std::int64_t now_ms) { note_at(where(key_id), key_id, now_ms); }

  // The cache-hit form: the key's set is fetched while the clock is read (the set is a
  // random line of the filter, often not in a near cache).
  void note(const Uuid& key_id, const Clock& clock) {
    const Where w = where(key_id);
#if defined(__GNUC__)
    __builtin_prefetch(&w.set);
#endif
    note_at(w, key_id, to_unix_millis(clock.now()));
  }

  // Moves the queued updates into `out` (emptied first) and gives the queue `out`'s
  // storage: two buffers take turns, so after the first batches no note() on the
  // caller's thread grows a vector (a reallocation copied the whole queue).
  void take(std::vector<LastUse>& out) {
    out.clear();
    std::lock_guard<std::mutex> lock(queue_mu_);
    out.swap(queue_);
  }

 private:
  static constexpr std::size_t kShards = 16;
  static constexpr std::size_t kWays = 4;
  static constexpr int kTimeBits = 40;
  static constexpr std::uint64_t kTimeMask = (std::uint64_t{1} << kTimeBits) - 1;
  static constexpr std::uint64_t kSpilled = std::uint64_t{1} << kTimeBits;
  static constexpr std::uint64_t kPending = std::uint64_t{1} << (kTimeBits + 1);
  static constexpr int kTagShift = kTimeBits + 2;
  static constexpr std::uint64_t kOccupied = std::uint64_t{1} << 21;  // a tag: this and 21 bits
  static constexpr std::int64_t kNoBase = std::numeric_limits<std::int64_t>::min();
  static constexpr std::int64_t kHalfWindow = std::int64_t{1} << (kTimeBits - 1);
  static constexpr std::memory_order kSeq = std::memory_order_seq_cst;

  struct alignas(32) Set {
    std::atomic<std::uint64_t> ways[kWays];  // zero: empty
  };

  struct Where {
    Set& set;
    std::size_t index;
    std::uint64_t tag;
  };

  enum class Claim { won, lost };

  using SpillMap = std::unordered_map<std::uint64_t, std::uint64_t>;
  struct alignas(64) Shard {
    std::mutex mu;
    // (set index, tag) -> window offset of the note, for notes spilled out of the filter.
    SpillMap spilled;

    // Remembers a note pushed out of the filter (REQUIRES: mu held). `reuse`, unless
    // end(), is an entry no longer needed: its node takes the note, no allocation.
    void keep(std::uint64_t key, std::uint64_t at, SpillMap::iterator reuse,
              std::size_t limit) noexcept {
      try {
        if (reuse != spilled.end()) {
          auto node = spilled.extract(reuse);
          node.key() = key;
          node.mapped() = at;
          auto r = spilled.insert(std::move(node));
          if (!r.inserted) r.position->second = at;
          return;
        }
        if (spilled.size() >= limit) spilled.clear();
        spilled.insert_or_assign(key, at);
      } catch (...) {
        // Not remembered: at worst one early extra write of that key.
      }
    }
  };

  Where where(const Uuid& key_id) const noexcept {
    std::uint64_t hi;
    std::uint64_t lo;
    std::memcpy(&hi, key_id.bytes().data(), sizeof hi);
    std::memcpy(&lo, key_id.bytes().data() + 8, sizeof lo);
    // Mixed, so ids that are not random (a custom store's) still spread over the slots.
    const std::uint64_t h = (hi ^ (lo * 0xff51afd7ed558ccdULL)) * 0x9e3779b97f4a7c15ULL;
    const std::size_t index = static_cast<std::size_t>(h >> 40) & set_mask_;
    return {filter_[index], index, ((h >> 16) & (kOccupied - 1)) | kOccupied};
  }

  static std::uint64_t tag_of(std::uint64_t word) noexcept { return word >> kTagShift; }
  static std::uint64_t word_of(std::uint64_t tag, std::uint64_t at) noexcept {
    return (tag << kTagShift) | at;
  }
  // Whether a note taken at `word`'s time still covers `now` (both window offsets).
  bool fresh(std::uint64_t word, std::uint64_t now) const noexcept {
    return static_cast<std::int64_t>(now) - static_cast<std::int64_t>(word & kTimeMask) <
           interval_ms_;
  }

  void note_at(const Where& w, const Uuid& key_id, std::int64_t now_ms) {
    const std::int64_t base = base_ms_.load(std::memory_order_relaxed);
    if (base != kNoBase) {
      for (const auto& way : w.set.ways) {
        const std::uint64_t seen = way.load(std::memory_order_relaxed);
        if (tag_of(seen) != w.tag) continue;
        if ((seen & kPending) != 0) return;  // being claimed: its owner decides
        const auto noted = static_cast<std::int64_t>(seen & kTimeMask) + base;
        if (now_ms - noted < interval_ms_) return;
        break;
      }
    }
    decide(w, key_id, now_ms);
  }

  // A power of two near the throttle limit, between 1,024 and 65,536 slots (8 B each).
  static std::size_t filter_slots(std::size_t throttle_limit) {
    std::size_t n = 1024;
    while (n < throttle_limit && n < 65'536) n <<= 1;
    return n;
  }

  // The offset of now_ms in the window, set by the first note; false when outside it.
  bool offset_of(std::int64_t now_ms, std::uint64_t& out) noexcept {
    std::int64_t base = base_ms_.load(std::memory_order_relaxed);
    if (base == kNoBase) {
      if (now_ms < kNoBase + 2 * kHalfWindow) return false;
      const std::int64_t mine = now_ms - kHalfWindow;
      base = base_ms_.compare_exchange_strong(base, mine, std::memory_order_relaxed) ? mine : base;
    }
    if (now_ms < base) return false;
    out = static_cast<std::uint64_t>(now_ms) - static_cast<std::uint64_t>(base);
    return out <= kTimeMask;
  }

  // One read of a set: the key's way, the way a claim would take (an empty one, else
  // the one noted longest ago; never a pending one) and whether the set is marked.
  struct Scan {
    std::uint64_t seen[kWays]{};
    int found = -1;   // -1: the key is in no way
    int victim = -1;  // -1: all four ways are pending claims
    bool marked = false;
  };
  static void scan(const Set& set, std::uint64_t tag, Scan& s) noexcept {
    std::uint64_t best = ~std::uint64_t{0};
    std::uint64_t any = 0;
    for (std::size_t i = 0; i < kWays; ++i) {
      const std::uint64_t seen = set.ways[i].load(kSeq);
      s.seen[i] = seen;
      any |= seen;
      const std::uint64_t t = tag_of(seen);
      if (t == tag && s.found < 0) s.found = static_cast<int>(i);
      const std::uint64_t age = (seen & kPending) != 0 ? ~std::uint64_t{0}
                                : t == 0                 ? 0
                                                         : (seen & kTimeMask) + 1;
      if (age < best) {
        best = age;
        s.victim = static_cast<int>(i);
      }
    }
    s.marked = (any & kSpilled) != 0;
  }

  // After this thread put a pending claim for `tag` in way `mine`: whether the claim
  // stands. Another way with the tag holding a finished note, or a pending claim at a
  // lower way, beats it; a pending claim at a higher way is waited for (that one decides
  // without waiting for this one). `unlocked`: a claim made without the shard's mutex
  // also loses to a set that became marked (the key may have been spilled meanwhile).
  static Claim settle(Set& set, std::size_t mine, std::uint64_t tag, bool unlocked) {
    for (std::size_t i = 0; i < kWays; ++i) {
      if (i == mine) continue;
      for (;;) {
        const std::uint64_t seen = set.ways[i].load(kSeq);
        if (unlocked && (seen & kSpilled) != 0) return Claim::lost;
        if (tag_of(seen) != tag) break;
        if ((seen & kPending) == 0 || i < mine) return Claim::lost;
        std::this_thread::yield();
      }
    }
    return Claim::won;
  }

  // Everything the lock-free reads above could not answer: an expired note, a first use.
  APIKEYS_OUT_OF_LINE void decide(const Where& w, const Uuid& key_id, std::int64_t now_ms) {
    std::uint64_t now;
    if (!offset_of(now_ms, now)) return;  // a clock 17 years away from the first note
    Set& set = w.set;
    for (;;) {
      Scan sc;
      scan(set, w.tag, sc);
      if (sc.found >= 0) {
        std::uint64_t s = sc.seen[sc.found];
        if ((s & kPending) != 0 || fresh(s, now)) return;
        if (set.ways[sc.found].compare_exchange_strong(s, word_of(w.tag, now) | (s & kSpilled), kSeq)) {
          enqueue(key_id, now_ms);
          return;
        }
        continue;
      }
      const int v = sc.victim;
      if (sc.marked || v < 0 || (tag_of(sc.seen[v]) != 0 && fresh(sc.seen[v], now))) {
        // The map may know the key, or the victim's note must go there: under the mutex.
        if (decide_locked(w, key_id, now_ms, now)) return;
        std::this_thread::yield();  // four claims in flight, or lost to another claim
        continue;
      }
      const std::uint64_t mine = word_of(w.tag, now) | kPending;  // the set is not marked
      std::uint64_t expected = sc.seen[v];
      if (!set.ways[v].compare_exchange_strong(expected, mine, kSeq)) continue;
      if (settle(set, static_cast<std::size_t>(v), w.tag, true) == Claim::won) {
        set.ways[v].store(mine & ~kPending, kSeq);
        enqueue(key_id, now_ms);
        return;
      }
      set.ways[v].store(0, kSeq);  // withdrawn; the victim was empty or expired
    }
  }

  // The first-use decision for a marked set, or one whose victim must be spilled, under
  // the mutex of the set's shard. False: nothing decided, start over without the mutex.
  bool decide_locked(const Where& w, const Uuid& key_id, std::int64_t now_ms, std::uint64_t now) {
    Set& set = w.set;
    Shard& shard = shards_[w.index % kShards];
    const std::uint64_t key = map_key(w.index, w.tag);
    bool write = false;
    {
      std::lock_guard<std::mutex> lock(shard.mu);
      for (;;) {
        Scan sc;
        scan(set, w.tag, sc);
        if (sc.found >= 0) {
          std::uint64_t s = sc.seen[sc.found];
          if ((s & kPending) != 0 || fresh(s, now)) return true;
          if (set.ways[sc.found].compare_exchange_strong(s, word_of(w.tag, now) | (s & kSpilled), kSeq)) {
            write = true;
            break;
          }
          continue;
        }
        const auto known = shard.spilled.find(key);
        const bool remembered = known != shard.spilled.end() && fresh(known->second, now);
        const std::uint64_t at = remembered ? known->second & kTimeMask : now;
        const int v = sc.victim;
        if (v < 0) return false;
        const std::uint64_t old = sc.seen[v];
        const bool spill = tag_of(old) != 0 && fresh(old, now);
        const std::uint64_t mine =
            word_of(w.tag, at) | kPending | (old & kSpilled) | (spill ? kSpilled : 0);
        std::uint64_t expected = old;
        if (!set.ways[v].compare_exchange_strong(expected, mine, kSeq)) continue;
        const Claim c = settle(set, static_cast<std::size_t>(v), w.tag, false);
        const bool drop_known = c == Claim::won && known != shard.spilled.end();
        if (spill) {
          shard.keep(map_key(w.index, tag_of(old)), old & kTimeMask,
                     drop_known ? known : shard.spilled.end(), per_shard_limit_);
        } else if (drop_known) {
          shard.spilled.erase(known);
        }
        if (c == Claim::lost) {
          set.ways[v].store(mine & kSpilled, kSeq);
          return false;
        }
        set.ways[v].store(mine & ~kPending, kSeq);
        write = !remembered;
        break;
      }
    }
    if (write) enqueue(key_id, now_ms);
    return true;
  }

  std::uint64_t map_key(std::size_t set_index, std::uint64_t tag) const noexcept {
    return (static_cast<std::uint64_t>(set_index) << 22) | tag;
  }

  void enqueue(const Uuid& key_id, std::int64_t now_ms) noexcept {
    try {
      std::lock_guard<std::mutex> lock(queue_mu_);
      if (queue_.size() < queue_limit_) queue_.push_back(LastUse{key_id, from_unix_millis(now_ms)});
    } catch (...) {
      // Dropped, like an update beyond the queue limit (last use is advisory).
    }
  }

  const std::int64_t interval_ms_;
  const std::size_t per_shard_limit_;
  const std::size_t queue_limit_;
  const std::size_t set_mask_;
  const std::unique_ptr<Set[]> filter_;
  std::atomic<std::int64_t> base_ms_{kNoBase};  // set once, by the first note
  Shard shards_[kShards];
  std::mutex queue_mu_;
  std::vector<LastUse> queue_;
};

// Split "pk_...:sk_..." at its only colon. Anything else is malformed.
bool split_token(std::string_view token, std::string_view& pk, std::string_view& sk) noexcept {
  const auto colon = token.find(':');
  if (colon == std::string_view::npos) return false;
  pk = token.substr(0, colon);
  sk = token.substr(colon + 1);
  return true;
}

}  // namespace

struct Validator::Impl {
  std::shared_ptr<Store> store;
  std::shared_ptr<Hasher> hasher;
  std::shared_ptr<Cache> cache;
  std::shared_ptr<Clock> clock;
  ValidatorOptions options;
  mutable LastUseTracker tracker;
  // Compared against on a miss, so `not_found` does the same work as `wrong_secret`.
  Digest decoy;
  // Lets KeyManager writes through any store with this store's identity erase from
  // this validator's cache before they return (src/cache_registry.hpp).
  detail::CacheRegistration registration;

  std::atomic<std::uint64_t> last_use_failures{0};
  std::mutex flush_mu;                 // one flush at a time (flusher thread, callers)
  std::vector<LastUse> flush_batch;    // guarded by flush_mu; its storage is reused
  // Read by the constructor, not the poller: a change made between construction and
  // the poller's first run must still count as a change.
  std::uint64_t baseline_revision = 0;
  bool baseline_known = false;
  // Two background threads, each started only when needed: `poller` polls
  // Store::revision() (a cache and a poll interval), `flusher` writes last use. Apart,
  // so that a slow or failing last-use write (an UPDATE waiting on another session's
  // row lock, a busy SQLite file) never delays the poll that drops verdicts another
  // process revoked.
  std::mutex bg_mu;
  std::condition_variable bg_cv;
  bool stopping = false;  // guarded by bg_mu
  std::thread poller;
  std::thread flusher;

  Impl(std::shared_ptr<Store> s, std::shared_ptr<Hasher> h, ValidatorOptions o)
      : store(std::move(s)),
        hasher(std::move(h)),
        cache(o.cache),
        clock(o.clock ? o.clock : system_clock()),
        options(std::move(o)),
        tracker(options.last_use_interval.count(), options.last_use_throttle_limit,
                options.last_use_queue_limit) {
    decoy.pepper_id = hasher->current_pepper_id();
    decoy.bytes.fill(0xA5);
    registration = detail::CacheRegistration(store->identity(), cache);
  }

  ValidationResult validate(std::string_view pk, std::string_view sk) const noexcept;
  void run_poll();
  void poll_revision(std::uint64_t& revision, bool& known) noexcept;
  void run_flush();
  // Sleeps until `t` or until stop_threads(); true when stopping.
  bool sleep_until(std::chrono::steady_clock::time_point t);
  // Stops and joins the background threads that were started.
  void stop_threads() noexcept;
  void flush() noexcept;
};

ValidationResult Validator::Impl::validate(std::string_view pk, std::string_view sk) const noexcept {
  ValidationResult result;
  if (!options.format.is_public_key(pk) || !options.format.is_secret_key(sk)) {
    result.code = ValidationCode::malformed;
    return result;
  }
  try {
    const Digest presented = hasher->hash(sk);

    std::uint64_t token = 0;
    bool can_fill = false;
    if (cache) {
      try {
        if (auto v = cache->get(pk, presented)) {
          result.code = v->code;
          if (v->code == ValidationCode::valid) {
            if (v->expires_at) {
              // One clock, ours, decides expiry: a verdict the cache kept past the key's
              // expiry (a put delayed after our clock read, a cache on another clock)
              // still answers `expired`.
              const TimePoint now = clock->now();
              if (now >= *v->expires_at) {
                result.code = ValidationCode::expired;
                return result;
              }
              if (options.record_last_use) tracker.note(v->key_id, to_unix_millis(now));
            } else if (options.record_last_use) {
              tracker.note(v->key_id, *clock);
            }
            return ValidationResult(*v);
          }
          return result;
        }
        // Taken before the store read: a revoke that erases after this point makes
        // the put below a no-op (the revoke/fill race, doc/failure-modes.md).
        token = cache->fill_token(pk);
        can_fill = true;
      } catch (...) {
        can_fill = false;  // a failing cache is a miss, never a verdict
      }
    }

    const std::optional<KeyRecord> record = store->find(pk);
    const TimePoint now = clock->now();
    std::chrono::milliseconds ttl{0};
    if (!record) {
      // Same work as a wrong secret: one digest (above) and one constant-time compare.
      volatile bool sink = constant_time_equal(presented, decoy);
      (void)sink;
      result.code = ValidationCode::not_found;
      ttl = options.ttl_not_found;
    } else {
      const KeyInfo& info = record->info;
      const bool secret_ok = record->digest.pepper_id == presented.pepper_id
                                 ? constant_time_equal(presented, record->digest)
                                 : hasher->verify(sk, record->digest);
      if (info.expires_at && now >= *info.expires_at) {
        result.code = ValidationCode::expired;
        ttl = options.ttl_expired;
      } else if (info.status != KeyStatus::active) {
        result.code = ValidationCode::revoked;
        ttl = options.ttl_revoked;
      } else if (!secret_ok) {
        result.code = ValidationCode::wrong_secret;
        ttl = options.ttl_wrong_secret;
      } else {
        result.code = ValidationCode::valid;
        result.account_id = info.account_id;
        result.key_id = info.key_id;
        result.expires_at = info.expires_at;
        ttl = options.ttl_valid;
        if (info.expires_at) {
          // A cached `valid` must never outlive the key.
          const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*info.expires_at - now);
          ttl = std::min(ttl, left);
        }
      }
    }

    if (can_fill && ttl.count() > 0) {
      try {
        cache->put(pk, presented, result, ttl, token);  // the answer is the verdict
      } catch (...) {
        // Not caching is always safe.
      }
    }
    if (result.code == ValidationCode::valid && options.record_last_use) {
      tracker.note(result.key_id, to_unix_millis(now));
    }
    return result;
  } catch (...) {
    // Fail closed: whatever went wrong, this is not a `valid`.
    return ValidationResult{};
  }
}

void Validator::Impl::flush() noexcept {
  try {
    std::lock_guard<std::mutex> lock(flush_mu);
    tracker.take(flush_batch);
    if (!flush_batch.empty()) store->record_last_use(flush_batch);
  } catch (...) {
    last_use_failures.fetch_add(1, std::memory_order_relaxed);
  }
}

// Drops the cached verdicts that another writer (another process, mostly) may have
// made stale since the last poll: only the keys the store's change log names when it
// can say, else every verdict. `revision`/`known`: what the cache reflects so far.
void Validator::Impl::poll_revision(std::uint64_t& revision, bool& known) noexcept {
  try {
    const std::uint64_t r = store->revision();
    if (known && r == revision) return;
    std::optional<StoreChanges> changes;
    if (known) changes = store->changes_since(revision);
    if (changes) {
      for (const std::string& public_key : changes->public_keys) cache->erase(public_key);
      revision = changes->revision;
    } else {
      cache->clear();
      revision = r;
    }
    known = true;
  } catch (...) {
    // Cannot tell whether anything changed, or could not drop what did: assume the
    // worst and clear everything, and again at the next poll (fail closed).
    try {
      cache->clear();
    } catch (...) {
    }
    known = false;
  }
}

bool Validator::Impl::sleep_until(std::chrono::steady_clock::time_point t) {
  std::unique_lock<std::mutex> lock(bg_mu);
  return bg_cv.wait_until(lock, t, [this] { return stopping; });
}

void Validator::Impl::run_poll() {
  using steady = std::chrono::steady_clock;
  const auto poll = options.revision_poll_interval;
  std::uint64_t revision = baseline_revision;
  bool known = baseline_known;
  for (auto next = steady::now() + poll; !sleep_until(next);) {
    next = steady::now() + poll;
    poll_revision(revision, known);
  }
}

void Validator::Impl::run_flush() {
  using steady = std::chrono::steady_clock;
  const auto every = options.flush_interval;
  for (auto next = steady::now() + every; !sleep_until(next);) {
    next = steady::now() + every;
    flush();
  }
}

void Validator::Impl::stop_threads() noexcept {
  {
    std::lock_guard<std::mutex> lock(bg_mu);
    stopping = true;
  }
  bg_cv.notify_all();
  if (poller.joinable()) poller.join();
  if (flusher.joinable()) flusher.join();
}

Validator::Validator(std::shared_ptr<Store> store, std::shared_ptr<Hasher> hasher,
                     ValidatorOptions options) {
  if (!store) throw Error(ErrorCode::invalid_argument, "a Validator needs a Store");
  if (!hasher) throw Error(ErrorCode::invalid_argument, "a Validator needs a Hasher");
  options.format.check();
  impl_ = std::make_unique<Impl>(std::move(store), std::move(hasher), std::move(options));
  const bool polling = impl_->cache != nullptr && impl_->options.revision_poll_interval.count() > 0;
  if (polling) {
    try {
      impl_->baseline_revision = impl_->store->revision();
      impl_->baseline_known = true;
    } catch (...) {
      // Unknown: the first poll clears the cache (fail closed).
    }
  }
  if (impl_->cache) {
    // The cache may hold verdicts from before revokes that no Validator was watching
    // for: one kept across Validators, a shared Redis across a restart of every node.
    // Start from nothing. After the baseline read, so a revoke committed in between is
    // seen by the first poll as well.
    try {
      impl_->cache->clear();
    } catch (...) {
      impl_->baseline_known = false;  // the first poll clears it again
    }
  }
  try {
    if (polling) impl_->poller = std::thread([impl = impl_.get()] { impl->run_poll(); });
    if (impl_->options.record_last_use) {
      impl_->flusher = std::thread([impl = impl_.get()] { impl->run_flush(); });
    }
  } catch (...) {
    impl_->stop_threads();  // a thread left joinable would terminate the process
    throw;
  }
}

Validator::~Validator() {
  impl_->stop_threads();
  impl_->flush();
}

ValidationResult Validator::validate(std::string_view public_key,
                                     std::string_view secret_key) const noexcept {
  return impl_->validate(public_key, secret_key);
}

ValidationResult Validator::validate(std::string_view token) const noexcept {
  std::string_view pk;
  std::string_view sk;
  if (!split_token(token, pk, sk)) {
    ValidationResult r;
    r.code = ValidationCode::malformed;
    return r;
  }
  return impl_->validate(pk, sk);
}

void Validator::invalidate(std::string_view public_key) {
  if (impl_->cache) impl_->cache->erase(public_key);
}

void Validator::flush_last_use() noexcept { impl_->flush(); }

std::uint64_t Validator::last_use_failures() const noexcept {
  return impl_->last_use_failures.load(std::memory_order_relaxed);
}

const ValidatorOptions& Validator::options() const noexcept { return impl_->options; }

}  // namespace apikeys
