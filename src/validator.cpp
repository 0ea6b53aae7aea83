#include "apikeys/validator.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <unordered_set>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/memory_limiter.hpp"
#include "cache_registry.hpp"
#include "key_format.hpp"
#include "last_use_tracker.hpp"
#include "memory_cache_probe.hpp"
#include "observer_list.hpp"
#include "result_fields.hpp"
#include "scope.hpp"
#include "system_audit.hpp"
#include "thread_annotations.hpp"
#include "tick_clock.hpp"

namespace apikeys {

namespace {

// Split "pk_...:sk_..." at its only colon. Anything else is malformed.
bool split_token(std::string_view token, std::string_view& pk, std::string_view& sk) noexcept {
  const auto colon = token.find(':');
  if (colon == std::string_view::npos) return false;
  pk = token.substr(0, colon);
  sk = token.substr(colon + 1);
  return true;
}

// Makes `r` a fresh `error` answer, as ValidationResult{} is, but keeping the capacity
// of its vectors and strings: a caller that reuses one result allocates nothing on a
// hit once it has held a key's scopes and limits.
void reset(ValidationResult& r) noexcept {
  static_assert(sizeof(ValidationResult) == sizeof(detail::ResultFields),
                "ValidationResult has a new field: reset it here");
  r.code = ValidationCode::error;
  r.account_id = Uuid();
  r.key_id = Uuid();
  r.expires_at.reset();
  r.scopes.clear();
  r.metadata.clear();
  r.has_policy = false;
  r.lineage_id = Uuid();
  r.rate_limits.clear();
  r.has_credits = false;
  r.has_admission = false;
  r.missing_scopes.clear();
  r.limits.clear();
  r.credits_remaining.reset();
  r.limited_by.clear();
  r.retry_after = std::chrono::milliseconds(0);
  r.limiter_failed = false;
}

// Whose limits and credits a valid verdict spends: its lineage, or (a cache that kept
// none) the key's own id.
const Uuid& lineage_of(const Verdict& v) noexcept {
  return v.lineage_id.is_nil() ? v.key_id : v.lineage_id;
}

}  // namespace

namespace detail {

// Digest rewrites waiting for the writer thread (doc/peppers.md, "Rehash on use"): at
// most `limit` of them, one per key id, taken whole by take(). Only the store path of
// validate() adds, so a cache hit never takes its mutex.
// Thread-safety: add() and take() may be called from any threads at once.
// Ownership: owns its changes; they hold digests and key ids, never a secret.
class RehashQueue {
 public:
  explicit RehashQueue(std::size_t limit) : limit_(limit) {}

  // Queues the change unless a change of the same key is queued already or the queue
  // is full. Never throws: a change it cannot queue is dropped, and the key's next
  // use queues it again.
  void add(const Uuid& key_id, const Digest& from, const Digest& to) noexcept
      APIKEYS_EXCLUDES(mu_) {
    try {
      MutexLock lock(mu_);
      if (pending_.size() >= limit_ || queued_.count(key_id) != 0) return;
      pending_.push_back(DigestChange{key_id, from, to});
      try {
        queued_.insert(key_id);
      } catch (...) {
        pending_.pop_back();  // no entry without its dedup mark
      }
    } catch (...) {
      // Dropped, like a change beyond the limit.
    }
  }

  // Moves the queued changes into `out` (emptied first) and gives the queue `out`'s
  // storage, as LastUseTracker::take() does.
  void take(std::vector<DigestChange>& out) APIKEYS_EXCLUDES(mu_) {
    out.clear();
    MutexLock lock(mu_);
    out.swap(pending_);
    queued_.clear();
  }

 private:
  struct UuidHash {
    std::size_t operator()(const Uuid& id) const noexcept {
      std::uint64_t hi;
      std::uint64_t lo;
      std::memcpy(&hi, id.bytes().data(), sizeof hi);
      std::memcpy(&lo, id.bytes().data() + 8, sizeof lo);
      return static_cast<std::size_t>((hi ^ (lo * 0xff51afd7ed558ccdULL)) * 0x9e3779b97f4a7c15ULL);
    }
  };

  const std::size_t limit_;
  Mutex mu_;
  std::vector<DigestChange> pending_ APIKEYS_GUARDED_BY(mu_);
  std::unordered_set<Uuid, UuidHash> queued_ APIKEYS_GUARDED_BY(mu_);
};

}  // namespace detail

namespace {

// What a validation tells its observers beyond its result (observer.hpp). Filled on
// every call, observed or not: a few stores cost less than a branch per step.
struct Trace {
  ValidatePath path = ValidatePath::format;
  CacheResult cache = CacheResult::none;
  AdmissionResult admission = AdmissionResult::none;
  Uuid key_id;
  Uuid account_id;
};

// What one flush tells the observers, kept while flush_mu is held and reported once it
// is released: an observer may call flush_last_use() itself.
struct FlushReport {
  std::size_t last_use_rows = 0;
  std::size_t rehash_rows = 0;
  bool last_use_failed = false;
  bool rehash_failed = false;
  std::string last_use_message;
  std::string rehash_message;
  // The rehash events of the batch written (system_audit.hpp), when observed.
  std::vector<AuditEvent> rehash_events;
};

// The current exception's message, for an observer (the library's own messages never
// hold a secret; see error.hpp).
const char* current_message() noexcept {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an unknown exception";
  }
}

}  // namespace

