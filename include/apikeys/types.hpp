// Value types shared by every component: Uuid, TimePoint, Digest, KeyStatus, RateLimit,
// CreditRefill, Credits, KeyInfo, KeyRecord, SecretString and the limits of a key's
// policy fields.
// Thread-safety: plain values; const access from many threads is safe.
// Ownership: every type owns its data; SecretString is move-only and wipes its bytes.
#ifndef APIKEYS_TYPES_HPP
#define APIKEYS_TYPES_HPP

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"

namespace apikeys {

/// Wall-clock time, always UTC (system_clock counts from the Unix epoch).
using TimePoint = std::chrono::system_clock::time_point;

/// A 128-bit UUID held as 16 bytes (no allocation). Key ids are random version 4;
/// account ids may be any version.
class APIKEYS_EXPORT Uuid {
 public:
  /// The nil UUID (all zero).
  constexpr Uuid() noexcept : bytes_{} {}
  /// The UUID with these 16 bytes, in network (big-endian) order.
  explicit constexpr Uuid(const std::array<std::uint8_t, 16>& bytes) noexcept : bytes_(bytes) {}

  /// Parses the canonical 8-4-4-4-12 hex form, either case. Returns nullopt otherwise.
  [[nodiscard]] static std::optional<Uuid> parse(std::string_view text) noexcept;
  /// A random version-4 UUID from OpenSSL's CSPRNG. Throws Error(crypto) if it fails.
  [[nodiscard]] static Uuid random();

  /// Lower-case canonical form, 36 characters.
  [[nodiscard]] std::string to_string() const;
  /// True for the nil UUID (all zero).
  [[nodiscard]] bool is_nil() const noexcept;
  /// The 16 bytes, in network (big-endian) order.
  [[nodiscard]] const std::array<std::uint8_t, 16>& bytes() const noexcept { return bytes_; }

  /// Same 16 bytes.
  friend bool operator==(const Uuid& a, const Uuid& b) noexcept { return a.same_as(b); }
  /// Different bytes.
  friend bool operator!=(const Uuid& a, const Uuid& b) noexcept { return !a.same_as(b); }
  /// Byte-wise order, for use as a map key.
  friend bool operator<(const Uuid& a, const Uuid& b) noexcept { return a.bytes_ < b.bytes_; }

 private:
  // Two 8-byte loads each: the compiler calls memcmp for std::array's operator==.
  [[nodiscard]] bool same_as(const Uuid& o) const noexcept {
    std::uint64_t a0 = 0;
    std::uint64_t a1 = 0;
    std::uint64_t b0 = 0;
    std::uint64_t b1 = 0;
    std::memcpy(&a0, bytes_.data(), 8);
    std::memcpy(&a1, bytes_.data() + 8, 8);
    std::memcpy(&b0, o.bytes_.data(), 8);
    std::memcpy(&b1, o.bytes_.data() + 8, 8);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
  }

  std::array<std::uint8_t, 16> bytes_;
};

/// An HMAC-SHA256 digest of a secret and the id of the pepper that made it.
/// Not secret by itself, but never shown to users (list() does not return it).
struct Digest {
  std::array<std::uint8_t, 32> bytes{};  ///< The HMAC-SHA256 output.
  std::uint32_t pepper_id = 0;           ///< Which pepper keyed the HMAC.
};

/// Compares two digests' bytes and pepper ids in constant time.
[[nodiscard]] APIKEYS_EXPORT bool constant_time_equal(const Digest& a, const Digest& b) noexcept;

/// A key's lifecycle state. Deleted keys are gone from the store, not a state. The
/// numeric values are stable (stores persist them).
enum class KeyStatus : std::uint8_t {
  active = 0,    ///< Validates (if not expired).
  revoked = 1,   ///< Terminal: never validates again, cannot be enabled.
  disabled = 2,  ///< Switched off; enable() makes it active again.
};

/// "active", "revoked" or "disabled" ("unknown" for a value outside the enumeration).
APIKEYS_EXPORT const char* to_string(KeyStatus status) noexcept;
/// The status named `name` ("active", "revoked", "disabled"), or nullopt.
[[nodiscard]] APIKEYS_EXPORT std::optional<KeyStatus> parse_key_status(
    std::string_view name) noexcept;

/// The limits of a key's metadata and scopes (README.md, "Key policy").
struct KeyPolicyLimits {
  static constexpr std::size_t kMaxMetadataBytes = 4096;  ///< Serialized JSON, in bytes.
  static constexpr std::size_t kMaxMetadataDepth = 8;     ///< Nesting of objects and arrays.
  static constexpr std::size_t kMaxScopes = 64;           ///< Scopes per key.
  static constexpr std::size_t kMaxScopeLength = 128;     ///< Characters per scope.
  static constexpr std::size_t kMaxSegmentLength = 64;    ///< Characters per scope segment.
  static constexpr std::size_t kMaxRateLimits = 16;       ///< Named rate limits per key.
  static constexpr std::size_t kMaxRateLimitName = 64;    ///< Characters per limit name.
  /// Largest limit and burst of a rate limit.
  static constexpr std::uint64_t kMaxRateLimitValue = 1'000'000'000;
  /// Shortest and longest rate-limit period.
  static constexpr std::chrono::milliseconds kMinRateLimitPeriod{1000};
  static constexpr std::chrono::milliseconds kMaxRateLimitPeriod{86'400'000};  ///< One day.
  /// Largest credit balance, refill amount and cap: 2^53, so every value survives a
  /// JSON number and a Lua (double) number exactly.
  static constexpr std::uint64_t kMaxCredits = std::uint64_t{1} << 53;
};

/// One named rate limit of a key (README.md, "Rate limits and credits"): on average at
/// most `limit` requests per `period`, with bursts of up to `burst` at once, enforced
/// by GCRA (one request every period/limit, with a tolerance of `burst` requests).
/// Thread-safety and ownership: a plain value that owns its name.
struct RateLimit {
  /// 1 to 64 characters of [a-z0-9_.-], starting with a letter or digit; unique per key.
  std::string name;
  std::uint64_t limit = 0;              ///< 1 to kMaxRateLimitValue requests per period.
  std::chrono::milliseconds period{0};  ///< 1 s to 1 day (kMin/kMaxRateLimitPeriod).
  /// Most requests admitted at once from rest: 1 to kMaxRateLimitValue. 0: `limit`.
  std::uint64_t burst = 0;

