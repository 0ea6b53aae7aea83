// Private to src/: the last-use throttle behind Validator.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "apikeys/clock.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"

namespace apikeys::detail {

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
  LastUseTracker(std::int64_t interval_ms, std::size_t throttle_limit, std::size_t queue_limit);

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
  void take(std::vector<LastUse>& out);

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
              std::size_t limit) noexcept;
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
  static std::size_t filter_slots(std::size_t throttle_limit);

  // The offset of now_ms in the window, set by the first note; false when outside it.
  bool offset_of(std::int64_t now_ms, std::uint64_t& out) noexcept;

  // One read of a set: the key's way, the way a claim would take (an empty one, else
  // the one noted longest ago; never a pending one) and whether the set is marked.
  struct Scan {
    std::uint64_t seen[kWays]{};
    int found = -1;   // -1: the key is in no way
    int victim = -1;  // -1: all four ways are pending claims
    bool marked = false;
  };
  static void scan(const Set& set, std::uint64_t tag, Scan& s) noexcept;

  // After this thread put a pending claim for `tag` in way `mine`: whether the claim
  // stands. Another way with the tag holding a finished note, or a pending claim at a
  // lower way, beats it; a pending claim at a higher way is waited for (that one decides
  // without waiting for this one). `unlocked`: a claim made without the shard's mutex
  // also loses to a set that became marked (the key may have been spilled meanwhile).
  static Claim settle(Set& set, std::size_t mine, std::uint64_t tag, bool unlocked);

  // Everything the lock-free reads above could not answer: an expired note, a first use.
  void decide(const Where& w, const Uuid& key_id, std::int64_t now_ms);

  // The first-use decision for a marked set, or one whose victim must be spilled, under
  // the mutex of the set's shard. False: nothing decided, start over without the mutex.
  bool decide_locked(const Where& w, const Uuid& key_id, std::int64_t now_ms, std::uint64_t now);

  std::uint64_t map_key(std::size_t set_index, std::uint64_t tag) const noexcept {
    return (static_cast<std::uint64_t>(set_index) << 22) | tag;
  }

  void enqueue(const Uuid& key_id, std::int64_t now_ms) noexcept;

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

}  // namespace apikeys::detail
