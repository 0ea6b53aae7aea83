// apikeys::KeyManager is the key lifecycle: create, get, list (whole or in pages),
// update, disable, enable, rotate, revoke, revoke_all, remove, credits, and validation through
// its Validator. Request rules are checked here, before the store.
// Thread-safety: every method is safe from many threads at once.
// Ownership: shares ownership of its store, hasher, generator, cache, clock and observers.
#ifndef APIKEYS_KEY_MANAGER_HPP
#define APIKEYS_KEY_MANAGER_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <istream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/import.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/validator.hpp"

namespace apikeys {

/// What create() needs. Neither text field may contain the invisible characters that
/// reorder or join the text around them, which could make a dashboard show one key's
/// title as another's: the bidirectional formatting characters U+061C, U+200E, U+200F,
/// U+202A-U+202E and U+2066-U+2069; the zero-width U+200B-U+200D, U+2060 and U+FEFF;
/// and the other characters that render as nothing: U+034F, U+180E, U+2061-U+2064 and
/// the Hangul fillers U+115F, U+1160, U+3164, U+FFA0 (variation selectors stay, as
/// emoji need U+FE0F). That also refuses emoji joined by U+200D (e.g. a family emoji) and the
/// U+200C of Persian spelling; other emoji and every script's letters are accepted.
struct CreateRequest {
  /// An empty request (the title must be set before create()).
  CreateRequest() = default;
  /// The fields in order; those left out are empty. A constructor rather than
  /// aggregate initialisation, so code written as `CreateRequest{title, description,
  /// days}` before metadata and scopes existed still compiles without a
  /// missing-initializer warning.
  // NOLINTNEXTLINE(google-explicit-constructor): brace initialisation must keep working.
  CreateRequest(std::string title_, std::string description_ = {},
                std::optional<int> expires_in_days_ = std::nullopt, std::string metadata_ = {},
                std::vector<std::string> scopes_ = {}, std::vector<RateLimit> rate_limits_ = {},
                std::optional<Credits> credits_ = std::nullopt)
      : title(std::move(title_)),
        description(std::move(description_)),
        expires_in_days(expires_in_days_),
        metadata(std::move(metadata_)),
        scopes(std::move(scopes_)),
        rate_limits(std::move(rate_limits_)),
        credits(credits_) {}

  /// Trimmed of ASCII white space; then 1 to 255 Unicode code points of valid UTF-8,
  /// with no control characters and none of the invisible characters above.
  std::string title;
  /// Optional (empty: none). Valid UTF-8, at most kMaxDescriptionCodePoints code
  /// points, no control characters other than tab, line feed and carriage return, and
  /// none of the invisible characters above.
  std::string description;
  /// Optional lifetime in days, 1 to 365. nullopt: never expires.
  std::optional<int> expires_in_days;
  /// Optional (empty: none). A JSON object: at most KeyPolicyLimits::kMaxMetadataBytes
  /// bytes of valid UTF-8, nesting depth at most kMaxMetadataDepth, no member name twice
  /// in one object. Stored and returned as given.
  std::string metadata;
  /// Optional granted scopes (README.md, "Key policy"): each 1 to 128 characters of
  /// segments of [a-z0-9_-] (1 to 64 characters) joined by '.' or ':', the last segment
  /// possibly a wildcard `*` or `**`; at most 64 after duplicates are removed. Stored
  /// sorted.
  std::vector<std::string> scopes;
  /// Optional named rate limits (RateLimit's rules; at most
  /// KeyPolicyLimits::kMaxRateLimits, names unique). Stored sorted by name.
  std::vector<RateLimit> rate_limits;
  /// Optional credits: the starting balance and the refill (Credits::refilled_period
  /// is ignored: the balance belongs to the current period). nullopt: no credit limit.
  std::optional<Credits> credits;
};

/// One field of a KeyUpdate: leave it as it is (the default), set it to a value, or
/// clear it. Thread-safety and ownership: a plain value that owns its value.
template <typename T>
class FieldUpdate {
 public:
  /// Leave the field as it is.
  FieldUpdate() = default;
  /// Set the field to `value` (implicit, so `update.title = "New name";` reads well).
  template <typename U, typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                                    !std::is_same_v<std::decay_t<U>, FieldUpdate>>>
  // NOLINTNEXTLINE(google-explicit-constructor): assigning a value means "set it".
  FieldUpdate(U&& value) : state_(State::set), value_(std::forward<U>(value)) {}
  /// Clear the field.
  [[nodiscard]] static FieldUpdate clear() {
    FieldUpdate u;
    u.state_ = State::cleared;
    return u;
  }