struct Validator::Impl {
  // Fields in the order clang's padding check finds tightest (its optin.performance
  // .Padding runs in CI); the tracker leads, cache-line aligned and without padding.
  //
  // Decides which valid uses are written to last_used_at, and queues them
  // (doc/last-use.md).
  mutable detail::LastUseTracker tracker;
  // Lets KeyManager writes through any store with this store's identity erase from
  // this validator's cache before they return (src/cache_registry.hpp).
  detail::CacheRegistration registration;
  std::atomic<std::uint64_t> last_use_failures{0};
  std::atomic<std::uint64_t> rehashed{0};
  std::atomic<std::uint64_t> rehash_failures{0};
  // Read by the constructor, not the poller: a change made between construction and
  // the poller's first run must still count as a change.
  std::uint64_t baseline_revision = 0;
  // Two background threads, each started only when needed: `poller` polls
  // Store::revision() (a cache and a poll interval), `flusher` writes last use and
  // digest rewrites (record_last_use or rehash_on_use). Apart, so that a write waiting
  // on a lock never delays the poll that drops verdicts another process revoked
  // (doc/revocation.md, "Background work").
  std::thread poller;
  std::thread flusher;
  std::shared_ptr<Store> store;
  std::shared_ptr<Hasher> hasher;
  std::shared_ptr<Cache> cache;
  // `cache` when it is a MemoryCache, which validate() calls through a CacheTag: the
  // public key hashed once rather than in each call (src/memory_cache_probe.hpp).
  MemoryCache* memory_cache = nullptr;
  // The domain of this validator's proofs in memory_cache (MemoryCacheProbe::domain()).
  detail::Sip128 proof_domain;
  std::shared_ptr<Clock> clock;
  // Admission control for keys with rate limits or credits (options.limiter, or a
  // MemoryLimiter over the store).
  std::shared_ptr<Limiter> limiter;
  // Times each observed validation (the event's duration); null when nobody observes,
  // so a validator without observers never calibrates it.
  const detail::TickClock* ticks = nullptr;
  mutable std::atomic<std::uint64_t> limiter_failures{0};
  // options.observers (observer.hpp); empty: no event is built.
  detail::ObserverList observers;
  // options.format, then options.also_accept: the shapes validate() accepts, each with
  // its prefixes' CRC-32s computed once.
  std::vector<detail::FormatCheck> formats;
  // Every pepper id the hasher knows; see decoy_pepper.
  std::vector<std::uint32_t> pepper_ids;
  // One flush at a time (flusher thread, flush_last_use() callers), so batches are
  // taken and written in order; flush_batch's storage takes turns with the tracker's
  // queue (doc/last-use.md, invariant 12).
  std::vector<LastUse> flush_batch APIKEYS_GUARDED_BY(flush_mu);
  std::vector<DigestChange> rehash_batch APIKEYS_GUARDED_BY(flush_mu);
  detail::Mutex flush_mu;
  detail::Mutex bg_mu;
  detail::CondVar bg_cv;
  // Digest rewrites found by the store path, written by flush() (doc/peppers.md).
  mutable detail::RehashQueue rehash_queue;
  ValidatorOptions options;
  // The pepper the store path spends its extra HMAC under, so that every outcome
  // costs two (doc/validate.md, "Equal work on the store path"); has_decoy_pepper: the
  // hasher knows two peppers or more.
  std::uint32_t decoy_pepper = 0;
  // Compared against on a miss, so `not_found` does the same work as `wrong_secret`.
  Digest decoy;
  bool has_decoy_pepper = false;
  // Set when the store answered not_supported: nothing is queued or written after.
  std::atomic<bool> rehash_off{false};
  bool baseline_known = false;
  // The last poll failed (the poll thread's alone): its failure was reported, and its
  // recovery will be.
  bool poll_failing = false;
  bool stopping APIKEYS_GUARDED_BY(bg_mu) = false;

  Impl(std::shared_ptr<Store> s, std::shared_ptr<Hasher> h, ValidatorOptions o)
      : tracker(o.last_use_interval.count(), o.last_use_throttle_limit, o.last_use_queue_limit),
        store(std::move(s)),
        hasher(std::move(h)),
        cache(o.cache),
        memory_cache(dynamic_cast<MemoryCache*>(o.cache.get())),
        clock(o.clock ? o.clock : system_clock()),
        limiter(o.limiter ? o.limiter : std::make_shared<MemoryLimiter>(store)),
        ticks(o.observers.empty() ? nullptr : &detail::TickClock::instance()),
        observers(o.observers),
        rehash_queue(o.rehash_queue_limit),
        options(std::move(o)) {
    formats.reserve(1 + options.also_accept.size());
    formats.emplace_back(options.format);
    for (const KeyFormat& f : options.also_accept) formats.emplace_back(f);
    decoy.pepper_id = hasher->current_pepper_id();
    decoy.bytes.fill(0xA5);
    pepper_ids = hasher->pepper_ids();
    choose_decoy_pepper();
    registration = detail::CacheRegistration(store->identity(), cache);
    if (memory_cache) {
      try {
        proof_domain = detail::MemoryCacheProbe::domain(*memory_cache, *hasher);
      } catch (...) {
        // Safe, only slower: this validator shares no verdict with another.
        report(Component::cache, "proof_domain");
        proof_domain = detail::MemoryCacheProbe::random_domain();
      }
    }
  }

