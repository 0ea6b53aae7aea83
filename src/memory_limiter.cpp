// MemoryLimiter (memory_limiter.hpp): GCRA states in shards, each an open-addressing
// table under its own mutex, and credit leases beside them. doc/rate-limits.md says why
// each step is where it is.
#include "apikeys/memory_limiter.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <vector>

#include "admission_checks.hpp"
#include "apikeys/error.hpp"
#include "fold_hash.hpp"
#include "gcra.hpp"
#include "siphash.hpp"
#include "system_audit.hpp"
#include "thread_annotations.hpp"

namespace apikeys {

namespace {

constexpr std::size_t kShards = 64;        // a power of two
constexpr std::size_t kMaxProbe = 32;      // slots looked at per lookup, at most
constexpr std::size_t kNearProbe = 8;      // a new entry further from home rebuilds the table
constexpr std::size_t kFirstSlots = 16;    // a shard's first slot table
constexpr std::size_t kSlotsPerState = 4;  // a full table's slots per state of capacity
constexpr std::size_t kSlotsPerLive = 4;   // a rebuilt table's slots per state kept
constexpr std::size_t kFirstLeases = 8;    // and lease table
// A state is dropped (or taken over by another lineage) only once it has been at rest
// for this long. A request decides at the time it was given, which may be earlier than
// another's that reached the lock first (a thread kept off its core between its clock
// read and the lock); a state dropped at the later time would let the earlier request
// start from rest, admitting what the time between them restored.
constexpr std::int64_t kRestSlackNs = 1'000'000'000;

// True when the state may be dropped at `now_ns`: at rest since kRestSlackNs before.
bool droppable(const detail::GcraState& s, std::int64_t now_ns) noexcept {
  const std::int64_t then = now_ns < INT64_MIN + kRestSlackNs ? INT64_MIN : now_ns - kRestSlackNs;
  return detail::gcra_at_rest(s, then);
}

// One rate limit's state: 48 bytes (kBytesPerState).
struct Slot {
  detail::Int128 tat = 0;  // GcraState's fields, laid out flat (no padding)
  Uuid lineage;
  std::uint64_t name_hash = 0;
  std::uint64_t scale = 0;  // 0: free