  /// True when the field is left as it is.
  [[nodiscard]] bool leaves() const noexcept { return state_ == State::leave; }
  /// True when the field is set to value().
  [[nodiscard]] bool sets() const noexcept { return state_ == State::set; }
  /// True when the field is cleared.
  [[nodiscard]] bool clears() const noexcept { return state_ == State::cleared; }
  /// The value to set. Meaningful only when sets().
  [[nodiscard]] const T& value() const noexcept { return value_; }

 private:
  enum class State : std::uint8_t { leave, set, cleared };
  State state_ = State::leave;
  T value_{};
};

/// What update() changes. Every field is left as it is unless set or cleared; the same
/// rules as CreateRequest apply to the values set.
/// Thread-safety and ownership: a plain value that owns its fields.
struct KeyUpdate {
  FieldUpdate<std::string> title;                ///< Clearing it is refused: a key has a title.
  FieldUpdate<std::string> description;          ///< Clearing it leaves it empty.
  FieldUpdate<std::string> metadata;             ///< A JSON object; clearing it removes it.
  FieldUpdate<std::vector<std::string>> scopes;  ///< Replaces the whole set; clear: none.
  /// Sets the expiry to now plus 1 to 365 days; clearing it makes the key never expire.
  FieldUpdate<int> expires_in_days;
  /// Replaces every rate limit; clear: none. A limit keeping its name keeps its state.
  FieldUpdate<std::vector<RateLimit>> rate_limits;
  /// Sets the lineage's credit balance (creating credits when it had none); clear:
  /// no credit limit any more (the refill goes too).
  FieldUpdate<std::uint64_t> credits;
  /// Sets the refill (the lineage must have credits, or get them in this update:
  /// Error(conflict) otherwise, after the key's own fields were written); clear: no
  /// refill (for a lineage without credits, nothing to do).
  FieldUpdate<CreditRefill> refill;
  /// When given, the update is written only if the key's version is this one; otherwise
  /// update() throws Error(conflict) and writes nothing. Credits are the lineage's, not
  /// the key's: they are not versioned.
  std::optional<std::uint64_t> expected_version;
};

/// What rotate() needs.
/// Thread-safety and ownership: a plain value.
struct RotateRequest {
  /// How long the old key keeps working: its expiry becomes the earlier of its own and
  /// now + grace. 0 s (the default) to 7 days; 0 ends it at once.
  std::chrono::seconds grace{0};
};

/// What list() with options returns a page of.
/// Thread-safety and ownership: a plain value.
struct ListOptions {
  static constexpr std::size_t kDefaultLimit = 100;  ///< limit when 0 is given.
  static constexpr std::size_t kMaxLimit = 1000;     ///< The largest page.
  /// Most keys in the page: 1 to 1000; 0 means the default, 100.
  std::size_t limit = kDefaultLimit;
  /// Empty for the first page; else the next_cursor of the page before, with the same
  /// account and status filter. A cursor made for another account, or altered, is
  /// refused with Error(invalid_argument).
  std::string cursor;
  /// Only keys with this status. nullopt: every key.
  std::optional<KeyStatus> status;
};

/// One page of keys, newest first (created_at descending, then key id descending).
/// Thread-safety and ownership: a plain value that owns its keys.
struct KeyPage {
  std::vector<KeyInfo> keys;               ///< At most ListOptions::limit keys.
  std::optional<std::string> next_cursor;  ///< nullopt on the last page.
};

/// Which audit events KeyManager::audit() reads.
/// Thread-safety and ownership: a plain value.
struct AuditQuery {
  static constexpr std::size_t kDefaultLimit = 100;  ///< limit when 0 is given.
  static constexpr std::size_t kMaxLimit = 1000;     ///< The largest page.
  std::optional<Uuid> key_id;      ///< Only this key's events (nullopt: the account's).
  std::optional<TimePoint> since;  ///< Only events at or after this time.
  /// Most events in the page: 1 to 1000; 0 means the default, 100.
  std::size_t limit = kDefaultLimit;
  /// Empty for the first page; else the next_cursor of the page before, with the same
  /// account, key_id and since. Any other cursor is refused with Error(invalid_argument).
  std::string cursor;
};

/// One page of audit events, newest first (time descending, then event id descending).
/// Thread-safety and ownership: a plain value that owns its events.
struct AuditPage {
  std::vector<AuditEvent> events;          ///< At most AuditQuery::limit events.
  std::optional<std::string> next_cursor;  ///< nullopt on the last page.
};

/// What create() returns: the stored fields, and the secret, shown this once.
struct CreatedKey {
  KeyInfo info;             ///< The stored fields (no digest).
  SecretString secret_key;  ///< The secret: show it once, then let it go.
};

/// Options for KeyManager. Every field states its default.
struct KeyManagerOptions {
  /// Validation settings, including the key format, cache and clock shared with
  /// create(). Defaults: see ValidatorOptions.
  ValidatorOptions validation;
  /// Key pair source. Default (null): CsprngKeyGenerator.
  std::shared_ptr<KeyGenerator> generator;
};

/// The key lifecycle (create, get, list, update, disable, enable, rotate, revoke,
/// revoke_all, remove) over a Store, with validation through its own Validator. Safe
/// from many threads at once.
///
/// Every call that changes keys takes, last, an optional ChangeContext (observer.hpp):
/// who makes the change (an Actor) and why, for the audit trail; the default is the
/// system actor with no reason. It is checked before anything is written, and refused
/// with Error(invalid_argument), naming the field but never quoting it, when the actor
/// id is longer than Actor::kMaxActorIdLength bytes, the detail longer than
/// kMaxActorDetailLength, the reason longer than ChangeContext::kMaxReasonLength, any of
/// them is not valid UTF-8 or holds a control character, or the actor type is not an
/// ActorType. Once a change is committed, every observer in
/// options.validation.observers gets one Observer::on_change() per key changed: an
/// AuditEvent with the context and, in `before` and `after`, the fields the change
/// touched, named as `apikeys list --json` names them (never a secret or a digest). A
/// call that changes nothing (disabling a disabled key) or fails before its write
/// reports nothing; one that fails after its write (a cache it cannot erase) reports the
/// change and then throws. Observers run on the calling thread, before the call returns;
/// an exception they throw is counted in observer_failures() and changes nothing else.
/// Without observers, no event is built, unless the store keeps an audit trail
/// (Store::keeps_audit(): every bundled store does). Then each event is also written in
/// the same transaction as its change, and the observers get exactly the events
/// written; audit() reads them back and prune_audit() ages them out.
class APIKEYS_EXPORT KeyManager {
 public:
  static constexpr std::size_t kMaxTitleCodePoints = 255;         ///< Longest title.
  static constexpr std::size_t kMaxDescriptionCodePoints = 1024;  ///< Longest description.
  static constexpr int kMaxExpiryDays = 365;                      ///< Longest lifetime.
  /// Longest rotation grace.
  static constexpr std::chrono::seconds kMaxRotationGrace{7 * 24 * 3600};