  // True when pk has one of `formats` (the first that accepts it, checksum included)
  // and sk has that same format; before any HMAC, cache or store work. A key of the
  // right size and prefix is read in full (src/key_format.hpp).
  bool well_formed(std::string_view pk, std::string_view sk) const noexcept {
    for (const detail::FormatCheck& f : formats) {
      if (pk.size() != f.public_size()) continue;  // not this format's; no call
      bool pk_ok = false;
      const bool both = f.check_pair(pk, sk, pk_ok);
      if (pk_ok) return both;
    }
    return false;
  }
  // The pepper of the extra HMAC: the legacy pepper when the hasher has one (imported
  // keys are usually the most numerous under a non-current pepper, and a key under
  // the decoy pepper costs exactly what a miss costs), else the first other id.
  void choose_decoy_pepper() {
    const std::uint32_t current = hasher->current_pepper_id();
    if (pepper_ids.size() < 2) return;
    for (std::uint32_t id : pepper_ids) {
      if (id == kLegacyPepperId && id != current) {
        decoy_pepper = id;
        has_decoy_pepper = true;
        return;
      }
    }
    for (std::uint32_t id : pepper_ids) {
      if (id != current) {
        decoy_pepper = id;
        has_decoy_pepper = true;
        return;
      }
    }
  }
  bool knows_pepper(std::uint32_t id) const noexcept {
    return std::find(pepper_ids.begin(), pepper_ids.end(), id) != pepper_ids.end();
  }
  // One HMAC of `sk` under the decoy pepper, consumed by a constant-time compare, where
  // the store path would otherwise do one HMAC fewer than the costliest outcome.
  void spend_decoy_hmac(std::string_view sk) const {
    const std::optional<Digest> d = hasher->hash_with(sk, decoy_pepper);
    volatile bool sink = d && constant_time_equal(*d, decoy);
    (void)sink;
  }
  // `judged` receives the time a cache hit was judged at when it is valid and the clock
  // was read (admission reuses it: one clock read per hit, with nothing slow between the
  // read and the limiter). A verdict from the store leaves it unset: a cache put, a
  // network round trip with RedisCache, lies between, so admission reads the clock
  // afresh. `trace` receives what the observers are told.
  // Each sets `result`, which must be fresh (reset()) on entry.
  void validate(std::string_view pk, std::string_view sk, Trace& trace,
                std::optional<TimePoint>* judged, ValidationResult& result) const noexcept;
  // validate(), then the requirements: a valid key lacking a required scope becomes
  // insufficient_scope, then admission (rate_limited, usage_exceeded); none of them
  // cached, as they depend on the request.
  void validate(std::string_view pk, std::string_view sk, const Requirements& requirements,
                Trace& trace, ValidationResult& result) const noexcept;
  // The public entry: validate() with requirements, and the observers told (a token
  // that did not split is `malformed` without a look at either half).
  void observed(std::string_view pk, std::string_view sk, bool split,
                const Requirements& requirements, ValidationResult& result) const noexcept;
  // Admits a request of `cost` for the valid `result` at `now` (doc/rate-limits.md),
  // then tells the observers of a refill the admission wrote.
  void admit(ValidationResult& result, std::uint64_t cost, TimePoint now,
             Trace& trace) const noexcept;
  // admit() with `refills` for the limiter's credit takes (AdmissionRequest::audit).
  void admit_with(ValidationResult& result, std::uint64_t cost, TimePoint now, Trace& trace,
                  const detail::RefillAudit& refills) const noexcept;
  // Tells the observers about a failure handled here (or its end), with the current
  // exception's message when `message` is null.
  void report(Component component, std::string_view operation, const char* message = nullptr,
              bool recovered = false) const noexcept;
  void run_poll();
  void poll_revision(std::uint64_t& revision, bool& known) noexcept;
  void run_flush();
  // Sleeps until `t` or until stop_threads(); true when stopping.
  bool sleep_until(std::chrono::steady_clock::time_point t) APIKEYS_EXCLUDES(bg_mu);
  // Stops and joins the background threads that were started.
  void stop_threads() noexcept APIKEYS_EXCLUDES(bg_mu);
  void flush() noexcept APIKEYS_EXCLUDES(flush_mu);
  // Each fills `out` (only when there are observers) with what flush() reports.
  void write_last_use(FlushReport& out) noexcept APIKEYS_REQUIRES(flush_mu);
  void write_digests(FlushReport& out) noexcept APIKEYS_REQUIRES(flush_mu);
};