  detail::GcraState state() const noexcept { return detail::GcraState{tat, scale}; }
};
static_assert(sizeof(Slot) == MemoryLimiter::kBytesPerState, "kBytesPerState is out of date");

// One lineage's lease: credits taken from the store and not spent yet.
struct Lease {
  Uuid lineage;
  std::uint64_t count = 0;            // 0: free
  std::uint64_t store_remaining = 0;  // the store's balance when it was taken
  std::int64_t period = 0;            // the refill period it was taken in
  std::uint64_t generation = 0;       // and the balance's generation (CreditTake)
  TimePoint period_end{};             // spent only before this
  TimePoint expires{};                // and before this (lease_ttl)
};

// t + d, or TimePoint::max() when that is past it. REQUIRES: d > 0.
TimePoint add_saturating(TimePoint t, std::chrono::milliseconds d) noexcept {
  using Duration = TimePoint::duration;
  if (d >= std::chrono::duration_cast<std::chrono::milliseconds>(Duration::max())) {
    return TimePoint::max();
  }
  const auto step = std::chrono::duration_cast<Duration>(d);
  return t.time_since_epoch() > Duration::max() - step ? TimePoint::max() : t + step;
}

std::size_t round_up_pow2(std::size_t n) noexcept {
  std::size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

struct MemoryLimiter::Impl {
  // A shard's tables start small and double (up to slots_per_shard and
  // leases_per_shard) when a new entry would sit too far from its home: states in use
  // stay packed into as few cache lines and pages as they need, rather than spread
  // over the whole capacity.
  struct alignas(64) Shard {
    detail::Mutex mu;
    std::vector<Slot> slots APIKEYS_GUARDED_BY(mu);    // allocated on first use
    std::vector<Lease> leases APIKEYS_GUARDED_BY(mu);  // likewise
    // Bumped by credits_reset(): a request that took credits out of a lease, or from
    // the store, before a reset must not put what is left into a lease after it.
    std::uint64_t resets APIKEYS_GUARDED_BY(mu) = 0;
    // Where the tables are (addresses as integers, 0 for none), for prefetch() only,
    // which reads them without the lock: written under it whenever a table moves
    // (publish()). A reader may see a stale or torn pair (an old address with a new
    // mask): the address it computes, in integers, then names memory a prefetch may
    // touch harmlessly (it never faults); nothing is ever read through it.
    std::atomic<std::uintptr_t> slots_at{0};
    std::atomic<std::size_t> slots_mask{0};
    std::atomic<std::uintptr_t> leases_at{0};
    std::atomic<std::size_t> leases_mask{0};
    // Last, past the lines every request reads: the lineages of this shard's requests
    // that decided their rate limits and are out at the store for credits, without the
    // lock, to decide again when it answers (Pin). Their states are neither dropped nor
    // taken over meanwhile (may_go()): a store call may take longer than kRestSlackNs,
    // and a state dropped then would let such a request decide again from rest. One
    // entry per request in flight.
    std::vector<Uuid> pinned APIKEYS_GUARDED_BY(mu);
  };

  // True when a request of `lineage` is out at the store between its two decisions.
  static bool pinned(const Shard& sh, const Uuid& lineage) APIKEYS_REQUIRES(sh.mu) {
    for (const Uuid& p : sh.pinned) {
      if (p == lineage) return true;
    }
    return false;
  }
  // True when the state in `s` may go (dropped, or taken over) at `now_ns`.
  static bool may_go(const Shard& sh, const Slot& s, std::int64_t now_ns) APIKEYS_REQUIRES(sh.mu) {
    return droppable(s.state(), now_ns) && !pinned(sh, s.lineage);
  }

  // Pins a request's lineage in its shard (Shard::pinned) from its first decision to
  // its last: pin() under the shard's lock after the first, unpin() under it at the
  // last. Were the request to end between them (a throw from the store), the
  // destructor takes the lock to unpin; no path destroys it pinned with the lock held.
  class Pin {
   public:
    explicit Pin(Shard& sh) noexcept : sh_(sh) {}
    ~Pin() {
      if (!lineage_) return;
      detail::MutexLock lock(sh_.mu);
      unpin(sh_);
    }
    Pin(const Pin&) = delete;
    Pin& operator=(const Pin&) = delete;

    // Throws bad_alloc (nothing pinned) when the list cannot grow. `sh` is the shard
    // this Pin was made for, named again so that the analysis sees its lock held.
    void pin(Shard& sh, const Uuid& lineage) APIKEYS_REQUIRES(sh.mu) {
      assert(&sh == &sh_);
      sh.pinned.push_back(lineage);
      lineage_ = lineage;
    }
    void unpin(Shard& sh) APIKEYS_REQUIRES(sh.mu) {
      assert(&sh == &sh_);
      if (!lineage_) return;
      std::vector<Uuid>& p = sh.pinned;
      for (std::size_t i = 0; i < p.size(); ++i) {
        if (p[i] != *lineage_) continue;
        p[i] = p.back();
        p.pop_back();
        break;
      }
      lineage_.reset();
    }

   private:
    Shard& sh_;
    std::optional<Uuid> lineage_;
  };

  template <class Entry>
  static std::uintptr_t address_of(const std::vector<Entry>& table) noexcept {
    return table.empty() ? 0 : reinterpret_cast<std::uintptr_t>(table.data());
  }
  template <class Entry>
  static std::size_t mask_of(const std::vector<Entry>& table) noexcept {
    return table.empty() ? 0 : table.size() - 1;
  }
  static void publish(Shard& sh) APIKEYS_REQUIRES(sh.mu) {
    sh.slots_at.store(address_of(sh.slots), std::memory_order_relaxed);
    sh.slots_mask.store(mask_of(sh.slots), std::memory_order_relaxed);
    sh.leases_at.store(address_of(sh.leases), std::memory_order_relaxed);
    sh.leases_mask.store(mask_of(sh.leases), std::memory_order_relaxed);
  }
  // True when what prefetch() reads names the tables as they are: asserted where a
  // lookup starts, so a path that moves a table without publish() fails in Debug builds.
  static bool published(const Shard& sh) APIKEYS_REQUIRES(sh.mu) {
    return sh.slots_at.load(std::memory_order_relaxed) == address_of(sh.slots) &&
           sh.slots_mask.load(std::memory_order_relaxed) == mask_of(sh.slots) &&
           sh.leases_at.load(std::memory_order_relaxed) == address_of(sh.leases) &&
           sh.leases_mask.load(std::memory_order_relaxed) == mask_of(sh.leases);
  }

  // First: cache-line aligned, so the fields after it pack without padding.
  std::array<Shard, kShards> shards;
  std::shared_ptr<Store> store;
  MemoryLimiterOptions options;
  // A limit's name: names come from whoever sets a key's policy (src/fold_hash.hpp).
  detail::FoldHasher name_hash;
  std::size_t slots_per_shard;
  std::size_t leases_per_shard;
  std::atomic<std::size_t> states{0};
  // The latest request time seen (ms): return_leases() judges periods on the clock the
  // requests came with, which may be a test's.
  std::atomic<std::int64_t> last_now_ms{0};

  Impl(std::shared_ptr<Store> s, MemoryLimiterOptions o)
      : store(std::move(s)),
        options(o),
        name_hash(detail::SipHasher(), "apikeys limit name"),
        // Four slots per state of capacity at most: at a quarter full, no probe window of
        // 32 fills, so `capacity` live states always find a place.
        slots_per_shard(
            round_up_pow2(std::max<std::size_t>(o.capacity / kShards * kSlotsPerState, kMaxProbe))),
        leases_per_shard(round_up_pow2(std::max<std::size_t>(o.lease_capacity / kShards, 8))) {}

  // fold_id(): lineage ids that are not random (counters) still spread over shards,
  // slots and leases.
  std::uint64_t lineage_hash(const Uuid& id) const noexcept {
    return detail::fold_id(id.bytes().data());
  }
  Shard& shard_of(std::uint64_t lh) noexcept { return shards[(lh >> 58) & (kShards - 1)]; }

  static std::size_t slot_home(std::size_t mask, std::uint64_t lh, std::uint64_t nh) noexcept {
    return static_cast<std::size_t>((lh ^ (nh * 0xc2b2ae3d27d4eb4fULL)) >> 7) & mask;
  }
  static std::size_t lease_home(std::size_t mask, std::uint64_t lh) noexcept {
    return static_cast<std::size_t>(lh >> 11) & mask;
  }

  // Rebuilds `table` at `size` slots, or more if an entry would not fit in its probe
  // window (doubling, up to `max`), placing each entry that `keep` accepts at the first
  // place from its `home(mask, entry)` that `taken` finds free. Returns how many entries
  // `taken` found in the old table and `keep` dropped; nullopt, and the table untouched,
  // when they cannot fit within `max`.
  template <class Entry, class Taken, class Keep, class Home>
  static std::optional<std::size_t> rebuild(std::vector<Entry>& table, std::size_t size,
                                            std::size_t max, const Taken& taken, const Keep& keep,
                                            const Home& home) {
    for (; size <= max; size *= 2) {
      std::vector<Entry> fresh(size);
      const std::size_t mask = size - 1;
      const std::size_t window = std::min(kMaxProbe, size);
      std::size_t dropped = 0;
      bool fits = true;
      for (const Entry& e : table) {
        if (!taken(e)) continue;
        if (!keep(e)) {
          ++dropped;
          continue;
        }
        std::size_t i = home(mask, e);
        std::size_t probe = 0;
        while (probe < window && taken(fresh[i])) {
          ++probe;
          i = (i + 1) & mask;
        }
        if (probe == window) {
          fits = false;
          break;
        }
        fresh[i] = e;
      }
      if (!fits) continue;
      table.swap(fresh);
      return dropped;
    }
    return std::nullopt;
  }

  // Rebuilds the shard's slot table without the states at rest at `now_ns` (one at rest
  // is the same as none), except `lineage`'s (this request's limits may have claimed
  // them a moment ago), at kSlotsPerLive slots per state kept and per state `to_come`
  // (this request's limits still to be placed): the table grows with the states in use
  // and shrinks when they come to rest. With `grow`, or when nothing can be dropped, it
  // doubles instead. A table at slots_per_shard is not rebuilt (its states at rest are
  // taken over in place instead). False when the table is unchanged.
  bool rebuild_slots(Shard& sh, const Uuid& lineage, std::int64_t now_ns, std::size_t to_come,
                     bool grow) APIKEYS_REQUIRES(sh.mu) {
    if (sh.slots.size() >= slots_per_shard) return false;
    // Called by rebuild() within this function, which holds sh.mu: a lambda's body is
    // analysed on its own, without what its caller holds.
    const auto keep = [&sh, &lineage, now_ns](const Slot& s) APIKEYS_NO_THREAD_SAFETY_ANALYSIS {
      return s.lineage == lineage || !may_go(sh, s, now_ns);
    };
    std::size_t kept = 0;
    std::size_t in_use = 0;
    for (const Slot& s : sh.slots) {
      if (s.scale == 0) continue;
      ++in_use;
      kept += keep(s) ? 1 : 0;
    }
    // Nothing to drop: double, as a table of live states always did (sizing it at
    // kSlotsPerLive would take more memory for no fewer rebuilds).
    std::size_t size = sh.slots.size() * 2;
    if (!grow && kept < in_use) {
      size = round_up_pow2(std::max(kFirstSlots, (kept + to_come) * kSlotsPerLive));
    }
    size = std::min(size, slots_per_shard);
    const std::optional<std::size_t> dropped = rebuild(
        sh.slots, size, slots_per_shard, [](const Slot& s) { return s.scale != 0; }, keep,
        [this](std::size_t mask, const Slot& s) {
          return slot_home(mask, lineage_hash(s.lineage), s.name_hash);
        });
    if (!dropped) return false;
    publish(sh);
    states.fetch_sub(*dropped, std::memory_order_relaxed);
    return true;
  }

  // The slot of (lineage, name_hash) in `sh`, or one claimed for it; nullptr only when
  // the table is at its full size and the probe window has no free slot and no state
  // at rest. A free slot near home (past at most kNearProbe other lineages' states) is
  // claimed first; failing that the table is rebuilt once per decision (`may_rebuild`;
  // rebuild_slots(), sized for the `to_come` limits of the request not yet placed, this
  // one included), and only then is the nearest state at rest taken over, or a free
  // slot further on; with neither, the table doubles until one turns up or it is full.
  // Taking over a state at rest loses nothing, but rebuilding first keeps probe chains
  // short: a table where every lineage takes over another's would walk the whole
  // window on each lookup.
  // A claimed slot holds a state at rest at any time (kTatAtRestAlways: what a state never
  // used decides, whatever the time of the request that next reads it, so a refused
  // request or a check of cost 0 spends nothing) and is never free again: were it left
  // free until the request is admitted, a refused request would leave a hole in the probe
  // chain, hiding the states beyond it (a lineage found there would look new). Sets
  // `rebuilt` when it rebuilt the table, which moves every slot.
  Slot* find_slot(Shard& sh, const Uuid& lineage, std::uint64_t lh, std::uint64_t nh,
                  std::uint64_t limit, std::int64_t now_ns, std::size_t to_come, bool& may_rebuild,
                  bool& rebuilt) APIKEYS_REQUIRES(sh.mu) {
    if (sh.slots.empty()) {
      sh.slots.resize(std::min(kFirstSlots, slots_per_shard));
      publish(sh);
    }
    for (;;) {
      assert(published(sh));
      const std::size_t mask = sh.slots.size() - 1;
      const std::size_t window = std::min(kMaxProbe, sh.slots.size());
      std::size_t i = slot_home(mask, lh, nh);
      Slot* free_slot = nullptr;
      std::size_t free_at = 0;  // other lineages' states passed before it
      Slot* rest = nullptr;
      std::size_t foreign = 0;
      for (std::size_t probe = 0; probe < window; ++probe, i = (i + 1) & mask) {
        Slot& s = sh.slots[i];
        if (s.scale == 0) {
          // Slots are never emptied, only reused in place: nothing lies beyond a free one.
          free_slot = &s;
          free_at = foreign;
          break;
        }
        if (s.lineage == lineage) {
          if (s.name_hash == nh) return &s;
          // Never taken over for the same lineage: it may be another limit's of this
          // very request, claimed (at rest) a moment ago, and two limits would share a
          // state.
          continue;
        }
        if (!rest && may_go(sh, s, now_ns)) rest = &s;
        ++foreign;
      }
      Slot* claim = nullptr;
      if (free_slot && free_at <= kNearProbe) {
        claim = free_slot;
      } else if (may_rebuild && rebuild_slots(sh, lineage, now_ns, to_come, false)) {
        may_rebuild = false;
        rebuilt = true;
        continue;
      } else {
        // The scan stops at the first free slot: a state at rest it found is nearer.
        claim = rest ? rest : free_slot;
        if (!claim && rebuild_slots(sh, lineage, now_ns, to_come, true)) {
          rebuilt = true;
          continue;
        }
      }
      if (!claim) return nullptr;
      if (claim->scale == 0) {
        states.fetch_add(1, std::memory_order_relaxed);
      }
      claim->lineage = lineage;
      claim->name_hash = nh;
      claim->tat = detail::kTatAtRestAlways;
      claim->scale = limit;
      return claim;
    }
  }

  // Grows the shard's lease table (rebuild() at twice its size), keeping every lease that
  // holds credits. False when it is already at leases_per_shard.
  bool grow_leases(Shard& sh) const APIKEYS_REQUIRES(sh.mu) {
    const auto holds = [](const Lease& l) { return l.count != 0; };
    const bool grown = rebuild(sh.leases, sh.leases.size() * 2, leases_per_shard, holds, holds,
                               [this](std::size_t mask, const Lease& l) {
                                 return lease_home(mask, lineage_hash(l.lineage));
                               })
                           .has_value();
    if (grown) publish(sh);
    return grown;
  }

  // The lineage's lease entry in `sh`, or a free one claimed for it when `claim`;
  // nullptr otherwise.
  Lease* find_lease(Shard& sh, const Uuid& lineage, std::uint64_t lh, bool claim) const
      APIKEYS_REQUIRES(sh.mu) {
    if (sh.leases.empty()) {
      if (!claim) return nullptr;
      sh.leases.resize(std::min(kFirstLeases, leases_per_shard));
      publish(sh);
    }
    for (;;) {
      assert(published(sh));
      const std::size_t mask = sh.leases.size() - 1;
      std::size_t i = lease_home(mask, lh);
      Lease* free_entry = nullptr;
      std::size_t free_at = 0;
      for (std::size_t probe = 0; probe < kMaxProbe && probe <= mask; ++probe, i = (i + 1) & mask) {
        Lease& l = sh.leases[i];
        if (l.count != 0 && l.lineage == lineage) return &l;
        if (l.count == 0 && !free_entry) {
          free_entry = &l;
          free_at = probe;
        }
      }
      if (!claim) return nullptr;
      if ((!free_entry || free_at > kNearProbe) && grow_leases(sh)) continue;
      if (!free_entry) return nullptr;
      free_entry->lineage = lineage;
      return free_entry;
    }
  }

  // Decides every limit of `r` under the shard lock; `slots` and `decisions` receive
  // each limit's slot and decision (the callers' arrays are not zeroed: entries past
  // the limit it stopped at stay unset). False (and `out` says why) when one refuses;
  // throws when the table is full.
  bool decide(Shard& sh, const AdmissionRequest& r, std::uint64_t lh, std::int64_t now_ns,
              Slot** slots, detail::GcraDecision* decisions, Admission& out)
      APIKEYS_REQUIRES(sh.mu) {
    bool may_rebuild = true;  // once per decision: a rebuild keeps this lineage's states
    for (std::size_t i = 0; i < r.limit_count; ++i) {
      const RateLimit& limit = r.limits[i];
      const std::uint64_t nh = name_hash(limit.name);
      bool rebuilt = false;
      slots[i] = find_slot(sh, r.lineage_id, lh, nh, limit.limit, now_ns, r.limit_count - i,
                           may_rebuild, rebuilt);
      if (rebuilt && i > 0) {
        // The slots found for the limits before this one moved: find them again.
        i = static_cast<std::size_t>(-1);
        continue;
      }
      if (!slots[i]) throw Error(ErrorCode::busy, "the rate limiter's table is full");
      decisions[i] = detail::gcra_decide(slots[i]->state(), limit, r.cost, now_ns);
      if (!decisions[i].admit) {
        refuse(sh, r, lh, now_ns, i, decisions[i].retry_after_ns, out);
        return false;
      }
    }
    return true;
  }

  // How long until `limit` would admit `r` (0: now), judged on its state as it is; a
  // cost above its burst is never admitted (INT64_MAX). Claims nothing.
  std::int64_t wait_for(const Shard& sh, const AdmissionRequest& r, std::uint64_t lh,
                        const RateLimit& limit, std::int64_t now_ns) const APIKEYS_REQUIRES(sh.mu) {
    if (r.cost > limit.effective_burst()) return INT64_MAX;
    if (sh.slots.empty()) return 0;
    const std::uint64_t nh = name_hash(limit.name);
    const std::size_t mask = sh.slots.size() - 1;
    const std::size_t window = std::min(kMaxProbe, sh.slots.size());
    std::size_t i = slot_home(mask, lh, nh);
    for (std::size_t probe = 0; probe < window; ++probe, i = (i + 1) & mask) {
      const Slot& s = sh.slots[i];
      if (s.scale == 0) return 0;  // nothing lies beyond a free slot: no state, at rest
      if (s.lineage == r.lineage_id && s.name_hash == nh) {
        const detail::GcraDecision d = detail::gcra_decide(s.state(), limit, r.cost, now_ns);
        return d.admit ? 0 : d.retry_after_ns;
      }
    }
    return 0;
  }

  // Sets `out` for a request the limit at `first` refused, waiting `first_wait` ns: the
  // limits after it are judged too (without claiming a state), and the answer names the
  // one that makes the request wait longest, so that `retry_after` is when every limit
  // would admit it (the limits before `first` admitted it now, and only admit more as
  // time passes), and is "never" when any limit's burst is below the cost.
  void refuse(const Shard& sh, const AdmissionRequest& r, std::uint64_t lh, std::int64_t now_ns,
              std::size_t first, std::int64_t first_wait, Admission& out) const
      APIKEYS_REQUIRES(sh.mu) {
    std::size_t worst = first;
    std::int64_t wait = r.cost > r.limits[first].effective_burst() ? INT64_MAX : first_wait;
    for (std::size_t j = first + 1; j < r.limit_count && wait != INT64_MAX; ++j) {
      const std::int64_t w = wait_for(sh, r, lh, r.limits[j], now_ns);
      if (w > wait) {
        worst = j;
        wait = w;
      }
    }
    out.outcome = AdmissionOutcome::rate_limited;
    out.limited_by = worst;
    out.retry_after =
        wait == INT64_MAX ? std::chrono::milliseconds::max() : detail::ceil_millis(wait);
  }

  // Applies the decisions of an admitted request and reports each limit's state.
  static void commit(const AdmissionRequest& r, Slot** slots, const detail::GcraDecision* decisions,
                     Admission& out) {
    // Appended, not resized: out.limits is empty with its capacity kept, and resize()
    // is an out-of-line call. Reserved by admit(), before anything was spent: no
    // emplace_back() here allocates.
    for (std::size_t i = 0; i < r.limit_count; ++i) {
      slots[i]->tat = decisions[i].new_tat;
      slots[i]->scale = r.limits[i].limit;
      LimitStatus& status = out.limits.emplace_back();
      status.remaining = decisions[i].remaining;
      status.reset = detail::ceil_millis(decisions[i].reset_ns);
    }
  }

  Store& credit_store() const {
    if (!store) throw Error(ErrorCode::not_supported, "the limiter has no store for credits");
    return *store;
  }

  // Gives `n` credits of `period` back to `st`: checked against `generation` by a store
  // that keeps generations, else through Store::return_credits(), the one form a store
  // written before generations forwards (it would check the forwarded call against a
  // generation the limiter never trusted, 0, and drop every give-back).
  static void give_back_to(Store& st, const Uuid& lineage, std::uint64_t n, std::int64_t period,
                           std::uint64_t generation) {
    if (st.checks_credit_generations()) {
      st.return_credits_checked(lineage, n, period, generation);
    } else {
      st.return_credits(lineage, n, period);
    }
  }

  // Takes between `min` and `max` of the request's credits from `st`: audited when the
  // request carries a ChangeAudit, so a refill the take writes leaves its event. A
  // generation counts only from a store that checks it (Store::
  // checks_credit_generations()), and only for credits taken: otherwise it is 0, and a
  // balance set in this process drops what a request holds (Shard::resets).
  static CreditTake take_credits(Store& st, const AdmissionRequest& r, std::uint64_t min,
                                 std::uint64_t max) {
    CreditTake take;
    if (r.audit != nullptr) {
      take = st.take_credits_audited(r.lineage_id, min, max, r.now, *r.audit);
      detail::mark_committed(r.audit);
    } else {
      take = st.take_credits(r.lineage_id, min, max, r.now);
    }
    if (take.outcome != CreditTake::Outcome::taken || !st.checks_credit_generations()) {
      take.generation = 0;
    }
    return take;
  }

  // Each sets `out` (out.limits keeps its capacity); admit() resets it first.
  void admit(const AdmissionRequest& r, Admission& out);
  void admit_direct(const AdmissionRequest& r, Shard& sh, std::uint64_t lh, std::int64_t now_ns,
                    Admission& out);
  void admit_leased(const AdmissionRequest& r, Shard& sh, std::uint64_t lh, std::int64_t now_ns,
                    Admission& out);
};

void MemoryLimiter::Impl::admit(const AdmissionRequest& r, Admission& out) {
  {
    // A fresh answer whatever fields Admission gains, keeping the limits' capacity.
    std::vector<LimitStatus> limits = std::move(out.limits);
    out = Admission{};
    out.limits = std::move(limits);
    out.limits.clear();
  }
  detail::check_admission_limits(r);
  // Before anything is spent: commit(), which runs after a charge, then allocates nothing
  // and cannot fail (a charge followed by a failed answer would spend a credit on a
  // request that was not admitted).
  out.limits.reserve(r.limit_count);
  const std::uint64_t lh = lineage_hash(r.lineage_id);
  Shard& sh = shard_of(lh);
  const std::int64_t now_ns = detail::to_nanos(r.now);
  if (!r.charge_credits) {
    // Not value-initialised (1.1 KiB per call): each entry is written before it is read.
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-member-init)
    std::array<Slot*, KeyPolicyLimits::kMaxRateLimits> slots;
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-member-init)
    std::array<detail::GcraDecision, KeyPolicyLimits::kMaxRateLimits> decisions;
    detail::MutexLock lock(sh.mu);
    if (decide(sh, r, lh, now_ns, slots.data(), decisions.data(), out)) {
      commit(r, slots.data(), decisions.data(), out);
    }
    return;
  }
  const std::int64_t ms = to_unix_millis(r.now);
  std::int64_t seen = last_now_ms.load(std::memory_order_relaxed);
  while (seen < ms && !last_now_ms.compare_exchange_weak(seen, ms, std::memory_order_relaxed)) {
  }
  if (options.lease_size > 0) {
    admit_leased(r, sh, lh, now_ns, out);
  } else {
    admit_direct(r, sh, lh, now_ns, out);
  }
}

// Rate limits peeked, credits charged in the store (one guarded write), then the rate
// limits decided again and applied; if they refuse now (another request came in
// between), the charge is given back. So a rate-limited request is never charged, and
// the store never holds the shard's lock.
void MemoryLimiter::Impl::admit_direct(const AdmissionRequest& r, Shard& sh, std::uint64_t lh,
                                       std::int64_t now_ns, Admission& out) {
  // Not value-initialised (1.1 KiB per call): each entry is written before it is read.
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-member-init)
  std::array<Slot*, KeyPolicyLimits::kMaxRateLimits> slots;
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-member-init)
  std::array<detail::GcraDecision, KeyPolicyLimits::kMaxRateLimits> decisions;
  std::uint64_t resets = 0;  // sh.resets before the charge
  Pin pin(sh);               // the lineage's states stay until the second decision
  {
    detail::MutexLock lock(sh.mu);
    resets = sh.resets;
    if (!decide(sh, r, lh, now_ns, slots.data(), decisions.data(), out)) return;
    if (r.limit_count > 0) pin.pin(sh, r.lineage_id);
  }
  const CreditTake take = take_credits(credit_store(), r, r.cost, r.cost);
  if (take.outcome == CreditTake::Outcome::insufficient) {
    out.outcome = AdmissionOutcome::usage_exceeded;
    out.credits_remaining = take.remaining;
    return;
  }
  const bool charged = take.outcome == CreditTake::Outcome::taken;
  if (charged) out.credits_remaining = take.remaining;
  // The balance was set in this process meanwhile (credits_reset()). The charge goes
  // back only onto the balance it was taken from, which a store that keeps generations
  // checks (the set may have come before the take or after it); from a store that keeps
  // none (generation 0) it may have come from the balance the set replaced, and is
  // dropped rather than given back onto the new one.
  bool reset_since = false;
  const auto give_back = [&]() noexcept {
    if (!charged || take.taken == 0 || (reset_since && take.generation == 0)) return;
    try {
      give_back_to(credit_store(), r.lineage_id, take.taken, take.period, take.generation);
    } catch (...) {
      // Lost, never granted twice.
    }
  };
  try {
    detail::MutexLock lock(sh.mu);
    pin.unpin(sh);
    reset_since = sh.resets != resets;
    if (decide(sh, r, lh, now_ns, slots.data(), decisions.data(), out)) {
      commit(r, slots.data(), decisions.data(), out);
      return;
    }
  } catch (...) {
    // The table filled up meanwhile: the charge goes back, then the failure is reported.
    give_back();
    throw;
  }
  out.credits_remaining.reset();
  // The answer stays rate_limited whatever becomes of the charge (a throw here would be
  // a limiter failure, which the `allow` policy answers as valid).
  give_back();
}

