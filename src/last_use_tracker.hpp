// Private to src/: the last-use throttle behind Validator.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "apikeys/clock.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"
#include "fold_hash.hpp"
#include "thread_annotations.hpp"

namespace apikeys::detail {

// Decides which uses of a key are worth a last_used_at write (at most one per key per
// interval) and queues them for the Validator's writer. The protocol, with the reasoning
// behind each rule, is in doc/last-use.md; the code relies on its invariants:
//  1. A note is claimed (queued) only if no earlier claim of its key covers its time.
//  2. note() first reads the key's set with relaxed loads: a covering note or a pending
//     claim of the key ends it with no lock and no write.
//  3. Only the thread that put a pending claim in a way finishes or withdraws it.
//  4. Of racing claims of one key, a note or a lower pending claim wins; a higher
//     pending claim is waited for.
//  5. An old note is renewed by compare_exchange; only the winner queues.
//  6. A covering note pushed out of a full set goes to its shard's spill map, and the
//     spilled bit marks the set for good.
//  7. Every move between the filter and a spill map happens under the shard's mutex;
//     an unlocked claim in a set that became marked withdraws.
//  8. Waits go only towards higher ways; a pending unlocked claim never takes a mutex.
//  9. Memory is fixed: 1,024 to 65,536 ways, spill maps capped (emptied when full), the
//     queue capped (claims beyond it dropped).
// Thread-safety: note() and take() may be called from any threads at once (invariant 11).
// Ownership: owns its filter, spill maps and queue; keeps no reference to its callers'.
class LastUseTracker {
 public:
  // Homes under seeds drawn from the CSPRNG (throws Error(crypto) if it fails): nobody
  // can compute which keys share a set, so nobody can pick keys that crowd another's.
  LastUseTracker(std::int64_t interval_ms, std::size_t throttle_limit, std::size_t queue_limit);
  // Homes under `home_hash`: tests, whose keys then land in the same sets every run.
  LastUseTracker(std::int64_t interval_ms, std::size_t throttle_limit, std::size_t queue_limit,
                 FoldHasher home_hash);

  // Where a key's note lives: a hash of its public key (src/fold_hash.hpp; a Validator
  // with a MemoryCache passes half of the cache's hash of the key instead). A public key
  // names one key, so each key has one home; and the Validator knows the public key
  // before it hashes the secret, so the home's set can load meanwhile, where a home taken
  // from the key id (known only once the verdict is read) left the load to stall the hit
  // (doc/last-use.md, "Where").
  std::uint64_t home_of(std::string_view public_key) const noexcept {
    return home_hash_(public_key);
  }
  // The address of `home`'s set, for the caller to prefetch. The prefetch belongs at the
  // caller's site: GCC drops a call to a function whose only effect is a prefetch.
  const void* set_at(std::uint64_t home) const noexcept { return &filter_[index_of(home)]; }

  // A valid use, at `now_ms` (milliseconds since the Unix epoch), of the key `key_id`
  // whose home_of() is `home`: queued if it is the key's claim for the interval
  // (doc/last-use.md, invariant 1), else nothing.
  void note(std::uint64_t home, const Uuid& key_id, std::int64_t now_ms) {
    note_at(where(home, key_id), key_id, now_ms);
  }

  // The cache-hit form, read coarsely: a last use is kept to the throttle interval, so a
  // time a tick or two behind costs nothing, and the full reading was a tenth of a hit.
  void note(std::uint64_t home, const Uuid& key_id, const Clock& clock) {
    note_at(where(home, key_id), key_id, to_unix_millis(clock.coarse_now()));
  }

  // Moves the queued updates into `out` (emptied first) and gives the queue `out`'s
  // storage: two buffers take turns, so after the first batches no note() on the
  // caller's thread grows a vector. See doc/last-use.md, invariant 12.
  void take(std::vector<LastUse>& out) APIKEYS_EXCLUDES(queue_mu_);

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
    Mutex mu;
    // (set index, tag) -> window offset of the note, for notes spilled out of the filter.
    SpillMap spilled APIKEYS_GUARDED_BY(mu);

    // Remembers a note pushed out of the filter. `reuse`, unless end(), is an entry no
    // longer needed: its node takes the note, no allocation. A full map is emptied
    // first (invariant 9).
    void keep(std::uint64_t key, std::uint64_t at, SpillMap::iterator reuse,
              std::size_t limit) noexcept APIKEYS_REQUIRES(mu);
  };

  std::size_t index_of(std::uint64_t home) const noexcept {
    return static_cast<std::size_t>(home >> 40) & set_mask_;
  }
  // The set from the home, the tag from the key id (fold_id(): ids that are not random
  // still give tags that differ).
  Where where(std::uint64_t home, const Uuid& key_id) const noexcept {
    const std::uint64_t h = fold_id(key_id.bytes().data());
    const std::size_t index = index_of(home);
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

  // The hot path: see doc/last-use.md, invariant 2.
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

  // The offset of now_ms in the window, set by the first note; false when outside it
  // (invariant 10).
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
  // stands (invariants 4 and 8). `unlocked`: a claim made without the shard's mutex also
  // loses to a set that became marked (invariant 7).
  static Claim settle(Set& set, std::size_t mine, std::uint64_t tag, bool unlocked);

  // Everything the relaxed reads of note_at() could not answer: an old note, a first
  // use, no base yet (invariants 3 to 5).
  void decide(const Where& w, const Uuid& key_id, std::int64_t now_ms);

  // The first-use decision for a marked set, or one whose victim must be spilled, under
  // the mutex of the set's shard (invariants 6 and 7). False: nothing decided, start
  // over without the mutex.
  bool decide_locked(const Where& w, const Uuid& key_id, std::int64_t now_ms, std::uint64_t now);

  std::uint64_t map_key(std::size_t set_index, std::uint64_t tag) const noexcept {
    return (static_cast<std::uint64_t>(set_index) << 22) | tag;
  }

  // Queues a claim; beyond the queue limit, or if the push throws, drops it (invariants
  // 9 and 10).
  void enqueue(const Uuid& key_id, std::int64_t now_ms) noexcept APIKEYS_EXCLUDES(queue_mu_);

  const std::int64_t interval_ms_;
  const std::size_t per_shard_limit_;
  const std::size_t queue_limit_;
  const std::size_t set_mask_;
  const FoldHasher home_hash_;
  const std::unique_ptr<Set[]> filter_;
  std::atomic<std::int64_t> base_ms_{kNoBase};  // set once, by the first note
  Shard shards_[kShards];
  Mutex queue_mu_;
  std::vector<LastUse> queue_ APIKEYS_GUARDED_BY(queue_mu_);
};

}  // namespace apikeys::detail
