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

namespace apikeys {

namespace {

struct UuidHash {
  std::size_t operator()(const Uuid& u) const noexcept {
    // Key ids are random (v4) and chosen by us, never by a caller: their bytes are
    // already uniformly distributed, so no keyed hash is needed here.
    std::uint64_t h;
    std::memcpy(&h, u.bytes().data(), sizeof h);
    return static_cast<std::size_t>(h);
  }
};

// Decides which uses of a key are worth a last_used_at write (at most one per key per
// interval) and queues them for the background writer. Both the throttle table and
// the queue are bounded: when the table of a shard is full it is emptied (costing at
// worst an early extra write); when the queue is full, updates are dropped (last use
// is advisory and a later use re-queues it).
//
// In front of the table sits a 4-way set-associative filter of atomics (a set is 32
// bytes, one cache line at most), one word per slot: a 23-bit fingerprint of the key id
// with an occupied bit, and 40 bits of "noted at" (milliseconds since the first note).
// A key noted within the interval is answered by relaxed loads of its set, with no lock
// and no write: the common case on a hot key. Anything else (not in the set, an expired
// time, a time outside the 40-bit window) takes the locked path, whose decision is the
// only one that queues a write; it then puts the key in its set, over the slot noted
// longest ago. With 4 ways a key is pushed out only when 4 others share its set (a
// direct-mapped filter sent 14 % of 10,000 keys in 65,536 slots down the locked path,
// key pairs evicting each other). A fingerprint collision (2^-23 within a set) can skip
// one advisory update of the other key.
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
  static constexpr int kTimeBits = 40;
  static constexpr std::uint64_t kTimeMask = (std::uint64_t{1} << kTimeBits) - 1;
  static constexpr std::uint64_t kOccupied = std::uint64_t{1} << 23;  // 23 bits and this flag
  static constexpr std::int64_t kNoBase = std::numeric_limits<std::int64_t>::min();
  static constexpr std::size_t kWays = 4;
  struct alignas(32) Set {
    std::atomic<std::uint64_t> ways[kWays];  // zero: empty
  };

  struct Where {
    Set& set;
    std::uint64_t fingerprint;
  };

  Where where(const Uuid& key_id) const noexcept {
    std::uint64_t hi;
    std::uint64_t lo;
    std::memcpy(&hi, key_id.bytes().data(), sizeof hi);
    std::memcpy(&lo, key_id.bytes().data() + 8, sizeof lo);
    // Mixed, so ids that are not random (a custom store's) still spread over the slots.
    const std::uint64_t h = (hi ^ (lo * 0xff51afd7ed558ccdULL)) * 0x9e3779b97f4a7c15ULL;
    return {filter_[static_cast<std::size_t>(h >> 40) & set_mask_],
            ((h >> 16) & (kOccupied - 1)) | kOccupied};
  }

  void note_at(const Where& w, const Uuid& key_id, std::int64_t now_ms) {
    Set& set = w.set;
    const std::uint64_t fingerprint = w.fingerprint;
    const std::int64_t base = base_ms_.load(std::memory_order_relaxed);
    if (base != kNoBase) {
      for (const auto& slot : set.ways) {
        const std::uint64_t seen = slot.load(std::memory_order_relaxed);
        if ((seen >> kTimeBits) != fingerprint) continue;
        const auto noted = static_cast<std::int64_t>(seen & kTimeMask) + base;
        if (now_ms - noted < interval_ms_) return;
        break;
      }
    }
    noted_slow(key_id, now_ms, set, fingerprint);
  }