// Rate limits and the lease decided together under the shard lock; the store is asked
// (outside the lock) only when the lease is short, expired, or from a past period.
void MemoryLimiter::Impl::admit_leased(const AdmissionRequest& r, Shard& sh, std::uint64_t lh,
                                       std::int64_t now_ns, Admission& out) {
  // Not value-initialised (1.1 KiB per call): each entry is written before it is read.
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-member-init)
  std::array<Slot*, KeyPolicyLimits::kMaxRateLimits> slots;
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-member-init)
  std::array<detail::GcraDecision, KeyPolicyLimits::kMaxRateLimits> decisions;
  std::uint64_t carry = 0;  // still-good credits taken out of the lease
  std::int64_t carry_period = 0;
  std::uint64_t carry_generation = 0;
  TimePoint carry_expires{};  // the carry's lease deadline, which it keeps
  std::uint64_t stale = 0;    // credits of a lease past its TTL, to give back
  std::int64_t stale_period = 0;
  std::uint64_t stale_generation = 0;
  std::uint64_t resets = 0;  // sh.resets when the lease was read
  Pin pin(sh);               // the lineage's states stay while the store is asked
  {
    detail::MutexLock lock(sh.mu);
    resets = sh.resets;
#if defined(__GNUC__)
    // The lease's home (a random entry of the shard's lease table, often not in a near
    // cache) loads while the rate limits are decided, rather than after them.
    if (!sh.leases.empty()) {
      const Lease* home = &sh.leases[lease_home(sh.leases.size() - 1, lh)];
      __builtin_prefetch(home);
      __builtin_prefetch(reinterpret_cast<const char*>(home) + sizeof(Lease) - 1);
    }
#endif
    if (!decide(sh, r, lh, now_ns, slots.data(), decisions.data(), out)) return;
    Lease* lease = find_lease(sh, r.lineage_id, lh, true);
    if (!lease) {
      // No room for a lease: charge the store for this request alone, one write.
      lock.unlock();
      admit_direct(r, sh, lh, now_ns, out);
      return;
    }
    if (lease->count != 0) {
      const bool period_ok = r.now < lease->period_end;
      const bool fresh = period_ok && r.now < lease->expires;
      if (fresh && lease->count >= r.cost) {
        lease->count -= r.cost;
        out.credits_remaining = lease->count + lease->store_remaining;
        commit(r, slots.data(), decisions.data(), out);
        return;
      }
      if (fresh) {
        carry = lease->count;
        carry_period = lease->period;
        carry_generation = lease->generation;
        carry_expires = lease->expires;
      } else if (period_ok) {
        stale = lease->count;
        stale_period = lease->period;
        stale_generation = lease->generation;
      }
      lease->count = 0;  // taken out; a lease of a past period is dropped: it expired
    }
    try {
      if (r.limit_count > 0) pin.pin(sh, r.lineage_id);
    } catch (...) {
      // No memory to pin: nothing spent but what was taken out of the lease, which goes
      // back into it.
      lease->count += carry + stale;
      throw;
    }
  }
  Store& st = credit_store();
  // Gives `n` credits of `period` back to the store, onto the balance of `generation`
  // only (the store checks). From a store that keeps no generations (0), they are
  // dropped instead when the balance was set in this process since the lease was read:
  // they may be the old balance's. A store that fails loses them. Never granted twice;
  // never throws.
  const auto give_back = [&](std::uint64_t n, std::int64_t period,
                             std::uint64_t generation) noexcept {
    if (n == 0) return;
    try {
      if (generation == 0) {
        detail::MutexLock lock(sh.mu);
        if (sh.resets != resets) return;
      }
      give_back_to(st, r.lineage_id, n, period, generation);
    } catch (...) {
      // Lost, never granted twice.
    }
  };
  give_back(stale, stale_period, stale_generation);
  const std::uint64_t need = r.cost > carry ? r.cost - carry : 0;
  const std::uint64_t want = std::min(need + options.lease_size, KeyPolicyLimits::kMaxCredits);
  CreditTake take;
  try {
    take = take_credits(st, r, need, std::max(want, need));
  } catch (...) {
    give_back(carry, carry_period, carry_generation);
    throw;
  }
  if (take.outcome == CreditTake::Outcome::no_credits) {
    // Credits were removed since the verdict was read: nothing to charge.
    detail::MutexLock lock(sh.mu);
    pin.unpin(sh);
    if (decide(sh, r, lh, now_ns, slots.data(), decisions.data(), out)) {
      commit(r, slots.data(), decisions.data(), out);
    }
    return;
  }
  // Credits of two refill periods, or of two balances, never mix: the carry of an older
  // period, or of a balance set since, is dropped.
  const bool took = take.outcome == CreditTake::Outcome::taken;
  if (carry > 0 && (carry_period != take.period || (took && carry_generation != take.generation))) {
    carry = 0;
  }
  // The generation of what this request holds (0: none known).
  const std::uint64_t held_generation = took ? take.generation : carry_generation;
  // A carry that a refused take could not vouch for (the take names no balance): it may
  // be of a balance set since, so it goes back to the store, checked, rather than into
  // the lease again. From a store that checks no generation it stays leased, as ever.
  const bool carry_unvouched = !took && carry > 0 && carry_generation != 0;
  const std::uint64_t have = carry + take.taken;
  detail::MutexLock lock(sh.mu);
  pin.unpin(sh);
  // The balance was set (or its refill changed) since the lease was read: what this
  // request holds may be from the balance that replaced, so it decides this request
  // (which began before the change) but none of it is leased. What is left goes back,
  // checked against its generation; from a store that checks none (0) it is dropped,
  // lost and never granted twice.
  const bool reset_since = sh.resets != resets;
  Lease* lease = nullptr;
  if (!reset_since) {
    try {
      lease = find_lease(sh, r.lineage_id, lh, true);
    } catch (...) {
      // The lease table could not grow (no memory): decided as with no room for a
      // lease, what is left goes back to the store rather than being lost.
    }
  }
  const bool enough = take.outcome == CreditTake::Outcome::taken && have >= r.cost;
  bool limits_ok = false;
  std::exception_ptr failure;  // the table filled up meanwhile: reported after the lease
  try {
    limits_ok = enough && decide(sh, r, lh, now_ns, slots.data(), decisions.data(), out);
  } catch (...) {
    failure = std::current_exception();
  }
  std::uint64_t left = limits_ok ? have - r.cost : have;
  std::uint64_t excess = 0;  // beyond lease_size: given back
  std::uint64_t other = 0;   // another request's lease, of another balance: given back
  std::int64_t other_period = 0;
  std::uint64_t other_generation = 0;
  if (lease) {
    // What is left stays leased. Another request may have leased meanwhile: the two
    // merge, and what passes lease_size goes back, so a crash never loses more than it.
    // Credits keep the deadline of the lease they were first taken into: a carry, or
    // a lease another request made meanwhile, brings its own, so that refused requests
    // renewing the lease never keep old credits spendable past lease_ttl.
    if (lease->count != 0 && lease->period != take.period) lease->count = 0;
    if (lease->count != 0 && (took || left > 0) && lease->generation != held_generation) {
      // Credits of two balances: another request leased meanwhile from a balance other
      // than the one this request took from or holds (a set came between the two
      // takes). Which is current only the store knows: both go back, each checked
      // against its own generation, and neither is leased.
      other = lease->count;
      other_period = lease->period;
      other_generation = lease->generation;
      lease->count = 0;
      excess = left;
    } else if (carry_unvouched) {
      excess = left;
    } else {
      TimePoint expires = add_saturating(r.now, options.lease_ttl);
      if (carry > 0) expires = std::min(expires, carry_expires);
      if (lease->count != 0) expires = std::min(expires, lease->expires);
      const std::uint64_t total = lease->count + left;
      lease->count = std::min(total, options.lease_size);
      excess = total - lease->count;
      lease->store_remaining = take.remaining;
      lease->period = take.period;
      if (left > 0) lease->generation = held_generation;
      lease->period_end = take.period_end;
      lease->expires = expires;
    }
  } else if (!reset_since || held_generation != 0) {
    excess = left;  // given back onto the balance it was taken from, if it still is
  }
  // What goes back counts as the store's (it lands if its balance is the current one).
  const std::uint64_t back = excess + other;
  if (failure) {
  } else if (!enough) {
    out.outcome = AdmissionOutcome::usage_exceeded;
    out.credits_remaining = take.remaining + (lease ? lease->count : 0) + back;
  } else if (limits_ok) {
    commit(r, slots.data(), decisions.data(), out);
    out.credits_remaining = take.remaining + (lease ? lease->count : 0) + back;
  }
  lock.unlock();
  // Failing, the excess is lost: not a failure of this request, whose answer (above) is
  // final (an admitted request has spent its limits and its credits already).
  give_back(excess, take.period, held_generation);
  give_back(other, other_period, other_generation);
  if (failure) std::rethrow_exception(failure);
}

