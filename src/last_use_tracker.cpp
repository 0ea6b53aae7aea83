#include "last_use_tracker.hpp"

#include <thread>

namespace apikeys::detail {

namespace {

// The rare paths stay out of the caller, so the hit path's inlined part stays small.
#if defined(__GNUC__)
#define APIKEYS_OUT_OF_LINE __attribute__((noinline))
#else
#define APIKEYS_OUT_OF_LINE
#endif

}  // namespace

LastUseTracker::LastUseTracker(std::int64_t interval_ms, std::size_t throttle_limit,
                               std::size_t queue_limit)
    : LastUseTracker(interval_ms, throttle_limit, queue_limit,
                     FoldHasher(SipHasher(), "apikeys last-use home")) {}

LastUseTracker::LastUseTracker(std::int64_t interval_ms, std::size_t throttle_limit,
                               std::size_t queue_limit, FoldHasher home_hash)
    : interval_ms_(interval_ms),
      per_shard_limit_(std::max<std::size_t>(1, throttle_limit / kShards)),
      queue_limit_(queue_limit),
      set_mask_(filter_slots(throttle_limit) / kWays - 1),
      home_hash_(home_hash),
      filter_(std::make_unique<Set[]>(set_mask_ + 1)) {}

void LastUseTracker::take(std::vector<LastUse>& out) {
  out.clear();
  MutexLock lock(queue_mu_);
  out.swap(queue_);
}

void LastUseTracker::Shard::keep(std::uint64_t key, std::uint64_t at, SpillMap::iterator reuse,
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

std::size_t LastUseTracker::filter_slots(std::size_t throttle_limit) {
  std::size_t n = 1024;
  while (n < throttle_limit && n < 65'536) n <<= 1;
  return n;
}

bool LastUseTracker::offset_of(std::int64_t now_ms, std::uint64_t& out) noexcept {
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

void LastUseTracker::scan(const Set& set, std::uint64_t tag, Scan& s) noexcept {
  std::uint64_t best = ~std::uint64_t{0};
  std::uint64_t any = 0;
  for (std::size_t i = 0; i < kWays; ++i) {
    const std::uint64_t seen = set.ways[i].load(kSeq);
    s.seen[i] = seen;
    any |= seen;
    const std::uint64_t t = tag_of(seen);
    if (t == tag && s.found < 0) s.found = static_cast<int>(i);
    const std::uint64_t age = (seen & kPending) != 0 ? ~std::uint64_t{0}
                              : t == 0               ? 0
                                                     : (seen & kTimeMask) + 1;
    if (age < best) {
      best = age;
      s.victim = static_cast<int>(i);
    }
  }
  s.marked = (any & kSpilled) != 0;
}

LastUseTracker::Claim LastUseTracker::settle(Set& set, std::size_t mine, std::uint64_t tag,
                                             bool unlocked) {
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

APIKEYS_OUT_OF_LINE void LastUseTracker::decide(const Where& w, const Uuid& key_id,
                                                std::int64_t now_ms) {
  std::uint64_t now;
  if (!offset_of(now_ms, now)) return;  // a clock 17 years away from the first note
  Set& set = w.set;
  for (;;) {
    Scan sc;
    scan(set, w.tag, sc);
    if (sc.found >= 0) {
      std::uint64_t s = sc.seen[sc.found];
      if ((s & kPending) != 0 || fresh(s, now)) return;
      const std::uint64_t renewed = word_of(w.tag, now) | (s & kSpilled);
      if (set.ways[sc.found].compare_exchange_strong(s, renewed, kSeq)) {
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

bool LastUseTracker::decide_locked(const Where& w, const Uuid& key_id, std::int64_t now_ms,
                                   std::uint64_t now) {
  Set& set = w.set;
  Shard& shard = shards_[w.index % kShards];
  const std::uint64_t key = map_key(w.index, w.tag);
  bool write = false;
  {
    MutexLock lock(shard.mu);
    for (;;) {
      Scan sc;
      scan(set, w.tag, sc);
      if (sc.found >= 0) {
        std::uint64_t s = sc.seen[sc.found];
        if ((s & kPending) != 0 || fresh(s, now)) return true;
        const std::uint64_t renewed = word_of(w.tag, now) | (s & kSpilled);
        if (set.ways[sc.found].compare_exchange_strong(s, renewed, kSeq)) {
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

void LastUseTracker::enqueue(const Uuid& key_id, std::int64_t now_ms) noexcept {
  try {
    MutexLock lock(queue_mu_);
    if (queue_.size() < queue_limit_) queue_.push_back(LastUse{key_id, from_unix_millis(now_ms)});
  } catch (...) {
    // Dropped, like an update beyond the queue limit (last use is advisory).
  }
}

}  // namespace apikeys::detail