// Format, digest (with a MemoryCache: a proof of the secret, and the digest after a
// miss), cache, fill token, store, then the verdict (secret first, then expiry and
// status), the cache fill and last use: doc/validate.md says why each step sits where
// it does.
void Validator::Impl::validate(std::string_view pk, std::string_view sk, Trace& trace,
                               std::optional<TimePoint>* judged,
                               ValidationResult& result) const noexcept {
  if (!well_formed(pk, sk)) {
    result.code = ValidationCode::malformed;
    return;
  }
  try {
    detail::CacheTag tag;
    if (memory_cache) tag = detail::MemoryCacheProbe::tag(*memory_cache, pk);
    // The key's last-use set loads while the secret is hashed. Its home is any keyed hash
    // of the public key that is the same on every call: the cache's tag when there is one.
    std::uint64_t home = 0;
    if (options.record_last_use) home = tag.usable ? tag.id.hi : tracker.home_of(pk);
#if defined(__GNUC__)
    if (options.record_last_use) __builtin_prefetch(tracker.set_at(home));
#endif
    // The cache's entry likewise.
    if (memory_cache) {
      detail::MemoryCacheProbe::prefetch(*memory_cache, tag);
    } else if (cache) {
      cache->prefetch(pk);
    }
    // A MemoryCache is asked before the HMAC, with a proof of the secret (a SipHash
    // under the cache's own key): a hit computes no HMAC. Any other cache is asked with
    // the digest, as the Cache interface says. With a MemoryCache, the store path
    // computes both, whatever the outcome (doc/validate.md, step 2).
    Digest presented;
    detail::CacheProof proof;
    if (memory_cache) {
      proof = detail::MemoryCacheProbe::proof(*memory_cache, sk, proof_domain);
    } else {
      presented = hasher->hash(sk);
    }

    std::uint64_t token = 0;
    bool can_fill = false;
    if (cache) {
      try {
        trace.cache = CacheResult::error;  // until get() returns
        // Straight into the answer (a Verdict): with MemoryCache and a reused result,
        // a hit allocates nothing.
        Verdict& v = result;
        const bool found = memory_cache
                               ? detail::MemoryCacheProbe::get_into(*memory_cache, tag, proof, v)
                               : cache->get_into(pk, presented, v);
        trace.cache = CacheResult::miss;
        // A `valid` verdict without the key's scopes and metadata (a cache written before
        // they existed rebuilt it from the fields it knew) is a miss: read the store.
        // Likewise one without its rate limits and credits (has_admission).
        if (found && (v.code != ValidationCode::valid || (v.has_policy && v.has_admission))) {
          trace.cache = CacheResult::hit;
          trace.path = ValidatePath::cache;
          if (v.code == ValidationCode::valid) {
            const bool admits = judged && (!v.rate_limits.empty() || v.has_credits);
            if (v.expires_at || admits) {
              // The limiter's state for this lineage loads meanwhile: the clock read,
              // the last-use note and the scope check come before admission.
              if (admits) {
                limiter->prefetch(lineage_of(v), v.rate_limits.data(), v.rate_limits.size());
              }
              // One clock, ours, decides expiry: a verdict the cache kept past the key's
              // expiry (a put delayed after our clock read, a cache on another clock)
              // still answers `expired`.
              const TimePoint now = clock->now();
              if (v.expires_at && now >= *v.expires_at) {
                trace.key_id = v.key_id;
                trace.account_id = v.account_id;
                reset(result);
                result.code = ValidationCode::expired;
                return;
              }
              if (options.record_last_use) tracker.note(home, v.key_id, to_unix_millis(now));
              if (judged) *judged = now;
            } else if (options.record_last_use) {
              tracker.note(home, v.key_id, *clock);
            }
            trace.key_id = v.key_id;
            trace.account_id = v.account_id;
            return;
          }
          const ValidationCode code = v.code;
          reset(result);  // a negative verdict answers its code alone
          result.code = code;
          return;
        }
        // Not an answer: whatever the cache wrote goes, a miss included (get_into() may
        // fill `out` before it finds the secret differs).
        reset(result);
        // Taken before the store read: a revoke that erases after this point makes
        // the put below a no-op (the revoke/fill race, doc/failure-modes.md).
        token = memory_cache ? detail::MemoryCacheProbe::fill_token(*memory_cache, tag)
                             : cache->fill_token(pk);
        can_fill = true;
      } catch (...) {
        reset(result);     // it may have written part of a verdict
        can_fill = false;  // a failing cache is a miss, never a verdict
        trace.cache = CacheResult::error;
        report(Component::cache, "get");
      }
    }
    if (memory_cache) presented = hasher->hash(sk);  // the store path's digest

    trace.path = ValidatePath::store;
    // Initialised from the call, not assigned: a found record is then built in place
    // rather than moved once more, which cost a hit tens of nanoseconds that a miss
    // (whose decoy record a bundled store builds and drops inside find()) did not pay.
    const auto read = [&] {
      try {
        return store->find_for_validation(pk);
      } catch (...) {
        report(Component::store, "find");
        throw;
      }
    };
    std::optional<KeyRecord> record = read();
    // A store matches public keys byte for byte (Store::find()). A record for another
    // spelling of the key is a miss: cached, it would be a key of its own that a revoke
    // does not erase, with a last-use entry of its own. An empty public key is one the
    // store did not fill in, as a store written before find_for_validation() may not.
    // A miss compares the key with itself, so found and not found do the same work:
    // the pointer and size are hidden from the compiler, which would otherwise skip the
    // compare on a miss.
    {
      const bool stated = record && !record->info.public_key.empty();
      const char* p = stated ? record->info.public_key.data() : pk.data();
      std::size_t n = stated ? record->info.public_key.size() : pk.size();
#if defined(__GNUC__)
      asm("" : "+r"(p), "+r"(n));
#endif
      if (n != pk.size() || std::memcmp(p, pk.data(), n) != 0) {
        record.reset();
        report(Component::store, "find",
               "the store returned a record for another public key; a store must match "
               "public keys byte for byte");
      }
    }
    const TimePoint now = clock->now();
    std::chrono::milliseconds ttl{0};
    bool rehash = false;
    if (!record) {
      // Same work as a wrong secret: the digest above, a constant-time compare and,
      // with two peppers or more, one HMAC under the decoy pepper (doc/validate.md).
      volatile bool sink = constant_time_equal(presented, decoy);
      (void)sink;
      if (has_decoy_pepper) spend_decoy_hmac(sk);
      result.code = ValidationCode::not_found;
      ttl = options.ttl_not_found;
    } else {
      KeyInfo& info = record->info;
      const Digest& stored = record->digest;
      bool secret_ok;
      if (stored.pepper_id == presented.pepper_id) {
        secret_ok = constant_time_equal(presented, stored);
        if (has_decoy_pepper) spend_decoy_hmac(sk);
      } else {
        // One HMAC under the record's pepper; the compare matches the other paths'
        // two. A pepper the hasher does not know costs no HMAC in hash_with(): the
        // decoy's. Not verify(), which answers false for a failing hasher too: that
        // would be a wrong_secret, cached under the owner's own secret, where a failure
        // is an error (thrown here, caught below, never cached).
        const std::optional<Digest> under_stored = hasher->hash_with(sk, stored.pepper_id);
        secret_ok = under_stored.has_value() && constant_time_equal(*under_stored, stored);
        volatile bool sink = constant_time_equal(presented, decoy);
        (void)sink;
        if (has_decoy_pepper && !knows_pepper(stored.pepper_id)) spend_decoy_hmac(sk);
        // The digest belongs to the secret, not to the key's state: an expired, revoked
        // or disabled key is rewritten too (doc/peppers.md, "Rehash on use").
        rehash = secret_ok && options.rehash_on_use && !rehash_off.load(std::memory_order_relaxed);
      }
      // The secret first: only a caller who proved it learns anything about the key's
      // state (doc/validate.md, "Secret first").
      if (secret_ok) {
        trace.key_id = info.key_id;
        trace.account_id = info.account_id;
      }
      if (!secret_ok) {
        result.code = ValidationCode::wrong_secret;
        ttl = options.ttl_wrong_secret;
      } else if (info.expires_at && now >= *info.expires_at) {
        result.code = ValidationCode::expired;
        ttl = options.ttl_expired;
      } else if (info.status == KeyStatus::revoked) {
        result.code = ValidationCode::revoked;
        ttl = options.ttl_revoked;
      } else if (info.status != KeyStatus::active) {
        // Disabled, or a status this version does not know: not valid either way.
        result.code =
            info.status == KeyStatus::disabled ? ValidationCode::disabled : ValidationCode::revoked;
        ttl = info.status == KeyStatus::disabled ? options.ttl_disabled : options.ttl_revoked;
      } else {
        result.code = ValidationCode::valid;
        result.account_id = info.account_id;
        result.key_id = info.key_id;
        result.expires_at = info.expires_at;
        result.scopes = std::move(info.scopes);
        result.metadata = std::move(info.metadata);
        result.has_policy = true;
        result.lineage_id = info.lineage();
        result.rate_limits = std::move(info.rate_limits);
        result.has_credits = info.credits.has_value();
        result.has_admission = true;
        ttl = options.ttl_valid;
        if (info.expires_at) {
          // A cached `valid` must never outlive the key.
          const auto left =
              std::chrono::duration_cast<std::chrono::milliseconds>(*info.expires_at - now);
          ttl = std::min(ttl, left);
        }
      }
    }

    if (detail::secret_matched(result.code)) {
      // A cache keeps a verdict reached with the key's secret from guesses for as long as
      // it lives (MemoryCache): were a revoked key's kept longer than an active key's, a
      // guess would tell the two apart by when its tries reach the store.
      ttl = std::min(ttl, options.ttl_valid);
    }
    if (can_fill && ttl.count() > 0) {
      try {
        // The answer is the verdict.
        if (memory_cache) {
          detail::MemoryCacheProbe::put(*memory_cache, tag, proof, result, ttl, token);
        } else {
          cache->put(pk, presented, result, ttl, token);
        }
      } catch (...) {
        // Not caching is always safe.
        report(Component::cache, "put");
      }
    }
    if (result.code == ValidationCode::valid && options.record_last_use) {
      tracker.note(home, result.key_id, to_unix_millis(now));
    }
    // `presented` is the digest under the current pepper already: no HMAC more.
    if (rehash) rehash_queue.add(record->info.key_id, record->digest, presented);
  } catch (...) {
    // Fail closed: whatever went wrong, this is not a `valid`.
    reset(result);
  }
}

