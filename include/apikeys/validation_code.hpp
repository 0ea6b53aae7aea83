// apikeys::ValidationCode is the outcome of one validation: what Validator::validate
// answers and what a Cache stores. Its numeric values are stable (caches persist them).
// Thread-safety: plain values and a function without state; safe from any thread.
// Ownership: to_string() returns a static string the caller never frees.
#ifndef APIKEYS_VALIDATION_CODE_HPP
#define APIKEYS_VALIDATION_CODE_HPP

#include <cstdint>

#include "apikeys/export.hpp"

namespace apikeys {

/// Outcome of a validation. Stable numeric values, contiguous from 0 to
/// kLastValidationCode (they may be stored by caches, and read back by older or newer
/// versions of this library).
///
/// Adding a code (append it; never renumber or reuse one):
///  1. Here: the enumerator, numbered kLastValidationCode + 1, and kLastValidationCode
///     moved to it.
///  2. src/validation_code.cpp: its name in to_string() (a static_assert there fails
///     until every code up to kLastValidationCode has one).
///  3. Decoders of stored codes: they accept values up to kLastValidationCode and read
///     anything above it as a cache miss. A RedisCache shared with older library
///     versions must not see the new code until every node understands it: either
///     roll out readers first, or bump the Redis verdict layout version
///     (doc/redis-cache.md, "Verdict encoding").
///  4. MemoryCache keeps the code in one byte of its slot: nothing to do below 256.
///  5. Callers that map codes: the CLI's `verify` exit status (tools/cli.cpp: only
///     `error` is a failure to check, every other non-valid code is a rejection) and
///     the HTTP example (every non-valid code is a 401; none says why).
///  6. The Validator (src/validator.cpp), if it is to answer the new code, and the TTL
///     it caches it for (a ValidatorOptions field with its default).
///  7. Tests: tests/unit/types_test.cpp (names, stable values), the cache contract suite.
///  8. CHANGELOG.md, and README.md where it lists codes (the CLI's exit statuses).
enum class ValidationCode : std::uint8_t {
  valid = 0,
  malformed = 1,     ///< Not the shape of a key: the store was not consulted.
  not_found = 2,     ///< No key has this public key.
  wrong_secret = 3,  ///< The key exists but the secret does not match.
  expired = 4,       ///< The key's expiry has passed.
  revoked = 5,       ///< The key was revoked.
  error = 6,         ///< An internal failure (store, hasher, cache): fail closed.
  disabled = 7,      ///< The key is switched off (KeyManager::disable); enable() undoes it.
  /// The key is valid but lacks a scope the request requires: ValidationResult's
  /// missing_scopes lists them. Never cached (it depends on the request, not the key).
  insufficient_scope = 8,
  /// The key is valid and has the scopes, but one of its rate limits refuses the
  /// request now: ValidationResult's limited_by names it and retry_after says when it
  /// would admit. Nothing was consumed. Never cached.
  rate_limited = 9,
  /// The key is valid, has the scopes and its rate limits admit, but its credits are
  /// fewer than the request's cost. Nothing was consumed. Never cached.
  usage_exceeded = 10,
};

/// The highest ValidationCode. Code that reads a stored code back (a cache decoding
/// its bytes) accepts 0..kLastValidationCode and treats anything else as unknown: a
/// miss, never a crash or a guessed verdict.
inline constexpr ValidationCode kLastValidationCode = ValidationCode::usage_exceeded;

/// True when `value` is the number of a ValidationCode this version knows.
[[nodiscard]] constexpr bool is_known_validation_code(std::uint8_t value) noexcept {
  return value <= static_cast<std::uint8_t>(kLastValidationCode);
}

/// "valid", "malformed", "not_found", "wrong_secret", "expired", "revoked", "error",
/// "disabled", "insufficient_scope", "rate_limited", "usage_exceeded";
/// "error" for a value outside the enumeration too (never null).
APIKEYS_EXPORT const char* to_string(ValidationCode code) noexcept;

}  // namespace apikeys

#endif  // APIKEYS_VALIDATION_CODE_HPP
