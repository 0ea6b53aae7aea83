// apikeys::Validator checks presented keys on the hot path: format, cache, store
// lookup, constant-time secret check, expiry, status, required scopes, admission (rate
// limits and credits); and records
// last use off the
// caller's thread (a background writer, throttled per key, bounded, flushed on
// destruction).
// Thread-safety: validate() and invalidate() are safe from many threads at once.
// Ownership: shares ownership of the store, hasher, cache and clock it is given.
#ifndef APIKEYS_VALIDATOR_HPP
#define APIKEYS_VALIDATOR_HPP

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apikeys/cache.hpp"
#include "apikeys/clock.hpp"
#include "apikeys/export.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/limiter.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/store.hpp"

namespace apikeys {

/// The answer to a validation: a Verdict (code, account_id, key_id, expires_at, scopes,
/// metadata; see cache.hpp) plus ok() and missing_scopes. It derives from Verdict rather
/// than repeating its fields, so the two cannot drift: a cached verdict becomes the
/// answer whole, and an answer is cached as the Verdict it is. account_id, key_id,
/// expires_at, scopes, metadata, lineage_id and rate_limits are set only when valid,
/// insufficient_scope, rate_limited or usage_exceeded (the caller proved the secret);
/// expires_at is then the key's expiry (nullopt: it never expires, or a user's cache
/// that answered did not keep it). Only ok() grants access.
/// Thread-safety and ownership: a plain value that owns its fields.
struct ValidationResult : Verdict {
  /// An `error` result with no ids and no expiry.
  ValidationResult() = default;
  /// Verdict's constructors, e.g. ValidationResult{code, account_id, key_id}.
  using Verdict::Verdict;
  /// The answer that `verdict` gives.
  explicit ValidationResult(const Verdict& verdict) : Verdict(verdict) {}
  /// The answer that `verdict` gives, taking its scopes and metadata.
  explicit ValidationResult(Verdict&& verdict) noexcept : Verdict(std::move(verdict)) {}

  /// True only when code is `valid`.
  [[nodiscard]] bool ok() const noexcept { return code == ValidationCode::valid; }

  /// When code is insufficient_scope: the required scopes the key lacks, in the order
  /// they were required. Empty otherwise.
  std::vector<std::string> missing_scopes;