  /// Throws Error(invalid_argument) if store or hasher is null or the format is bad.
  KeyManager(std::shared_ptr<Store> store, std::shared_ptr<Hasher> hasher,
             KeyManagerOptions options = {});
  ~KeyManager();
  KeyManager(const KeyManager&) = delete;
  KeyManager& operator=(const KeyManager&) = delete;

  /// Creates a key for `account_id`. Throws Error(invalid_argument) for a bad request
  /// (nothing is written), Error(busy/storage/crypto) for failures below, and
  /// Error(not_supported) when the request has rate limits or credits and the store
  /// does not keep them or cannot charge credits (a store written before they existed;
  /// the key is read back, and removed again). Observers see one `create` event: before
  /// {}, after every field of the key. `context`: see the class comment.
  [[nodiscard]] CreatedKey create(const Uuid& account_id, const CreateRequest& request,
                                  const ChangeContext& context = ChangeContext());

  /// The account's keys, newest first, without secrets or digests.
  [[nodiscard]] std::vector<KeyInfo> list(const Uuid& account_id);

  /// One page of the account's keys; see ListOptions and KeyPage. No key is skipped or
  /// repeated across pages while other keys are created meanwhile. Throws
  /// Error(invalid_argument) for a limit above 1000 or a bad cursor.
  [[nodiscard]] KeyPage list(const Uuid& account_id, const ListOptions& options);