  // A power of two near the throttle limit, between 1,024 and 65,536 slots (8 B each).
  static std::size_t filter_slots(std::size_t throttle_limit) {
    std::size_t n = 1024;
    while (n < throttle_limit && n < 65'536) n <<= 1;
    return n;
  }

  // The key's slot in `set`, else the slot noted longest ago (an empty one first).
  static std::atomic<std::uint64_t>& way_for(Set& set, std::uint64_t fingerprint) noexcept {
    std::atomic<std::uint64_t>* oldest = &set.ways[0];
    std::uint64_t oldest_time = kTimeMask + 1;
    for (auto& slot : set.ways) {
      const std::uint64_t seen = slot.load(std::memory_order_relaxed);
      if ((seen >> kTimeBits) == fingerprint) return slot;
      const std::uint64_t t = seen == 0 ? 0 : (seen & kTimeMask) + 1;
      if (t < oldest_time) {
        oldest_time = t;
        oldest = &slot;
      }
    }
    return *oldest;
  }

  void remember(Set& set, std::uint64_t fingerprint, std::int64_t at) {
    std::atomic<std::uint64_t>& slot = way_for(set, fingerprint);
    std::int64_t base = base_ms_.load(std::memory_order_relaxed);
    if (base == kNoBase) {
      base_ms_.compare_exchange_strong(base, at, std::memory_order_relaxed);
      base = base_ms_.load(std::memory_order_relaxed);
    }
    const std::int64_t offset = at - base;
    if (offset < 0 || static_cast<std::uint64_t>(offset) > kTimeMask) {
      slot.store(0, std::memory_order_relaxed);  // outside the window: the table decides
      return;
    }
    slot.store((fingerprint << kTimeBits) | static_cast<std::uint64_t>(offset),
               std::memory_order_relaxed);
  }

  void noted_slow(const Uuid& key_id, std::int64_t now_ms, Set& slot, std::uint64_t fingerprint) {
    Shard& s = shards_[key_id.bytes()[0] % kShards];
    {
      std::lock_guard<std::mutex> lock(s.mu);
      auto it = s.last.find(key_id);
      if (it != s.last.end()) {
        if (now_ms - it->second < interval_ms_) {
          remember(slot, fingerprint, it->second);
          return;
        }
        it->second = now_ms;
      } else {
        if (s.last.size() >= per_shard_limit_) s.last.clear();
        s.last.emplace(key_id, now_ms);
      }
      remember(slot, fingerprint, now_ms);
    }
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (queue_.size() < queue_limit_) queue_.push_back(LastUse{key_id, from_unix_millis(now_ms)});
  }

  struct alignas(64) Shard {
    std::mutex mu;
    std::unordered_map<Uuid, std::int64_t, UuidHash> last;
  };
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

  std::atomic<std::uint64_t> last_use_failures{0};
  std::mutex flush_mu;                 // one flush at a time (background thread, callers)
  std::vector<LastUse> flush_batch;    // guarded by flush_mu; its storage is reused
  // Read by the constructor, not the thread: a change made between construction and
  // the thread's first run must still count as a change.
  std::uint64_t baseline_revision = 0;
  bool baseline_known = false;
  std::mutex bg_mu;
  std::condition_variable bg_cv;
  bool stopping = false;
  std::thread worker;

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
  }

  ValidationResult validate(std::string_view pk, std::string_view sk) const noexcept;
  void run_background();
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
            result.account_id = v->account_id;
            result.key_id = v->key_id;
            if (options.record_last_use) tracker.note(v->key_id, *clock);
          }
          return result;
        }
        // Taken before the store read: a revoke that erases after this point makes
        // the put below a no-op (PITFALLS #1, the revoke/fill race).
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
        cache->put(pk, presented, Verdict{result.code, result.account_id, result.key_id}, ttl, token);
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

void Validator::Impl::run_background() {
  using steady = std::chrono::steady_clock;
  const auto poll = options.revision_poll_interval;
  const auto flush_every = options.flush_interval;
  const bool polling = cache != nullptr && poll.count() > 0;
  std::uint64_t revision = baseline_revision;
  bool known = baseline_known;
  auto next_flush = steady::now() + flush_every;
  auto next_poll = steady::now() + poll;
  std::unique_lock<std::mutex> lock(bg_mu);
  while (!stopping) {
    auto wake = options.record_last_use ? next_flush : steady::time_point::max();
    if (polling) wake = std::min(wake, next_poll);
    if (wake == steady::time_point::max()) {
      bg_cv.wait(lock, [this] { return stopping; });
      break;
    }
    bg_cv.wait_until(lock, wake, [this] { return stopping; });
    if (stopping) break;
    lock.unlock();
    const auto t = steady::now();
    if (polling && t >= next_poll) {
      next_poll = t + poll;
      try {
        const std::uint64_t r = store->revision();
        if (!known || r != revision) {
          // Another writer revoked or deleted something: we cannot tell which public
          // keys changed, so every cached verdict goes.
          cache->clear();
          revision = r;
          known = true;
        }
      } catch (...) {
        // Cannot tell whether anything changed: assume it did (fail closed).
        try {
          cache->clear();
        } catch (...) {
        }
        known = false;
      }
    }
    if (options.record_last_use && t >= next_flush) {
      next_flush = t + flush_every;
      flush();
    }
    lock.lock();
  }
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
  if (impl_->options.record_last_use || polling) {
    impl_->worker = std::thread([impl = impl_.get()] { impl->run_background(); });
  }
}

Validator::~Validator() {
  {
    std::lock_guard<std::mutex> lock(impl_->bg_mu);
    impl_->stopping = true;
  }
  impl_->bg_cv.notify_all();
  if (impl_->worker.joinable()) impl_->worker.join();
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