void Validator::Impl::validate(std::string_view pk, std::string_view sk,
                               const Requirements& requirements, Trace& trace,
                               ValidationResult& result) const noexcept {
  std::optional<TimePoint> now;
  validate(pk, sk, trace, &now, result);
  if (result.code != ValidationCode::valid) return;
  if (!requirements.scopes.empty()) {
    try {
      for (const std::string& required : requirements.scopes) {
        if (!detail::scopes_grant(result.scopes, required)) {
          result.missing_scopes.push_back(required);
        }
      }
    } catch (...) {
      reset(result);  // allocation failure: fail closed
      return;
    }
    if (!result.missing_scopes.empty()) {
      result.code = ValidationCode::insufficient_scope;
      return;  // refused before admission: nothing is spent
    }
  }
  if (!result.rate_limits.empty() || result.has_credits) {
    admit(result, requirements.cost, now ? *now : clock->now(), trace);
  }
}

void Validator::Impl::observed(std::string_view pk, std::string_view sk, bool split,
                               const Requirements& requirements,
                               ValidationResult& result) const noexcept {
  Trace trace;
  const bool timed = !observers.empty();
  const std::uint64_t start = timed ? ticks->now() : 0;
  if (split) {
    validate(pk, sk, requirements, trace, result);
  } else {
    result.code = ValidationCode::malformed;
  }
  if (!timed) return;
  ValidateEvent event;
  event.code = result.code;
  event.path = trace.path;
  event.cache = trace.cache;
  event.admission = trace.admission;
  event.key_id = trace.key_id;
  event.account_id = trace.account_id;
  event.duration = ticks->between(start, ticks->now());
  observers.validate(event);
}