  /// The key. Throws Error(not_found) when the account has no such key.
  [[nodiscard]] KeyInfo get(const Uuid& account_id, const Uuid& key_id);

  /// Changes the fields `update` sets or clears, adds 1 to the version and returns the
  /// key as it now is. Same guarantee as revoke(): when it returns, no validation in this
  /// process answers from the old state. A rotated key's expiry may only be brought
  /// forward: a later one, or none, is Error(conflict). Throws Error(invalid_argument) for a bad
  /// value (nothing is written), Error(conflict) when expected_version is given and is not the
  /// key's version, Error(not_found), Error(not_supported) for a store without replace().
  /// The key's own fields and its lineage's credits are two writes, each with its own
  /// `update` event holding exactly the fields it changed: the first with updated_at and
  /// version, the second with credits; no event for a write that changed nothing. A
  /// cache that cannot erase the key after the first write does not stop the second:
  /// both are made, then that Error(busy) is thrown.
  /// `context`: see the class comment.
  KeyInfo update(const Uuid& account_id, const Uuid& key_id, const KeyUpdate& update,
                 const ChangeContext& context = ChangeContext());

  /// Switches the key off: it validates as `disabled` until enable(). Disabling a
  /// disabled key succeeds without a change. Throws Error(conflict) for a revoked key
  /// (revocation is final), Error(not_found), Error(not_supported). Same guarantee as
  /// revoke(). Observers see one `disable` event (status, updated_at, version), none
  /// for a key already disabled. `context`: see the class comment.
  KeyInfo disable(const Uuid& account_id, const Uuid& key_id,
                  const ChangeContext& context = ChangeContext());

  /// Switches a disabled key back on. Enabling an active key succeeds without a change.
  /// Throws Error(conflict) for a revoked key, Error(not_found), Error(not_supported).
  /// Same guarantee as revoke(). Observers see one `enable` event (status, updated_at,
  /// version), none for a key already active. `context`: see the class comment.
  KeyInfo enable(const Uuid& account_id, const Uuid& key_id,
                 const ChangeContext& context = ChangeContext());

  /// Replaces the key with a new one that has the same title, description, metadata,
  /// scopes, rate limits and expiry, and the same lineage: it shares the old key's
  /// rate-limit state and credits (never a copy of them). Returns it with its secret. The old key
  /// keeps working until the earlier of its own expiry and now + grace, then expires. Both keys are
  /// written in one atomic step, and name each other (rotated_to, rotated_from). Throws
  /// Error(conflict) for a key that is revoked, disabled, expired or already rotated,
  /// Error(invalid_argument) for a grace outside 0 s to 7 days, Error(not_found),
  /// Error(not_supported) for a store without rotate(). Same guarantee as revoke() for
  /// the old key, except that a cache failing to erase it (an unreachable Redis) does
  /// not make rotate() throw, as that would lose the new key's secret: every other
  /// cache is erased, and that one within the revision-poll interval. Observers see two
  /// events: `rotate` for the old key (the fields it changed: expires_at, rotated_to,
  /// updated_at, version), then `create` for the new one (before {}, after every field,
  /// rotated_from among them). `context`: see the class comment.
  [[nodiscard]] CreatedKey rotate(const Uuid& account_id, const Uuid& key_id,
                                  const RotateRequest& request,
                                  const ChangeContext& context = ChangeContext());