  /// burst, or limit when burst is 0.
  [[nodiscard]] std::uint64_t effective_burst() const noexcept { return burst ? burst : limit; }
};

/// Same name, limit, period and burst.
[[nodiscard]] inline bool operator==(const RateLimit& a, const RateLimit& b) noexcept {
  return a.name == b.name && a.limit == b.limit && a.period == b.period && a.burst == b.burst;
}
/// Not the same rate limit.
[[nodiscard]] inline bool operator!=(const RateLimit& a, const RateLimit& b) noexcept {
  return !(a == b);
}

/// When credits refill. Periods follow the UTC calendar: a day starts at 00:00 UTC, a
/// month at 00:00 UTC on its 1st. Stable numeric values (stores persist them).
enum class RefillInterval : std::uint8_t {
  daily = 0,    ///< At the start of every UTC day.
  monthly = 1,  ///< At the start of every UTC month.
};

/// How a refill changes the balance. Stable numeric values (stores persist them).
enum class RefillMode : std::uint8_t {
  reset = 0,       ///< The balance becomes `amount`, whatever it was.
  add_capped = 1,  ///< `amount` is added per period elapsed, up to the cap; never lowers it.
};

/// A key's credit refill. Thread-safety and ownership: a plain value.
struct CreditRefill {
  std::uint64_t amount = 0;                         ///< 1 to kMaxCredits.
  RefillInterval interval = RefillInterval::daily;  ///< Daily or monthly (UTC).
  RefillMode mode = RefillMode::reset;              ///< Reset to amount, or add up to cap.
  /// add_capped: the most a refill brings the balance to (a larger balance, set by
  /// hand, is left as it is). 0: `amount`. 1 to kMaxCredits. Ignored by reset.
  std::uint64_t cap = 0;

