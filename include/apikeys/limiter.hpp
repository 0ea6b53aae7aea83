// apikeys::Limiter is admission control: a key's rate limits and credits, checked and
// spent together, after the key was validated. Bundled: MemoryLimiter (one process,
// credits in the Store, optionally leased) and RedisLimiter (every node sharing one
// Redis); users plug in their own by implementing this interface.
// Thread-safety: every method may be called from many threads at once; an
// implementation must make that safe.
// Ownership: components hold limiters through std::shared_ptr; requests borrow their
// limits from the caller for the duration of the call.
#ifndef APIKEYS_LIMITER_HPP
#define APIKEYS_LIMITER_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/types.hpp"

namespace apikeys {

class ChangeAudit;

/// The state of one rate limit after an admission, for RateLimit headers.
/// Thread-safety and ownership: a plain value.
struct LimitStatus {
  /// Requests of cost 1 the limit would admit right after this one.
  std::uint64_t remaining = 0;
  /// How long until the limit is back to its full burst, if nothing else is admitted.
  std::chrono::milliseconds reset{0};
};

/// What a limiter is asked to admit. Thread-safety and ownership: a plain value that
/// borrows `limits` (valid for the duration of the call).
struct AdmissionRequest {
  Uuid lineage_id;                    ///< Whose state is spent (KeyInfo::lineage()).
  Uuid key_id;                        ///< The key that was presented.
  const RateLimit* limits = nullptr;  ///< The key's rate limits...
  std::size_t limit_count = 0;        ///< ...and how many there are.
  bool charge_credits = false;        ///< The lineage has credits: charge `cost` of them.
  std::uint64_t cost = 1;             ///< What the request costs; 0 checks without spending.
  TimePoint now{};                    ///< The Validator's clock (Redis uses its own).
  /// When set, a limiter that takes credits from a Store takes them with
  /// Store::take_credits_audited() and this, so a refill it writes leaves an audit event
  /// (borrowed for the call; the Validator sets it). Limiters may ignore it.
  const ChangeAudit* audit = nullptr;
};

/// How an admission ended.
enum class AdmissionOutcome : std::uint8_t {
  admitted,        ///< Every limit admitted and the credits were charged.
  rate_limited,    ///< A rate limit refused; nothing was consumed.
  usage_exceeded,  ///< The credits are short of the cost; nothing was consumed.
};

/// What a limiter answers. Thread-safety and ownership: a plain value.
struct Admission {
  AdmissionOutcome outcome = AdmissionOutcome::admitted;  ///< See AdmissionOutcome.
  /// rate_limited: the index in AdmissionRequest::limits of the limit that refused (of
  /// those that did, the one that makes the request wait longest).
  std::size_t limited_by = 0;
  /// rate_limited: how long until every limit would admit the request, if nothing else
  /// spends meanwhile; std::chrono::milliseconds::max() when one never will (a cost
  /// above its burst).
  std::chrono::milliseconds retry_after{0};
  /// The balance after the charge (admitted) or as it is (usage_exceeded), when the
  /// lineage has credits. A limiter that holds credits in advance (a lease) includes
  /// them. nullopt otherwise.
  std::optional<std::uint64_t> credits_remaining;
  /// admitted: one entry per requested limit, in order. Otherwise it may be empty.
  std::vector<LimitStatus> limits;
};

/// What the Validator does when the limiter itself fails (throws: Redis unreachable, a
/// store error, a full MemoryLimiter). Either way the failure is counted
/// (Validator::limiter_failures()) and the result's limiter_failed is set.
enum class LimiterFailurePolicy : std::uint8_t {
  deny,   ///< Answer `error` (the default: fail closed).
  allow,  ///< Answer `valid`, without limits or credits spent (fail open).
};

/// Interface: admission control; see the top of this header.
///
/// Contract (README.md, "Rate limits and credits"): admit() is all or nothing. Either
/// every rate limit admits, their state advances and `cost` credits are charged, or
/// nothing is consumed. A rate-limited request is never charged credits (a charge
/// given back goes through Store::return_credits_checked(), so that it never lands on a
/// balance set since: SECURITY.md, Known limits, says what a store without generations
/// does). Failures are
/// reported by throwing (any exception); the Validator then applies its
/// LimiterFailurePolicy.
class APIKEYS_EXPORT Limiter {
 public:
  Limiter() = default;
  Limiter(const Limiter&) = delete;
  Limiter& operator=(const Limiter&) = delete;
  virtual ~Limiter();

  /// Admits the request or says why not; see the contract above.
  [[nodiscard]] virtual Admission admit(const AdmissionRequest& request) = 0;

  /// The lineage's balance was set (KeyManager::set_credits, or credits configured,
  /// their refill changed, or removed): drop any credits held for it in advance, without
  /// returning them, so the new balance is what is spent next. Ideally credits a request
  /// in flight took before this call are not held in advance after it either (they may
  /// be the old balance's; MemoryLimiter drops them). Default: nothing (a limiter
  /// holding nothing).
  virtual void credits_reset(const Uuid& lineage_id) noexcept { (void)lineage_id; }

  /// admit() for the hot path, into `out`: every field of `out` set as admit() would
  /// return it. Same contract and failures (when it throws, `out` is unspecified). An
  /// implementation may keep the capacity of out.limits, so that a caller reusing one
  /// object allocates nothing (MemoryLimiter does). Default: admit(), moved into `out`.
  virtual void admit_into(const AdmissionRequest& request, Admission& out);

  /// A hint from the hot path: an admission for `lineage_id` under `limits` (its first
  /// `limit_count`) may follow soon. An implementation may start loading that state (a
  /// memory prefetch) so that it arrives while the caller does other work; it must not
  /// block, change anything or fail, and may ignore the hint. The Validator calls it on
  /// a cache hit, before its clock read and last-use note. Default: nothing.
  virtual void prefetch(const Uuid& lineage_id, const RateLimit* limits,
                        std::size_t limit_count) const noexcept {
    (void)lineage_id;
    (void)limits;
    (void)limit_count;
  }
};

/// Parses a rate-limit spec "NAME=LIMIT/PERIOD[:BURST]", e.g. "per-minute=100/60s" or
/// "burst=10/1s:20"; PERIOD is a whole number followed by ms, s, m, h or d. Checks every
/// rule of RateLimit (name, 1 <= LIMIT <= kMaxRateLimitValue, 1 s <= PERIOD <= 1 d,
/// 1 <= BURST <= kMaxRateLimitValue). Throws Error(invalid_argument) saying which rule
/// failed.
[[nodiscard]] APIKEYS_EXPORT RateLimit parse_rate_limit(std::string_view spec);

/// "NAME=LIMIT/PERIOD[:BURST]" for `limit`, the period in the largest unit that divides
/// it (s, m, h, d; ms when none does), BURST only when set. parse_rate_limit() reads it back.
[[nodiscard]] APIKEYS_EXPORT std::string format_rate_limit(const RateLimit& limit);

/// Checks the key's rate limits (count, names, values; duplicates) and returns them
/// sorted by name. Throws Error(invalid_argument) naming the rule broken.
[[nodiscard]] APIKEYS_EXPORT std::vector<RateLimit> normalize_rate_limits(
    std::vector<RateLimit> limits);

/// Checks credits (remaining, and the refill's amount and cap, at most kMaxCredits;
/// the amount at least 1). Throws Error(invalid_argument) naming the rule broken.
APIKEYS_EXPORT void check_credits(const Credits& credits);

}  // namespace apikeys

#endif  // APIKEYS_LIMITER_HPP