void Validator::Impl::report(Component component, std::string_view operation, const char* message,
                             bool recovered) const noexcept {
  if (observers.empty()) return;
  observers.error(component, operation,
                  message     ? message
                  : recovered ? ""
                              : current_message(),
                  recovered);
}

// A refill the limiter's take wrote is the library's own change: the store records it
// with the system actor, and the observers hear of it once admission is over, whatever
// its answer (the refill stands even when the limiter failed after it), but only when
// the take returned: a take that threw rolled its refill back with its event. The
// bundled limiters say so (detail::mark_committed); a limiter of the caller's own does
// not, and its refills reach the trail but no observer. On the stack: nothing is
// allocated unless a refill is written.
void Validator::Impl::admit(ValidationResult& result, std::uint64_t cost, TimePoint now,
                            Trace& trace) const noexcept {
  const detail::RefillAudit refills(now);
  admit_with(result, cost, now, trace, refills);
  if (refills.empty() || observers.empty()) return;
  for (const AuditEvent& e : refills.take()) observers.change(e);
}

// The last step, after the secret, the key's state and the scopes: only a caller who
// proved the secret of a key allowed to make the request ever spends its limits or
// credits. A rate_limited or usage_exceeded answer spent nothing (Limiter's contract).
void Validator::Impl::admit_with(ValidationResult& result, std::uint64_t cost, TimePoint now,
                                 Trace& trace, const detail::RefillAudit& refills) const noexcept {
  // The limiter writes the statuses into the result's own vector (its capacity kept, and
  // given back when the limiter throws: the next call allocates nothing either).
  Admission admission;
  try {
    AdmissionRequest request;
    request.lineage_id = lineage_of(result);
    request.key_id = result.key_id;
    request.limits = result.rate_limits.data();
    request.limit_count = result.rate_limits.size();
    request.charge_credits = result.has_credits;
    request.cost = cost;
    request.now = now;
    if (result.has_credits) request.audit = &refills;
    admission.limits.swap(result.limits);
    limiter->admit_into(request, admission);
    result.limits.swap(admission.limits);
    result.credits_remaining = admission.credits_remaining;
    if (admission.outcome != AdmissionOutcome::admitted) result.limits.clear();
    switch (admission.outcome) {
      case AdmissionOutcome::admitted: trace.admission = AdmissionResult::admitted; return;
      case AdmissionOutcome::rate_limited:
        trace.admission = AdmissionResult::rate_limited;
        result.code = ValidationCode::rate_limited;
        result.credits_remaining.reset();
        if (admission.limited_by < result.rate_limits.size()) {
          try {
            result.limited_by = result.rate_limits[admission.limited_by].name;
          } catch (...) {
            // The name could not be copied (no memory): the answer stays rate_limited,
            // unnamed. Thrown on, the refusal would be counted, reported and flagged
            // (limiter_failed) as a failure of the limiter, which did not fail.
            result.limited_by.clear();
          }
        }
        result.retry_after = admission.retry_after;
        return;
      case AdmissionOutcome::usage_exceeded:
        trace.admission = AdmissionResult::usage_exceeded;
        result.code = ValidationCode::usage_exceeded;
        return;
    }
    throw Error(ErrorCode::storage, "the limiter answered an unknown outcome");
  } catch (...) {
    if (admission.limits.capacity() > result.limits.capacity())
      result.limits.swap(admission.limits);
    limiter_failures.fetch_add(1, std::memory_order_relaxed);
    trace.admission = AdmissionResult::failed;
    report(Component::limiter, "admit");
    if (options.limiter_failure == LimiterFailurePolicy::allow) {
      result.limits.clear();
      result.credits_remaining.reset();
      result.limiter_failed = true;
      return;
    }
    reset(result);  // fail closed
    result.limiter_failed = true;
  }
}