  /// cap, or amount when cap is 0.
  [[nodiscard]] std::uint64_t effective_cap() const noexcept { return cap ? cap : amount; }
};

/// Same amount, interval, mode and cap.
[[nodiscard]] inline bool operator==(const CreditRefill& a, const CreditRefill& b) noexcept {
  return a.amount == b.amount && a.interval == b.interval && a.mode == b.mode && a.cap == b.cap;
}
/// Not the same refill.
[[nodiscard]] inline bool operator!=(const CreditRefill& a, const CreditRefill& b) noexcept {
  return !(a == b);
}

/// A rotation lineage's usage credits: each admitted request spends its cost, and a
/// request that would take the balance below zero is `usage_exceeded`.
/// Thread-safety and ownership: a plain value.
struct Credits {
  std::uint64_t remaining = 0;         ///< The balance, 0 to kMaxCredits.
  std::optional<CreditRefill> refill;  ///< nullopt: never refilled.
  /// The refill period (see refill_period()) the balance was last refilled for; the
  /// next refill is due when the current period is later. 0 without a refill.
  std::int64_t refilled_period = 0;
};

/// The number of the UTC calendar period `t` falls in: days since 1970-01-01 for
/// daily, months since January 1970 for monthly (negative before 1970).
[[nodiscard]] APIKEYS_EXPORT std::int64_t refill_period(RefillInterval interval,
                                                        TimePoint t) noexcept;
/// When period `period` of `interval` starts (00:00 UTC on its day or 1st).
[[nodiscard]] APIKEYS_EXPORT TimePoint refill_period_start(RefillInterval interval,
                                                           std::int64_t period) noexcept;
/// `credits` as they are at `now`: the refills due since refilled_period applied
/// (reset: the balance becomes the amount; add_capped: the amount once per period
/// elapsed, up to the cap, never lowering a larger balance), and refilled_period moved
/// to now's period. Without a refill, `credits` unchanged. Stores implementing
/// Store::take_credits() use it; every bundled store computes the same.
[[nodiscard]] APIKEYS_EXPORT Credits refilled(const Credits& credits, TimePoint now) noexcept;

/// What may be shown about a key: never its secret, never its digest.
struct KeyInfo {
  Uuid key_id;                            ///< Random version-4 id of the key.
  Uuid account_id;                        ///< The account the key belongs to.
  std::string public_key;                 ///< "pk_...": identifies the key; not secret.
  std::string title;                      ///< Shown to the account's users.
  std::string description;                ///< Empty when none was given.
  KeyStatus status = KeyStatus::active;   ///< Active or revoked.
  TimePoint created_at{};                 ///< When create() made the key.
  std::optional<TimePoint> expires_at;    ///< nullopt: never expires.
  std::optional<TimePoint> last_used_at;  ///< nullopt: never used (or not yet flushed).
  /// A JSON object as UTF-8 text, exactly as it was given (at most
  /// KeyPolicyLimits::kMaxMetadataBytes, depth at most kMaxMetadataDepth, no duplicate
  /// member names). Empty: none (shown as `{}`).
  std::string metadata;
  /// What the key may do: scope strings, sorted, without duplicates. A granted scope may
  /// end in a wildcard segment (`invoices.*`, `invoices.**`, or `**` alone for a
  /// full-access key). Empty: none.
  std::vector<std::string> scopes;
  TimePoint updated_at{};            ///< When the key last changed (created_at until then).
  std::uint64_t version = 1;         ///< 1 at creation; every change adds 1 (compare-and-set).
  std::optional<Uuid> rotated_from;  ///< The key this one replaced by rotation, if any.
  std::optional<Uuid> rotated_to;    ///< The key that replaced this one, if any.
  /// The key's rotation lineage: the id of the first key of its chain of rotations (its
  /// own id for a key not made by rotate()). Rate-limit state and credits belong to the
  /// lineage, so a rotated key and its successor share them. Nil (from a store written
  /// before lineages existed): the key's own id.
  Uuid lineage_id;
  /// Named rate limits, at most KeyPolicyLimits::kMaxRateLimits, names unique, sorted
  /// by name. Empty: none. rotate() copies them; their state is the lineage's.
  std::vector<RateLimit> rate_limits;
  /// The lineage's credits. KeyManager shows them with the refills due by the time of
  /// reading applied; a Store returns them as stored (refilled() applies the rest).
  /// nullopt: no credit limit.
  std::optional<Credits> credits;

  /// lineage_id, or key_id when lineage_id is nil.
  [[nodiscard]] const Uuid& lineage() const noexcept {
    return lineage_id.is_nil() ? key_id : lineage_id;
  }
};

/// What a Store keeps: the shown fields plus the digest of the secret.
struct KeyRecord {
  KeyInfo info;   ///< The fields that may be shown.
  Digest digest;  ///< HMAC of the secret; never shown.
};

/// Bytes of a secret. Move-only; the bytes are wiped with OPENSSL_cleanse when the
/// object dies or is assigned over. Copy out of it only into buffers you wipe too.
class APIKEYS_EXPORT SecretString {
 public:
  SecretString() noexcept = default;
  /// Copies `bytes`; the caller wipes its own copy.
  explicit SecretString(std::string_view bytes);
  /// Takes the bytes of `other`, which is left empty.
  SecretString(SecretString&& other) noexcept;
  /// Wipes this secret's bytes, then takes those of `other`, which is left empty.
  SecretString& operator=(SecretString&& other) noexcept;
  SecretString(const SecretString&) = delete;
  SecretString& operator=(const SecretString&) = delete;
  ~SecretString();

  /// The secret. Valid while this object lives and is not moved from.
  [[nodiscard]] std::string_view reveal() const noexcept { return {data_, size_}; }
  /// Length of the secret in bytes.
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  /// True when there is no secret (default-constructed or moved from).
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }

 private:
  void wipe() noexcept;
  char* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Milliseconds since the Unix epoch; the precision every bundled store keeps.
[[nodiscard]] inline std::int64_t to_unix_millis(TimePoint t) noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}
/// The inverse of to_unix_millis. Saturates: a time beyond TimePoint's range (about
/// 292 years either side of 1970 with a nanosecond clock) gives TimePoint::max() or
/// TimePoint::min() instead of overflowing.
[[nodiscard]] inline TimePoint from_unix_millis(std::int64_t ms) noexcept {
  using Millis = std::chrono::milliseconds;
  constexpr std::int64_t kMax =
      std::chrono::duration_cast<Millis>(TimePoint::duration::max()).count();
  constexpr std::int64_t kMin =
      std::chrono::duration_cast<Millis>(TimePoint::duration::min()).count();
  if (ms > kMax) return TimePoint::max();
  if (ms < kMin) return TimePoint::min();
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(Millis(ms)));
}
/// RFC 3339 UTC text with milliseconds, e.g. "2026-11-25T05:59:32.123Z".
[[nodiscard]] APIKEYS_EXPORT std::string format_utc(TimePoint t);

}  // namespace apikeys

#endif  // APIKEYS_TYPES_HPP