  /// When valid: one entry per rate limit of the key (rate_limits, same order), its
  /// state after this request, for RateLimit headers. Empty otherwise, and when the
  /// limiter failed.
  std::vector<LimitStatus> limits;
  /// When valid or usage_exceeded and the key has credits: the balance after this
  /// request's charge (valid) or as it is (usage_exceeded). nullopt otherwise.
  std::optional<std::uint64_t> credits_remaining;
  /// When rate_limited: the name of the limit that refused (of those that did, the one
  /// that makes the request wait longest). Empty otherwise.
  std::string limited_by;
  /// When rate_limited: how long until every limit would admit the same request (none
  /// spends meanwhile); std::chrono::milliseconds::max() when one never will (a cost
  /// above its burst).
  std::chrono::milliseconds retry_after{0};
  /// True when the limiter failed for this request (see LimiterFailurePolicy): the
  /// answer is `error` (deny) or `valid` without limits or credits spent (allow).
  bool limiter_failed = false;
};

/// What a request needs from a key beyond being valid.
/// Thread-safety and ownership: a plain value; build it once and share it read-only
/// between threads (validate() only reads it).
struct Requirements {
  /// Scopes the key must all grant. Required scopes are literal: each must follow the
  /// scope grammar (README.md, "Key policy") without wildcards. One that does not can
  /// never be granted, so it is reported missing.
  std::vector<std::string> scopes;
  /// What the request spends of the key's credits, and of each rate limit (GCRA
  /// counts a request of cost c as c requests). 0 checks without spending: it is never
  /// rate_limited or usage_exceeded, and reports the state. A cost above a limit's
  /// burst is never admitted by that limit. Default 1.
  std::uint64_t cost = 1;
};

/// Options for Validator. Every field states its default.
struct ValidatorOptions {
  /// The key shape accepted, and the one KeyManager::create() and rotate() issue.
  /// Default: pk_ / sk_ with 32 characters, no checksum.
  KeyFormat format;
  /// More key shapes accepted, tried in order after `format`; never issued. A token is
  /// checked against the first format whose public shape it has, and its secret must
  /// have that same format. Use it to issue a new format while keys of an old one keep
  /// working, e.g. format = KeyFormat::branded("acme"), also_accept = {KeyFormat{}}.
  /// Default: none.
  std::vector<KeyFormat> also_accept;
  /// Verdict cache. Default (null): no cache, every validation reads the store. The
  /// Validator clears it once when it is built: verdicts cached before then may predate
  /// revokes it could not have heard of (with a RedisCache, every node's start empties
  /// the shared cache once).
  std::shared_ptr<Cache> cache;
  /// Time source for expiry and throttling. Default (null): the system clock.
  std::shared_ptr<Clock> clock;
  /// How long each verdict stays cached. A valid verdict never outlives the key's
  /// expiry, and an expired, revoked or disabled one (also reached with the key's
  /// secret) never outlives ttl_valid: a cache shields such a verdict from guesses for
  /// its whole life, so its life must not depend on the key's state (SECURITY.md).
  /// Defaults: valid 120 s, not_found 300 s, wrong_secret 300 s, expired 3600 s,
  /// revoked 3600 s (so 120 s while ttl_valid is). Zero: do not cache that verdict.
  std::chrono::milliseconds ttl_valid{std::chrono::seconds(120)};
  std::chrono::milliseconds ttl_not_found{std::chrono::seconds(300)};     ///< Default 300 s.
  std::chrono::milliseconds ttl_wrong_secret{std::chrono::seconds(300)};  ///< Default 300 s.
  std::chrono::milliseconds ttl_expired{std::chrono::seconds(3600)};      ///< Default 3600 s.
  std::chrono::milliseconds ttl_revoked{std::chrono::seconds(3600)};      ///< Default 3600 s.
  /// last_used_at is written at most once per key per interval. Default 900 s.
  std::chrono::milliseconds last_use_interval{std::chrono::seconds(900)};
  /// How long a `disabled` verdict stays cached, at most ttl_valid (see ttl_valid).
  /// enable() erases it at once in this process and in a shared cache; other processes
  /// on the same store see it at their next revision poll. Default 300 s.
  std::chrono::milliseconds ttl_disabled{std::chrono::seconds(300)};
  /// Admission control for keys with rate limits or credits (limiter.hpp). Default
  /// (null): a MemoryLimiter over this validator's store, charging credits there with
  /// one guarded write per request. Keys without either never reach it.
  std::shared_ptr<Limiter> limiter;
  /// What to answer when the limiter fails. Default: deny (fail closed, `error`).
  LimiterFailurePolicy limiter_failure = LimiterFailurePolicy::deny;
  /// Record last use at all. Default true.
  bool record_last_use = true;
  /// When a key's secret verifies under a pepper other than the hasher's current one
  /// (a retired pepper, or the legacy pepper of an imported key), rewrite its stored
  /// digest under the current pepper: computed on the validating thread (the digest it
  /// already made), written by the last-use writer thread in batches, as a
  /// compare-and-set on the old digest (Store::replace_digests), so a racing change is
  /// never undone. Stores that do not support it keep verifying under the old pepper.
  /// Default true.
  bool rehash_on_use = true;
  /// Most pending digest rewrites; beyond it they are dropped until the next use of
  /// the key. Default 4,096.
  std::size_t rehash_queue_limit = 4'096;
  /// Most pending last-use updates; beyond it updates are dropped (last use is
  /// advisory), never queued without bound. Default 65,536.
  std::size_t last_use_queue_limit = 65'536;
  /// Most keys remembered by the last-use throttle. Default 1,000,000.
  std::size_t last_use_throttle_limit = 1'000'000;
  /// How often the last-use writer thread flushes last-use updates. Must be positive
  /// when that thread runs (record_last_use or rehash_on_use); the constructor throws
  /// Error(invalid_argument) otherwise. Default 1 s.
  std::chrono::milliseconds flush_interval{1000};
  /// How often the poll thread reads Store::revision() and, when it moved (changes
  /// made by other processes), drops the changed keys' verdicts (all of them when the
  /// store cannot say which, see Store::changes_since). It has a thread of its own, so
  /// a last-use write waiting on a lock never delays it. 0: no polling, and another
  /// process's revoke is seen only when the verdict's TTL ends. Default 250 ms.
  std::chrono::milliseconds revision_poll_interval{250};
  /// Observers of every validation, background write and handled failure, called in
  /// order (observer.hpp); a KeyManager built with these options also reports its
  /// changes to them. Default: none, and then no event is built and no time is taken.
  std::vector<std::shared_ptr<Observer>> observers;
};

/// Checks presented keys against a Store on the hot path; see the top of this header.
class APIKEYS_EXPORT Validator {
 public:
  /// Throws Error(invalid_argument) if store or hasher is null or the format is bad.
  Validator(std::shared_ptr<Store> store, std::shared_ptr<Hasher> hasher,
            ValidatorOptions options = {});
  /// Stops the background threads, then writes pending last-use updates (waiting for
  /// a write that is stuck, up to the store's own timeouts).
  ~Validator();
  Validator(const Validator&) = delete;
  Validator& operator=(const Validator&) = delete;

