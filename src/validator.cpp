#include "apikeys/validator.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "apikeys/error.hpp"
#include "cache_registry.hpp"
#include "key_format.hpp"
#include "last_use_tracker.hpp"
#include "scope.hpp"
#include "thread_annotations.hpp"

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

}  // namespace

struct Validator::Impl {
  // Decides which valid uses are written to last_used_at, and queues them
  // (doc/last-use.md). First: it is cache-line aligned, and leads without padding.
  mutable detail::LastUseTracker tracker;
  std::shared_ptr<Store> store;
  std::shared_ptr<Hasher> hasher;
  std::shared_ptr<Cache> cache;
  std::shared_ptr<Clock> clock;
  ValidatorOptions options;
  // options.format, then options.also_accept: the shapes validate() accepts, each with
  // its prefixes' CRC-32s computed once.
  std::vector<detail::FormatCheck> formats;
  // Compared against on a miss, so `not_found` does the same work as `wrong_secret`.
  Digest decoy;
  // Lets KeyManager writes through any store with this store's identity erase from
  // this validator's cache before they return (src/cache_registry.hpp).
  detail::CacheRegistration registration;

  std::atomic<std::uint64_t> last_use_failures{0};
  std::atomic<std::uint64_t> rehashed{0};
  std::atomic<std::uint64_t> rehash_failures{0};
  // One flush at a time (flusher thread, flush_last_use() callers), so batches are
  // taken and written in order; flush_batch's storage takes turns with the tracker's
  // queue (doc/last-use.md, invariant 12).
  detail::Mutex flush_mu;
  std::vector<LastUse> flush_batch APIKEYS_GUARDED_BY(flush_mu);
  // Read by the constructor, not the poller: a change made between construction and
  // the poller's first run must still count as a change.
  std::uint64_t baseline_revision = 0;
  bool baseline_known = false;
  // Two background threads, each started only when needed: `poller` polls
  // Store::revision() (a cache and a poll interval), `flusher` writes last use. Apart,
  // so that a last-use write waiting on a lock never delays the poll that drops
  // verdicts another process revoked (doc/revocation.md, "Background work").
  detail::Mutex bg_mu;
  detail::CondVar bg_cv;
  bool stopping APIKEYS_GUARDED_BY(bg_mu) = false;
  std::thread poller;
  std::thread flusher;

  Impl(std::shared_ptr<Store> s, std::shared_ptr<Hasher> h, ValidatorOptions o)
      : tracker(o.last_use_interval.count(), o.last_use_throttle_limit, o.last_use_queue_limit),
        store(std::move(s)),
        hasher(std::move(h)),
        cache(o.cache),
        clock(o.clock ? o.clock : system_clock()),
        options(std::move(o)) {
    formats.reserve(1 + options.also_accept.size());
    formats.emplace_back(options.format);
    for (const KeyFormat& f : options.also_accept) formats.emplace_back(f);
    decoy.pepper_id = hasher->current_pepper_id();
    decoy.bytes.fill(0xA5);
    registration = detail::CacheRegistration(store->identity(), cache);
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
  ValidationResult validate(std::string_view pk, std::string_view sk) const noexcept;
  // validate(), then the requirements: a valid key lacking a required scope becomes
  // insufficient_scope (never cached: it depends on the request).
  ValidationResult validate(std::string_view pk, std::string_view sk,
                            const Requirements& requirements) const noexcept;
  void run_poll();
  void poll_revision(std::uint64_t& revision, bool& known) noexcept;
  void run_flush();
  // Sleeps until `t` or until stop_threads(); true when stopping.
  bool sleep_until(std::chrono::steady_clock::time_point t) APIKEYS_EXCLUDES(bg_mu);
  // Stops and joins the background threads that were started.
  void stop_threads() noexcept APIKEYS_EXCLUDES(bg_mu);
  void flush() noexcept APIKEYS_EXCLUDES(flush_mu);
};

// Format, digest, cache, fill token, store, then the verdict (secret first, then
// expiry and status), the cache fill and last use: doc/validate.md says why each step
// sits where it does.
ValidationResult Validator::Impl::validate(std::string_view pk,
                                           std::string_view sk) const noexcept {
  ValidationResult result;
  if (!well_formed(pk, sk)) {
    result.code = ValidationCode::malformed;
    return result;
  }
  try {
    const Digest presented = hasher->hash(sk);

    std::uint64_t token = 0;
    bool can_fill = false;
    if (cache) {
      try {
        std::optional<Verdict> v = cache->get(pk, presented);
        // A `valid` verdict without the key's scopes and metadata (a cache written before
        // they existed rebuilt it from the fields it knew) is a miss: read the store.
        if (v && (v->code != ValidationCode::valid || v->has_policy)) {
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
            return ValidationResult(std::move(*v));
          }
          result.code = v->code;
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

    std::optional<KeyRecord> record = store->find(pk);
    const TimePoint now = clock->now();
    std::chrono::milliseconds ttl{0};
    if (!record) {
      // Same work as a wrong secret: one digest (above) and one constant-time compare.
      volatile bool sink = constant_time_equal(presented, decoy);
      (void)sink;
      result.code = ValidationCode::not_found;
      ttl = options.ttl_not_found;
    } else {
      KeyInfo& info = record->info;
      const bool secret_ok = record->digest.pepper_id == presented.pepper_id
                                 ? constant_time_equal(presented, record->digest)
                                 : hasher->verify(sk, record->digest);
      // The secret first: only a caller who proved it learns anything about the key's
      // state (doc/validate.md, "Secret first").
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
        ttl = options.ttl_valid;
        if (info.expires_at) {
          // A cached `valid` must never outlive the key.
          const auto left =
              std::chrono::duration_cast<std::chrono::milliseconds>(*info.expires_at - now);
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

ValidationResult Validator::Impl::validate(std::string_view pk, std::string_view sk,
                                           const Requirements& requirements) const noexcept {
  ValidationResult result = validate(pk, sk);
  if (result.code != ValidationCode::valid || requirements.scopes.empty()) return result;
  try {
    for (const std::string& required : requirements.scopes) {
      if (!detail::scopes_grant(result.scopes, required)) result.missing_scopes.push_back(required);
    }
  } catch (...) {
    return ValidationResult{};  // allocation failure: fail closed
  }
  if (!result.missing_scopes.empty()) result.code = ValidationCode::insufficient_scope;
  return result;
}

// Writes outside the tracker's queue mutex, so validate() never waits for the store; a
// failed batch is counted and dropped (doc/last-use.md, invariants 10 and 12).
void Validator::Impl::flush() noexcept {
  try {
    detail::MutexLock lock(flush_mu);
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

ValidationResult Validator::validate(std::string_view public_key, std::string_view secret_key,
                                     const Requirements& requirements) const noexcept {
  return impl_->validate(public_key, secret_key, requirements);
}

ValidationResult Validator::validate(std::string_view token,
                                     const Requirements& requirements) const noexcept {
  std::string_view pk;
  std::string_view sk;
  if (!split_token(token, pk, sk)) {
    ValidationResult r;
    r.code = ValidationCode::malformed;
    return r;
  }
  return impl_->validate(pk, sk, requirements);
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

const ValidatorOptions& Validator::options() const noexcept { return impl_->options; }

}  // namespace apikeys