MemoryLimiter::MemoryLimiter(std::shared_ptr<Store> credits_store, MemoryLimiterOptions options) {
  if (options.capacity == 0) {
    throw Error(ErrorCode::invalid_argument, "MemoryLimiter: capacity must be at least 1");
  }
  if (options.lease_size > KeyPolicyLimits::kMaxCredits) {
    throw Error(ErrorCode::invalid_argument, "MemoryLimiter: lease_size is above 2^53");
  }
  if (options.lease_ttl.count() <= 0) {
    throw Error(ErrorCode::invalid_argument, "MemoryLimiter: lease_ttl must be positive");
  }
  impl_ = std::make_unique<Impl>(std::move(credits_store), options);
}

MemoryLimiter::~MemoryLimiter() { return_leases(); }

Admission MemoryLimiter::admit(const AdmissionRequest& request) {
  Admission out;
  impl_->admit(request, out);
  return out;
}

void MemoryLimiter::admit_into(const AdmissionRequest& request, Admission& out) {
  impl_->admit(request, out);
}

void MemoryLimiter::prefetch(const Uuid& lineage_id, const RateLimit* limits,
                             std::size_t limit_count) const noexcept {
#if defined(__GNUC__)
  // The lease's home and the first limit's: the entries a lookup reads first.
  const std::uint64_t lh = impl_->lineage_hash(lineage_id);
  const Impl::Shard& sh = impl_->shard_of(lh);
  // Integer arithmetic: the pair read may be stale, and no pointer is formed from it
  // but the prefetch's own argument.
  const auto prefetch_entry = [](std::uintptr_t at, std::size_t bytes) {
    // NOLINTNEXTLINE(performance-no-int-to-ptr): a prefetch address, never dereferenced.
    __builtin_prefetch(reinterpret_cast<const void*>(at));
    // NOLINTNEXTLINE(performance-no-int-to-ptr): likewise (an entry may span two lines).
    __builtin_prefetch(reinterpret_cast<const void*>(at + bytes - 1));
  };
  if (const std::uintptr_t leases = sh.leases_at.load(std::memory_order_relaxed)) {
    const std::size_t home = Impl::lease_home(sh.leases_mask.load(std::memory_order_relaxed), lh);
    prefetch_entry(leases + home * sizeof(Lease), sizeof(Lease));
  }
  const std::uintptr_t slots = sh.slots_at.load(std::memory_order_relaxed);
  if (slots != 0 && limit_count > 0) {
    const std::uint64_t nh = impl_->name_hash(limits[0].name);
    const std::size_t home = Impl::slot_home(sh.slots_mask.load(std::memory_order_relaxed), lh, nh);
    prefetch_entry(slots + home * sizeof(Slot), sizeof(Slot));
  }
#else
  (void)lineage_id;
  (void)limits;
  (void)limit_count;
#endif
}