  /// Validates a public key and secret, and admits a request of cost 1 (a key with
  /// rate limits or credits may answer rate_limited or usage_exceeded). Never throws;
  /// any internal failure is `error`.
  [[nodiscard]] ValidationResult validate(std::string_view public_key,
                                          std::string_view secret_key) const noexcept;
  /// Validates the combined form "pk_...:sk_..." (as sent in an X-API-Key header).
  [[nodiscard]] ValidationResult validate(std::string_view token) const noexcept;
  /// Validates and checks `requirements`: a key that is otherwise valid but lacks a
  /// required scope answers insufficient_scope, with missing_scopes set; then admits a
  /// request of requirements.cost: every rate limit and the credit charge together, or
  /// nothing (rate_limited, usage_exceeded). A request refused at any step spends nothing.
  [[nodiscard]] ValidationResult validate(std::string_view public_key, std::string_view secret_key,
                                          const Requirements& requirements) const noexcept;
  /// The combined form with requirements.
  [[nodiscard]] ValidationResult validate(std::string_view token,
                                          const Requirements& requirements) const noexcept;
  /// validate(public_key, secret_key, requirements) into `out`, for the hot path: `out`
  /// becomes the answer (every field, whatever it held before), keeping the capacity
  /// of its vectors and strings. A thread that reuses one ValidationResult allocates
  /// nothing on a MemoryCache hit once that result has held as many scopes and rate
  /// limits as the key has (scopes and limit names of up to 15 characters; longer ones
  /// are copied into fresh strings on each call). The answer is the same as the
  /// by-value form's.
  void validate(std::string_view public_key, std::string_view secret_key,
                const Requirements& requirements, ValidationResult& out) const noexcept;
  /// The combined form into `out`; see above.
  void validate(std::string_view token, const Requirements& requirements,
                ValidationResult& out) const noexcept;

  /// Drops every cached verdict for `public_key`; the next validate() reads the store.
  /// Throws whatever the cache throws.
  void invalidate(std::string_view public_key);

  /// Writes pending last-use updates and digest rewrites now, on the calling thread.
  /// Store errors are swallowed (both are advisory) but counted in last_use_failures()
  /// and rehash_failures().
  void flush_last_use() noexcept;
  /// Number of last-use batches whose write failed since construction.
  [[nodiscard]] std::uint64_t last_use_failures() const noexcept;
  /// Digests rewritten under the current pepper since construction (rehash_on_use).
  [[nodiscard]] std::uint64_t rehashed() const noexcept;
  /// Batches of digest rewrites whose write failed (or that the store does not
  /// support) since construction.
  [[nodiscard]] std::uint64_t rehash_failures() const noexcept;

  /// Admissions whose limiter failed (threw) since construction, whatever the policy.
  [[nodiscard]] std::uint64_t limiter_failures() const noexcept;
  /// Exceptions thrown by observers since construction (each was caught, reported to
  /// the other observers as a Component::observer error, and changed nothing else).
  [[nodiscard]] std::uint64_t observer_failures() const noexcept;
  /// The limiter admissions go through (options().limiter, or the default one).
  [[nodiscard]] Limiter& limiter() const noexcept;

  /// The options this validator was built with.
  [[nodiscard]] const ValidatorOptions& options() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_VALIDATOR_HPP