  /// Sets the credit balance of the key's lineage to `n` (0 to kMaxCredits), creating
  /// credits when it had none, and returns the key. The balance belongs to the current
  /// refill period. Credits this process's limiter held in advance for the lineage are
  /// dropped; another process's lease (MemoryLimiterOptions::lease_size) may still be
  /// spent, at most one lease per process, until its lease_ttl ends or that process next
  /// asks the store. Credits taken before are never given back onto the new balance by a
  /// bundled store (Store::return_credits_checked()). Throws
  /// Error(invalid_argument) above kMaxCredits, Error(not_found), Error(not_supported)
  /// for a store without change_credits(). Observers see one `set_credits` event whose
  /// before and after hold `credits` (before: as read just ahead of the change), none
  /// when they are the same. `context`: see the class comment.
  KeyInfo set_credits(const Uuid& account_id, const Uuid& key_id, std::uint64_t n,
                      const ChangeContext& context = ChangeContext());

  /// Adds `delta` (either sign) to the credit balance of the key's lineage, after any
  /// refill due, clamped to 0..kMaxCredits, and returns the key. Throws Error(conflict)
  /// when the lineage has no credits, Error(invalid_argument) for |delta| above
  /// kMaxCredits, Error(not_found), Error(not_supported). Observers see one
  /// `add_credits` event, as for set_credits(). `context`: see the class comment.
  KeyInfo add_credits(const Uuid& account_id, const Uuid& key_id, std::int64_t delta,
                      const ChangeContext& context = ChangeContext());

  /// Revokes every key of the account in one transaction (in the bundled stores) and
  /// returns how many were not revoked before. Same guarantee as revoke() for each,
  /// including keys a concurrent rotate() created meanwhile (the store is asked again
  /// until nothing is left to revoke) and keys an earlier call revoked before it failed.
  /// Each key revoked has a `revoke_all` event (status, updated_at, version). Over a
  /// store without an audit trail, observers see instead one `revoke_all` event with a
  /// nil key_id, before {} and after {"revoked": N}, N as returned; none when N is 0.
  /// `context`: see the class comment.
  std::size_t revoke_all(const Uuid& account_id, const ChangeContext& context = ChangeContext());

  /// Revokes the key. When it returns, no validate() in this process accepts the key:
  /// not this manager's, nor that of any other Validator whose store has the same
  /// Store::identity() (the same store object, or another SqliteStore on the same
  /// file), whatever cache it has. Other processes: see revision_poll_interval.
  /// Throws whatever a cache's erase throws (Error(busy) from an unreachable Redis),
  /// after the store change has committed and every other cache was erased; retrying
  /// is safe.
  /// Throws Error(not_found) when the account has no such key (another account's key
  /// included). Revoking a revoked key succeeds. Observers see one `revoke` event
  /// (status, updated_at, version), none for a key already revoked. `context`: see the
  /// class comment.
  KeyInfo revoke(const Uuid& account_id, const Uuid& key_id,
                 const ChangeContext& context = ChangeContext());

  /// Deletes the key; same guarantees and errors as revoke(). Observers see one `remove`
  /// event: before every field of the key, after {}. `context`: see the class comment.
  KeyInfo remove(const Uuid& account_id, const Uuid& key_id,
                 const ChangeContext& context = ChangeContext());