void MemoryLimiter::credits_reset(const Uuid& lineage_id) noexcept {
  const std::uint64_t lh = impl_->lineage_hash(lineage_id);
  Impl::Shard& sh = impl_->shard_of(lh);
  detail::MutexLock lock(sh.mu);
  ++sh.resets;
  if (Lease* lease = impl_->find_lease(sh, lineage_id, lh, false)) lease->count = 0;
}

void MemoryLimiter::return_leases() noexcept {
  if (!impl_->store) return;
  const TimePoint now = from_unix_millis(impl_->last_now_ms.load(std::memory_order_relaxed));
  for (Impl::Shard& sh : impl_->shards) {
    std::vector<Lease> taken;
    std::uint64_t resets = 0;  // sh.resets when the leases were taken out
    try {
      detail::MutexLock lock(sh.mu);
      resets = sh.resets;
      for (Lease& l : sh.leases) {
        if (l.count == 0) continue;
        taken.push_back(l);
        l.count = 0;
      }
    } catch (...) {
      continue;  // allocation failure: those leases are lost, never granted twice
    }
    for (const Lease& l : taken) {
      // A lease of a past period expired with it (a reset refill replaced it).
      if (now >= l.period_end) continue;
      if (l.generation == 0) {
        // From a store that keeps no generations: a balance set in this process since
        // the leases were taken out (the returns before this one may have taken a
        // while) means what is left may be the old balance's, so it is dropped, as
        // admit_leased()'s give-back drops it. A store that keeps them checks instead.
        detail::MutexLock lock(sh.mu);
        if (sh.resets != resets) continue;
      }
      try {
        Impl::give_back_to(*impl_->store, l.lineage, l.count, l.period, l.generation);
      } catch (...) {
        // Lost, never granted twice.
      }
    }
  }
}

std::size_t MemoryLimiter::states() const noexcept {
  return impl_->states.load(std::memory_order_relaxed);
}

std::size_t MemoryLimiter::table_bytes() const noexcept {
  std::size_t total = 0;
  for (Impl::Shard& sh : impl_->shards) {
    detail::MutexLock lock(sh.mu);
    total += sh.slots.capacity() * sizeof(Slot) + sh.leases.capacity() * sizeof(Lease);
  }
  return total;
}

std::uint64_t MemoryLimiter::leased() const noexcept {
  std::uint64_t total = 0;
  for (Impl::Shard& sh : impl_->shards) {
    detail::MutexLock lock(sh.mu);
    for (const Lease& l : sh.leases) total += l.count;
  }
  return total;
}

const MemoryLimiterOptions& MemoryLimiter::options() const noexcept { return impl_->options; }

}  // namespace apikeys
