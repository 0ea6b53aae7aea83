// apikeys::Observer sees what the library decides and does: every validation, every
// change to a key, every write and every failure it handles on its own (a cache that
// fails, a poll that fails, a Redis circuit breaker opening). Attach observers through
// ValidatorOptions::observers (KeyManagerOptions::validation::observers for a manager);
// Stats (apikeys/stats.hpp) is the bundled one. Nothing is observed, and nothing is
// paid for, when none is attached.
// Thread-safety: a component calls its observers from the thread doing the work (a
// request's thread, or a background thread), from many threads at once, so an observer
// must be safe for that. It must not block: it runs on the hot path, inside the call it
// observes. An exception it throws is caught and counted (Validator::observer_failures())
// and never changes what the call returns.
// Ownership: components hold observers through std::shared_ptr. An event and what it
// points to (its std::string_view members) live only for the duration of the call:
// copy what you keep.
#ifndef APIKEYS_OBSERVER_HPP
#define APIKEYS_OBSERVER_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "apikeys/export.hpp"
#include "apikeys/types.hpp"
#include "apikeys/validation_code.hpp"

namespace apikeys {

/// Which step answered a validation. Stable values (0..kLastValidatePath).
enum class ValidatePath : std::uint8_t {
  format = 0,  ///< Refused by the format check: no HMAC, no cache, no store.
  cache = 1,   ///< Answered from the cache.
  store = 2,   ///< Answered after reading the store (a cache miss, or no cache).
};
/// The highest ValidatePath.
inline constexpr ValidatePath kLastValidatePath = ValidatePath::store;
/// "format", "cache", "store" ("store" for an unknown value).
APIKEYS_EXPORT const char* to_string(ValidatePath path) noexcept;

/// What the cache said, if it was asked. Stable values (0..kLastCacheResult).
enum class CacheResult : std::uint8_t {
  none = 0,   ///< Not asked: no cache, or refused by the format check.
  hit = 1,    ///< It held the verdict that answered.
  miss = 2,   ///< It held nothing usable (nothing, or a verdict older than its fields).
  error = 3,  ///< It threw: taken as a miss (on_error() reports it too).
};
/// The highest CacheResult.
inline constexpr CacheResult kLastCacheResult = CacheResult::error;
/// "none", "hit", "miss", "error" ("error" for an unknown value).
APIKEYS_EXPORT const char* to_string(CacheResult result) noexcept;

/// What admission decided, if it ran. Stable values (0..kLastAdmissionResult).
enum class AdmissionResult : std::uint8_t {
  none = 0,            ///< Not run: the key has no limits or credits, or was refused first.
  admitted = 1,        ///< Every limit admitted and the credits were charged.
  rate_limited = 2,    ///< A rate limit refused.
  usage_exceeded = 3,  ///< Too few credits.
  failed = 4,          ///< The limiter failed; LimiterFailurePolicy decided the answer.
};
/// The highest AdmissionResult.
inline constexpr AdmissionResult kLastAdmissionResult = AdmissionResult::failed;
/// "none", "admitted", "rate_limited", "usage_exceeded", "failed" ("failed" for an
/// unknown value).
APIKEYS_EXPORT const char* to_string(AdmissionResult result) noexcept;

/// One validation, as Observer::on_validate() sees it. Never holds the secret or its
/// digest. Thread-safety and ownership: a plain value.
struct ValidateEvent {
  ValidationCode code = ValidationCode::error;        ///< The answer.
  ValidatePath path = ValidatePath::format;           ///< The step that answered.
  CacheResult cache = CacheResult::none;              ///< What the cache said.
  AdmissionResult admission = AdmissionResult::none;  ///< What admission decided.
  /// The whole validate() call, up to the moment before the event, on a monotonic
  /// clock: the CPU's time-stamp counter where it is invariant (x86-64), at a rate
  /// measured once per process against std::chrono::steady_clock (about 2 ms, when the
  /// first Validator with observers is built), else steady_clock itself. Never negative.
  std::chrono::nanoseconds duration{0};
  /// The key, when the validation found one and proved its secret: a valid answer, or
  /// a refusal after the secret (expired, revoked, disabled, insufficient_scope,
  /// rate_limited, usage_exceeded) decided on the store path or from a cached `valid`.
  /// Nil otherwise: before the secret (wrong_secret, not_found), and for a refusal
  /// answered from the cache, which keeps no ids.
  Uuid key_id;
  /// Its account when key_id is set; nil otherwise.
  Uuid account_id;
};

/// Who made a change, for the audit trail. Thread-safety and ownership: a plain value.
enum class ActorType : std::uint8_t {
  user = 0,     ///< A person (a login name, a user id).
  service = 1,  ///< Another program acting on its own.
  system = 2,   ///< The library itself (a rehash on use, a refill).
};
/// The highest ActorType.
inline constexpr ActorType kLastActorType = ActorType::system;
/// "user", "service", "system" ("system" for an unknown value).
APIKEYS_EXPORT const char* to_string(ActorType type) noexcept;

/// Who made a change. `id` and `detail` are the caller's words (at most
/// kMaxActorIdLength and kMaxActorDetailLength bytes of UTF-8 without control
/// characters); the library never interprets them. Thread-safety and ownership: a
/// plain value.
struct Actor {
  static constexpr std::size_t kMaxActorIdLength = 256;       ///< Longest id.
  static constexpr std::size_t kMaxActorDetailLength = 1024;  ///< Longest detail.