  /// Imports keys exported from the reference Python service's `api_keys` table (see
  /// ImportFormat for the two forms), reading `in` to its end, one row at a time (a row
  /// longer than 1 MiB is rejected; a leading UTF-8 byte order mark and CRLF line ends
  /// are accepted). Kept per row: key id, account id, public key (the legacy shape,
  /// "pk_" and 32 base62 characters), the digest (64 hex digits, decoded, under
  /// options.pepper_id), title, description, status, expires_at, last_used_at and
  /// created_at; the key gets version 1, updated_at = created_at, and no scopes,
  /// metadata or rotation links. Title and description follow create()'s rules; a NULL,
  /// empty or blank title becomes "Imported key". Status "expired" is imported as active
  /// with its expiry (created_at when it has none), brought forward to the time of the
  /// import if later, so it validates as `expired`. A row whose public key is stored
  /// already for the same key id and account is skipped; any other bad row is rejected
  /// with its line and reason (which never quotes the digest) and never stops the rows
  /// after it. Each key is one insert: whole or absent. Every imported or skipped key
  /// is erased from the caches, as by revoke(), so a `not_found` cached before the
  /// import does not hide it. Throws Error(invalid_argument), importing nothing, when
  /// no format of this manager (ValidatorOptions::format, also_accept) accepts legacy
  /// keys, when the hasher's pepper_ids() lacks options.pepper_id, or when the input is
  /// unreadable as a whole (no CSV header, a CSV header without a required column);
  /// and store or cache errors other than a duplicate (busy, storage) as they come:
  /// rows imported before then stay imported, and running it again finishes the job.
  /// A read error (std::filebuf throws one) ends the input there: the report covers the
  /// rows read before it, and `in` is left bad(). Observers see one `import` event per
  /// key imported (before {}, after every field), none for a row skipped or rejected.
  /// `context`: see the class comment.
  ImportReport import_keys(std::istream& in, const ImportOptions& options = {},
                           const ChangeContext& context = ChangeContext());

  /// How many keys each pepper id still holds: see Store::pepper_counts(). Throws
  /// Error(not_supported) for a store without it.
  [[nodiscard]] std::vector<PepperCount> pepper_counts();

  /// Shorthands for validator().validate(...).
  [[nodiscard]] ValidationResult validate(std::string_view public_key,
                                          std::string_view secret_key) const noexcept;
  /// Shorthand for validator().validate(token), token being "pk_...:sk_...".
  [[nodiscard]] ValidationResult validate(std::string_view token) const noexcept;
  /// Shorthand for validator().validate(token, requirements).
  [[nodiscard]] ValidationResult validate(std::string_view token,
                                          const Requirements& requirements) const noexcept;

  /// The Validator this manager validates with and invalidates on revoke and remove.
  [[nodiscard]] Validator& validator() noexcept;

  /// The account's audit events, newest first, one page at a time; see AuditQuery.
  /// Throws Error(not_supported) when the store keeps no audit trail
  /// (Store::keeps_audit()), Error(invalid_argument) for a limit above 1000 or a cursor
  /// this call did not make for the same account, key and since.
  [[nodiscard]] AuditPage audit(const Uuid& account_id, const AuditQuery& query = AuditQuery());

  /// Deletes every audit event, of every account, older than `before`, for retention;
  /// returns how many. Not itself recorded. Throws Error(not_supported) when the store
  /// keeps no audit trail.
  std::uint64_t prune_audit(TimePoint before);

  /// Exceptions thrown by observers since construction: those of this manager's change
  /// events plus validator().observer_failures(). Each was caught, reported to the other
  /// observers as a Component::observer error, and changed nothing else.
  [[nodiscard]] std::uint64_t observer_failures() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Checks a CreateRequest against the rules above and returns it normalised (title
/// trimmed, scopes sorted without duplicates). Throws Error(invalid_argument) naming the
/// rule broken (not the value).
[[nodiscard]] APIKEYS_EXPORT CreateRequest normalize_request(const CreateRequest& request);

}  // namespace apikeys

#endif  // APIKEYS_KEY_MANAGER_HPP