void Validator::Impl::flush() noexcept {
  FlushReport out;
  try {
    detail::MutexLock lock(flush_mu);
    write_last_use(out);
    write_digests(out);
  } catch (...) {
    last_use_failures.fetch_add(1, std::memory_order_relaxed);  // the lock failed
    report(Component::last_use, "flush");
    return;
  }
  // Outside flush_mu: an observer may flush again.
  if (observers.empty()) return;
  if (out.last_use_rows > 0) {
    observers.write(BackgroundWrite{Component::last_use, out.last_use_rows});
  }
  if (out.last_use_failed) report(Component::last_use, "flush", out.last_use_message.c_str());
  if (out.rehash_rows > 0) observers.write(BackgroundWrite{Component::rehash, out.rehash_rows});
  for (const AuditEvent& e : out.rehash_events) observers.change(e);
  if (out.rehash_failed) report(Component::rehash, "flush", out.rehash_message.c_str());
}

namespace {

// Keeps the current exception's message (or `message`) for a report after the lock.
void keep_message(std::string& to, const char* message = nullptr) noexcept {
  try {
    to = message ? message : current_message();
  } catch (...) {
    to.clear();  // no memory: reported without its words
  }
}

}  // namespace

// Writes outside the tracker's queue mutex, so validate() never waits for the store; a
// failed batch is counted and dropped (doc/last-use.md, invariants 10 and 12).
void Validator::Impl::write_last_use(FlushReport& out) noexcept {
  try {
    tracker.take(flush_batch);
    if (flush_batch.empty()) return;
    store->record_last_use(flush_batch);
    out.last_use_rows = flush_batch.size();
  } catch (...) {
    last_use_failures.fetch_add(1, std::memory_order_relaxed);
    out.last_use_failed = true;
    if (!observers.empty()) keep_message(out.last_use_message);
  }
}

// Likewise outside the rehash queue's mutex. A failed batch is counted and dropped (the
// keys' next uses queue them again); a store without replace_digests is counted once
// and asked no more (doc/peppers.md, "Rehash on use"). Each rewrite is the library's own
// change: a store that keeps an audit trail writes its `rehash` event (system actor)
// with it, and the observers get exactly the events built for the rewrites written. A
// store without an audit trail (Store's default) says only how many it rewrote: the
// observers then get no event rather than a guessed one.
void Validator::Impl::write_digests(FlushReport& out) noexcept {
  if (!options.rehash_on_use) return;
  try {
    rehash_queue.take(rehash_batch);
    if (rehash_batch.empty() || rehash_off.load(std::memory_order_relaxed)) return;
    const detail::RehashAudit audit(*clock, rehash_batch);
    const std::size_t n = store->replace_digests_audited(rehash_batch, audit);
    rehashed.fetch_add(n, std::memory_order_relaxed);
    out.rehash_rows = n;
    if (!observers.empty()) out.rehash_events = audit.take();
  } catch (const Error& e) {
    rehash_failures.fetch_add(1, std::memory_order_relaxed);
    if (e.code() == ErrorCode::not_supported) rehash_off.store(true, std::memory_order_relaxed);
    out.rehash_failed = true;
    if (!observers.empty()) keep_message(out.rehash_message, e.what());
  } catch (...) {
    rehash_failures.fetch_add(1, std::memory_order_relaxed);
    out.rehash_failed = true;
    if (!observers.empty()) keep_message(out.rehash_message);
  }
}

// Drops the cached verdicts that another writer (another process, mostly) may have
// made stale since the last poll: only the keys the store's change log names when it
// can say, else every verdict. `revision`/`known`: what the cache reflects so far.
void Validator::Impl::poll_revision(std::uint64_t& revision, bool& known) noexcept {
  try {
    const std::uint64_t r = store->revision();
    if (known && r == revision) return;  // never while failing: a failure unsets `known`
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
    // Recovered once the cache reflects the store again, not when the revision reads:
    // a cache that cannot be cleared keeps the poll failing.
    if (poll_failing) {
      poll_failing = false;
      report(Component::revision_poll, "poll", nullptr, true);
    }
  } catch (...) {
    // Cannot tell whether anything changed, or could not drop what did: assume the
    // worst and clear everything, and again at the next poll (fail closed).
    if (!poll_failing) {
      poll_failing = true;
      report(Component::revision_poll, "poll");
    }
    try {
      cache->clear();
    } catch (...) {
      report(Component::cache, "clear");
    }
    known = false;
  }
}

