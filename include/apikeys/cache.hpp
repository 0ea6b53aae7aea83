// apikeys::Cache holds recent validation verdicts so the hot path can skip the store.
// Bundled: MemoryCache; users plug in their own by implementing this interface.
// Thread-safety: every method may be called from many threads at once.
// Ownership: components hold caches through std::shared_ptr; verdicts are values.
#ifndef APIKEYS_CACHE_HPP
#define APIKEYS_CACHE_HPP

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/types.hpp"
#include "apikeys/validation_code.hpp"

namespace apikeys {

/// What a cache remembers about one presented (public key, secret) pair, and the
/// common part of every validation answer: ValidationResult (validator.hpp) derives
/// from Verdict, so the fields a cache keeps and those a caller reads cannot drift
/// apart. A field added here is in both; a cache that stores verdicts (RedisCache's
/// encoding, MemoryCache's slot) must then keep it too, or document that it drops it.
struct Verdict {
  /// An `error` verdict with no ids and no expiry.
  Verdict() = default;
  /// The fields in order; those left out are empty (a constructor rather than
  /// aggregate initialisation, so code written as `Verdict{code, account, key}` before
  /// `expires_at` existed still compiles without a missing-initializer warning).
  // NOLINTNEXTLINE(google-explicit-constructor): brace initialisation must keep working.
  Verdict(ValidationCode c, const Uuid& account = Uuid(), const Uuid& key = Uuid(),
          std::optional<TimePoint> expires = std::nullopt)
      : code(c), account_id(account), key_id(key), expires_at(expires) {}

  ValidationCode code = ValidationCode::error;  ///< The cached outcome.
  Uuid account_id;                              ///< Set when code is valid.
  Uuid key_id;                                  ///< Set when code is valid.
  /// The key's expiry when code is valid (nullopt: it never expires). The Validator
  /// answers `expired` for a cached `valid` whose expiry has passed on its own clock,
  /// so a verdict kept a little past its TTL (a slow put, a cache with another clock)
  /// never outlives the key. A cache should keep it; one that drops it still works,
  /// bounded by the TTL alone.
  std::optional<TimePoint> expires_at;
  /// The key's granted scopes when code is valid (KeyInfo::scopes: sorted, no
  /// duplicates). The Validator checks a request's required scopes against these.
  std::vector<std::string> scopes;
  /// The key's metadata when code is valid (KeyInfo::metadata: JSON text, empty for none).
  std::string metadata;
  /// True when scopes and metadata are those of the key. The Validator sets it on every
  /// verdict it puts; a cache that keeps whole Verdict objects returns it as it was
  /// given. A cache written before scopes existed rebuilds verdicts from the fields it
  /// knew, so this is false in what it returns: the Validator then takes a `valid`
  /// verdict as a miss and reads the store, rather than answer with scopes or metadata
  /// the cache dropped.
  bool has_policy = false;
  /// The key's rotation lineage when code is valid (KeyInfo::lineage()): whose
  /// rate-limit state and credits a request spends.
  Uuid lineage_id;
  /// The key's rate limits when code is valid (KeyInfo::rate_limits).
  std::vector<RateLimit> rate_limits;
  /// True when code is valid and the key's lineage has credits (KeyInfo::credits).
  bool has_credits = false;
  /// True when lineage_id, rate_limits and has_credits are those of the key. The
  /// Validator sets it on every verdict it puts; as with has_policy, a cache written
  /// before rate limits existed returns false, and the Validator then takes a `valid`
  /// verdict as a miss rather than admit a request without the key's limits.
  bool has_admission = false;
};

/// Interface: a verdict cache.
///
/// Verdicts are keyed by the public key *and* the digest of the presented secret (all
/// of it: the 32 bytes and the pepper id, or a keyed MAC of them of at least 128 bits
/// under a key no caller sees; never a prefix), so a negative verdict only ever answers
/// the same presented secret: knowing a public key does not let anyone lock its owner
/// out. (A Validator asks its MemoryCache by a keyed MAC of the secret itself, through
/// a path of its own: memory_cache.hpp.)
///
/// Fill protocol (it closes the revoke/fill race): before reading the store, the
/// Validator takes fill_token(public_key); put() must then store nothing if erase() or
/// clear() for that public key ran after the token was taken. A token may also be
/// invalidated spuriously (that only costs a cache miss).
///
/// One cache holds the verdicts of one store's keys. A cache shared by Validators over
/// different stores (a staging and a production database, say) would answer, through
/// either, a verdict read from the other: a key valid in one would be valid in both
/// while cached. Give each store its own cache (for RedisCache, its own `prefix`).
///
/// Errors: any method may throw; the Validator then treats the cache as a miss
/// (get), skips caching (put), or answers `error` (erase during revoke is the
/// KeyManager's, which propagates it).
class APIKEYS_EXPORT Cache {
 public:
  Cache() = default;
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;
  virtual ~Cache();

  /// The verdict stored for (public_key, presented) and not yet past its TTL.
  [[nodiscard]] virtual std::optional<Verdict> get(std::string_view public_key,
                                                   const Digest& presented) = 0;

  /// A token for a later put() of `public_key`.
  [[nodiscard]] virtual std::uint64_t fill_token(std::string_view public_key) = 0;

  /// Stores `verdict` for `ttl`, unless erase(public_key) or clear() ran since
  /// `token` was taken. May evict other entries to stay within its bounds.
  virtual void put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
                   std::chrono::milliseconds ttl, std::uint64_t token) = 0;

  /// Removes every verdict for `public_key` and invalidates outstanding tokens for it.
  /// After it returns, get() for that public key misses until a new put().
  virtual void erase(std::string_view public_key) = 0;

  /// Removes every verdict and invalidates every outstanding token.
  virtual void clear() = 0;

  /// get() for the hot path, into `out`: true, and every field of `out` set as get()
  /// would return it, when there is a verdict; false otherwise (`out` is then
  /// unspecified). An implementation may keep the capacity of out's vectors and
  /// strings, so that a caller reusing one object allocates nothing on a hit
  /// (MemoryCache does). Default: get(), moved into `out`.
  virtual bool get_into(std::string_view public_key, const Digest& presented, Verdict& out);

  /// A hint from the hot path: get_into(public_key, …) follows soon. An implementation
  /// may start loading what that lookup reads (a memory prefetch), so that it arrives
  /// while the Validator computes the presented secret's digest; it must not block,
  /// change anything or fail, and may ignore the hint. Default: nothing.
  virtual void prefetch(std::string_view public_key) const noexcept { (void)public_key; }
};

}  // namespace apikeys

#endif  // APIKEYS_CACHE_HPP