  ActorType type = ActorType::system;  ///< What kind of actor.
  std::string id;                      ///< Which one (empty: not said).
  std::string detail;                  ///< Anything more (an IP address, a ticket).
};

/// Who makes a management call, and why: the optional last argument of every
/// KeyManager call that changes a key. The default is the system actor with no reason.
/// Thread-safety and ownership: a plain value.
struct ChangeContext {
  static constexpr std::size_t kMaxReasonLength = 1024;  ///< Longest reason, in bytes.

  Actor actor;         ///< Who.
  std::string reason;  ///< Why (empty: not said); UTF-8 without control characters.
};

/// Checks `context` by the rules every KeyManager call that changes keys applies before
/// it reads or writes anything: a known actor type; an id of at most 256 bytes, a detail
/// and a reason of at most 1,024; each valid UTF-8 without control characters (C0, DEL,
/// C1), bidirectional or zero-width formatting characters, or U+2028/U+2029, so no text
/// in the audit trail can forge, hide or reorder a line. Throws Error(invalid_argument)
/// naming the field, never quoting it. For callers that check a context early (a CLI
/// checking its arguments before it opens a database).
APIKEYS_EXPORT void check_change_context(const ChangeContext& context);

/// What a change did. Stable values (0..kLastAuditAction).
enum class AuditAction : std::uint8_t {
  create = 0,
  update = 1,
  disable = 2,
  enable = 3,
  rotate = 4,
  revoke = 5,
  revoke_all = 6,
  remove = 7,
  set_credits = 8,
  add_credits = 9,
  import = 10,
  rehash = 11,  ///< The library rewrote a digest under the current pepper (system).
  refill = 12,  ///< A credit refill came due and was written (system).
};
/// The highest AuditAction.
inline constexpr AuditAction kLastAuditAction = AuditAction::refill;
/// "create", "update", "disable", "enable", "rotate", "revoke", "revoke_all",
/// "remove", "set_credits", "add_credits", "import", "rehash", "refill" ("update" for
/// an unknown value).
APIKEYS_EXPORT const char* to_string(AuditAction action) noexcept;

/// One change to one key (or, for revoke_all, to an account's keys), as
/// Observer::on_change() sees it and the audit trail keeps it. Never holds a secret or
/// a digest. Thread-safety and ownership: a plain value.
struct AuditEvent {
  /// Unique per event: a version 7 UUID whose time and process-wide counter make the
  /// events one process writes in one millisecond sort in the order it wrote them.
  Uuid event_id;
  TimePoint time{};                          ///< When the change was made, on the manager's clock.
  AuditAction action = AuditAction::update;  ///< What was done.
  ChangeContext context;                     ///< Who did it, and why.
  Uuid account_id;                           ///< Whose key.
  /// Which key; for rotate, the old key (`after` names the new one). revoke_all makes
  /// one event per key it revoked; only over a store without an audit trail do the
  /// observers get instead one event with a nil key_id, `after` holding how many.
  Uuid key_id;
  /// The fields the change touched, as they were: a JSON object with the key's field
  /// names as in `apikeys list --json` (never a secret or a digest); "{}" for create.
  /// One line: control characters, U+2028/U+2029 and invisible or bidirectional
  /// formatting characters in a title or the metadata are written as \uXXXX escapes,
  /// and the metadata's line breaks between tokens as spaces.
  std::string before;
  /// The same fields as they are after the change; "{}" for remove.
  std::string after;
};

/// Which part of the library a BackgroundError or a BackgroundWrite comes from. Stable
/// values (0..kLastComponent).
enum class Component : std::uint8_t {
  cache = 0,          ///< A Cache's get, put or erase.
  store = 1,          ///< A Store call the library made on its own.
  revision_poll = 2,  ///< The Validator's poll of Store::revision().
  last_use = 3,       ///< The background last_used_at writer.
  rehash = 4,         ///< The background digest rewriter (rehash on use).
  limiter = 5,        ///< A Limiter's admit().
  redis = 6,          ///< RedisCache or RedisLimiter: connection, breaker, subscription.
  observer = 7,       ///< An observer threw (reported to the other observers).
};
/// The highest Component.
inline constexpr Component kLastComponent = Component::observer;
/// "cache", "store", "revision_poll", "last_use", "rehash", "limiter", "redis",
/// "observer" ("store" for an unknown value).
APIKEYS_EXPORT const char* to_string(Component component) noexcept;

/// A failure the library handled on its own (or its end, when `recovered`), as
/// Observer::on_error() sees it. Thread-safety and ownership: a plain value that
/// borrows its strings for the duration of the call.
struct BackgroundError {
  Component component = Component::store;  ///< Where.
  /// What was being done: "get", "put", "erase", "poll", "flush", "admit",
  /// "breaker_open", "breaker_close", "subscription_lost", "subscription_restored", ...
  std::string_view operation;
  /// What went wrong, never holding a secret, a digest or a password (the library's
  /// own error messages never do); empty when `recovered`.
  std::string_view message;
  /// True for the end of a failure (a breaker closing, a subscription restored).
  bool recovered = false;
};

/// Rows the library wrote on its own, as Observer::on_write() sees them.
/// Thread-safety and ownership: a plain value.
struct BackgroundWrite {
  Component component = Component::last_use;  ///< last_use or rehash.
  std::size_t rows = 0;                       ///< Rows written by this flush.
};

/// Interface: an observer; see the top of this header. Every hook has an empty default,
/// so an observer overrides only what it needs, and one written against this version
/// keeps compiling when hooks are added.
class APIKEYS_EXPORT Observer {
 public:
  Observer() = default;
  Observer(const Observer&) = delete;
  Observer& operator=(const Observer&) = delete;
  virtual ~Observer();

  /// Once per Validator::validate() call, just before it returns.
  virtual void on_validate(const ValidateEvent& event) { (void)event; }
  /// Once per change a KeyManager made, and once per digest rehashed or credit refill
  /// written by the library itself (system actor), after it committed.
  virtual void on_change(const AuditEvent& event) { (void)event; }
  /// Once per failure handled without throwing to a caller, and once when it ends.
  virtual void on_error(const BackgroundError& error) { (void)error; }
  /// Once per background flush that wrote rows.
  virtual void on_write(const BackgroundWrite& write) { (void)write; }
};

}  // namespace apikeys

#endif  // APIKEYS_OBSERVER_HPP