bool Validator::Impl::sleep_until(std::chrono::steady_clock::time_point t) {
  detail::MutexLock lock(bg_mu);
  while (!stopping) {
    if (!bg_cv.wait_until(bg_mu, t)) return stopping;  // the deadline passed
  }
  return true;
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
    detail::MutexLock lock(bg_mu);
    stopping = true;
  }
  bg_cv.signal_all();
  if (poller.joinable()) poller.join();
  if (flusher.joinable()) flusher.join();
}

Validator::Validator(std::shared_ptr<Store> store, std::shared_ptr<Hasher> hasher,
                     ValidatorOptions options) {
  if (!store) throw Error(ErrorCode::invalid_argument, "a Validator needs a Store");
  if (!hasher) throw Error(ErrorCode::invalid_argument, "a Validator needs a Hasher");
  options.format.check();
  for (const KeyFormat& f : options.also_accept) f.check();
  // The writer thread waits this long between flushes: zero or less would spin it.
  if ((options.record_last_use || options.rehash_on_use) && options.flush_interval.count() <= 0) {
    throw Error(ErrorCode::invalid_argument, "ValidatorOptions::flush_interval must be positive");
  }
  impl_ = std::make_unique<Impl>(std::move(store), std::move(hasher), std::move(options));
  const bool polling = impl_->cache != nullptr && impl_->options.revision_poll_interval.count() > 0;
  if (polling) {
    try {
      impl_->baseline_revision = impl_->store->revision();
      impl_->baseline_known = true;
    } catch (...) {
      // Unknown: the first poll clears the cache (fail closed).
      impl_->report(Component::revision_poll, "baseline");
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
      impl_->report(Component::cache, "clear");
    }
  }
  try {
    if (polling) impl_->poller = std::thread([impl = impl_.get()] { impl->run_poll(); });
    if (impl_->options.record_last_use || impl_->options.rehash_on_use) {
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

namespace {
// What a validation without requirements asks: no scopes, cost 1.
const Requirements& no_requirements() noexcept {
  static const Requirements kNone;
  return kNone;
}
}  // namespace

ValidationResult Validator::validate(std::string_view public_key,
                                     std::string_view secret_key) const noexcept {
  ValidationResult result;
  impl_->observed(public_key, secret_key, true, no_requirements(), result);
  return result;
}

ValidationResult Validator::validate(std::string_view token) const noexcept {
  std::string_view pk;
  std::string_view sk;
  const bool split = split_token(token, pk, sk);
  ValidationResult result;
  impl_->observed(pk, sk, split, no_requirements(), result);
  return result;
}

ValidationResult Validator::validate(std::string_view public_key, std::string_view secret_key,
                                     const Requirements& requirements) const noexcept {
  ValidationResult result;
  impl_->observed(public_key, secret_key, true, requirements, result);
  return result;
}

ValidationResult Validator::validate(std::string_view token,
                                     const Requirements& requirements) const noexcept {
  std::string_view pk;
  std::string_view sk;
  const bool split = split_token(token, pk, sk);
  ValidationResult result;
  impl_->observed(pk, sk, split, requirements, result);
  return result;
}

void Validator::validate(std::string_view public_key, std::string_view secret_key,
                         const Requirements& requirements, ValidationResult& out) const noexcept {
  reset(out);
  impl_->observed(public_key, secret_key, true, requirements, out);
}

void Validator::validate(std::string_view token, const Requirements& requirements,
                         ValidationResult& out) const noexcept {
  reset(out);
  std::string_view pk;
  std::string_view sk;
  const bool split = split_token(token, pk, sk);
  impl_->observed(pk, sk, split, requirements, out);
}

void Validator::invalidate(std::string_view public_key) {
  if (impl_->cache) impl_->cache->erase(public_key);
}

void Validator::flush_last_use() noexcept { impl_->flush(); }

std::uint64_t Validator::last_use_failures() const noexcept {
  return impl_->last_use_failures.load(std::memory_order_relaxed);
}

std::uint64_t Validator::rehashed() const noexcept {
  return impl_->rehashed.load(std::memory_order_relaxed);
}

std::uint64_t Validator::rehash_failures() const noexcept {
  return impl_->rehash_failures.load(std::memory_order_relaxed);
}

std::uint64_t Validator::limiter_failures() const noexcept {
  return impl_->limiter_failures.load(std::memory_order_relaxed);
}

std::uint64_t Validator::observer_failures() const noexcept { return impl_->observers.failures(); }

Limiter& Validator::limiter() const noexcept { return *impl_->limiter; }

const ValidatorOptions& Validator::options() const noexcept { return impl_->options; }

}  // namespace apikeys
