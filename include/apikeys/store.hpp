// apikeys::Store is where key records live. Bundled: MemoryStore, SqliteStore;
// users plug in their own by implementing this interface.
// Thread-safety: every method may be called from many threads at once; an
// implementation must make that safe. Ownership: components hold stores through
// std::shared_ptr; records are returned by value.
#ifndef APIKEYS_STORE_HPP
#define APIKEYS_STORE_HPP

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/types.hpp"

namespace apikeys {

/// One throttled "this key was used at" update.
struct LastUse {
  Uuid key_id;     ///< The key that was used.
  TimePoint at{};  ///< When it was used.
};

/// What changed in a store after some revision: see Store::changes_since().
struct StoreChanges {
  /// The revision the list runs up to (the store's revision when it was read).
  std::uint64_t revision = 0;
  /// The public keys changed or deleted after the given revision, up to `revision`,
  /// oldest first; a key changed twice may appear twice.
  std::vector<std::string> public_keys;
};

/// Where a page of keys starts: just after the key with this creation time and id, in
/// the order of Store::list_page (created_at descending, then key_id descending).
struct PagePosition {
  TimePoint created_at{};  ///< The last listed key's created_at.
  Uuid key_id;             ///< The last listed key's id.
};

/// How a conditional write ended; see Store::replace() and Store::rotate().
enum class WriteOutcome : std::uint8_t {
  applied,    ///< Written; WriteResult::key is the key as it now is.
  not_found,  ///< The account has no such key; nothing was written.
  conflict,   ///< The stored version was not the expected one; nothing was written, and
              ///< WriteResult::key is the key as it is.
};

/// What a conditional write did.
struct WriteResult {
  WriteOutcome outcome = WriteOutcome::not_found;  ///< See WriteOutcome.
  KeyInfo key;  ///< applied: the key as it now is; conflict: as it is; else empty.
};

/// One digest rewrite: see Store::replace_digests().
struct DigestChange {
  Uuid key_id;  ///< The key whose digest changes.
  Digest from;  ///< The digest it must still have (bytes and pepper id).
  Digest to;    ///< The digest it gets.
};

/// How many keys hold a digest made under one pepper: see Store::pepper_counts().
struct PepperCount {
  std::uint32_t pepper_id = 0;  ///< The pepper.
  std::uint64_t keys = 0;       ///< Keys whose digest it made, of every status.
};

/// What Store::take_credits() did.
struct CreditTake {
  /// How it ended.
  enum class Outcome : std::uint8_t {
    taken,         ///< `taken` credits were subtracted from the balance.
    insufficient,  ///< The balance was below the minimum asked; nothing was taken.
    no_credits,    ///< The lineage has no credits (or no longer exists).
  };
  Outcome outcome = Outcome::no_credits;  ///< See Outcome.
  std::uint64_t taken = 0;                ///< Credits taken: from the minimum to the maximum.
  std::uint64_t remaining = 0;            ///< The balance after (taken) or as it is.
  /// The refill period the balance belongs to (Credits::refilled_period): what
  /// return_credits() must be given.
  std::int64_t period = 0;
  /// When the next refill is due: credits taken must not be spent after it (a reset
  /// refill would count them twice). TimePoint::max() without a refill.
  TimePoint period_end = TimePoint::max();
  /// When `taken`: which setting of the balance the credits were taken from. A store
  /// that keeps one (checks_credit_generations()) gives the balance a new generation
  /// whenever change_credits() sets it (CreditsOp::configure), so that credits given
  /// back afterwards (return_credits_checked()) never land on the balance that replaced
  /// it. 0 from a store that keeps none (a store written before this field existed).
  std::uint64_t generation = 0;
};

/// How Store::change_credits() changes a lineage's credits.
enum class CreditsOp : std::uint8_t {
  /// The balance becomes `remaining` when given (else it is kept, refills due applied),
  /// and the refill becomes `refill` when change_refill is set (else it is kept).
  /// Creates the credits when the lineage has none (`remaining` is then required).
  configure,
  add,     ///< `delta` is added to the balance after refills due, clamped to 0..kMaxCredits.
  remove,  ///< The lineage has no credits any more.
};

/// One change of a lineage's credits: see Store::change_credits().
/// Thread-safety and ownership: a plain value.
struct CreditsChange {
  CreditsOp op = CreditsOp::configure;     ///< What to do.
  std::optional<std::uint64_t> remaining;  ///< configure: the new balance, if it changes.
  std::int64_t delta = 0;                  ///< add: the change, either sign.
  bool change_refill = false;              ///< configure: replace the refill with `refill`.
  std::optional<CreditRefill> refill;      ///< configure: the new refill (nullopt: none).
  TimePoint at{};                          ///< Now, for refills due and refill periods.
};

/// Where a page of audit events starts: just after the event with this time and id, in
/// the order of Store::audit_events() (time descending, then event_id descending).
/// Thread-safety and ownership: a plain value.
struct AuditPosition {
  TimePoint time{};  ///< The last listed event's time.
  Uuid event_id;     ///< The last listed event's id.
};

/// Which of an account's audit events Store::audit_events() reads.
/// Thread-safety and ownership: a plain value.
struct AuditRange {
  std::optional<Uuid> key_id;          ///< Only this key's events, when set.
  std::optional<TimePoint> since;      ///< Only events at or after this time, when set.
  std::optional<AuditPosition> after;  ///< Start just after this event (nullopt: newest).
  std::size_t limit = 100;             ///< At most this many events (at least 1).
};

/// Interface: builds the audit events of one change, for a store that keeps an audit
/// trail to write in the same transaction as the change (Store::keeps_audit()).
/// KeyManager passes one to each of Store's `*_audited` writes.
///
/// Thread-safety: used by the one call it is passed to, on that call's thread.
/// Ownership: borrowed for the duration of that call; the events it returns are the
/// store's.
class APIKEYS_EXPORT ChangeAudit {
 public:
  ChangeAudit() = default;
  ChangeAudit(const ChangeAudit&) = delete;
  ChangeAudit& operator=(const ChangeAudit&) = delete;
  virtual ~ChangeAudit();

  /// The event recording that one key went from `before` to `after`, as the store is
  /// about to commit it: `before` is nullptr for a key the change creates, `after` is
  /// nullptr for a key it deletes. Each KeyInfo carries its lineage's credits as stored
  /// (refills due need not be applied). nullopt when the change touched nothing worth
  /// recording. A store calls it once per key its change writes, after it knows both
  /// states and before it commits, and writes what it returns in the same transaction;
  /// a store that retries a transaction calls it again for the retry. May throw (no
  /// memory, a failing CSPRNG): the store then commits nothing.
  [[nodiscard]] virtual std::optional<AuditEvent> event(const KeyInfo* before,
                                                        const KeyInfo* after) const = 0;
};

/// Interface: persistent (or not) storage of key records.
///
/// Errors: implementations report failures by throwing. Throw apikeys::Error with
/// already_exists for a duplicate, busy for a lock or timeout, storage for anything
/// else; the Validator turns any exception (of any type) into `error`, never `valid`.
/// "Not found" is never an exception: it is an empty optional, an empty vector or false.
class APIKEYS_EXPORT Store {
 public:
  Store() = default;
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  virtual ~Store();

  /// Adds a record atomically: afterwards it is wholly visible or not at all. A store
  /// keeps every field of KeyInfo; one written before lineage_id, rate_limits and
  /// credits existed does not, and KeyManager then refuses keys that use them with
  /// Error(not_supported) (it reads the key back). When record.info.credits is set and
  /// the key starts its lineage (lineage() == key_id), the lineage's credits are created
  /// in the same atomic step; a key of an existing lineage never creates them.
  /// Throws Error(already_exists) if the public key or key id is taken.
  virtual void insert(const KeyRecord& record) = 0;

  /// The record whose public key is `public_key`, byte for byte, or nullopt: a store
  /// must not match loosely (a case-insensitive collation). The Validator treats a
  /// record whose info.public_key is set and differs from the key it asked for as a
  /// miss, since a second spelling of one key would otherwise be cached as a key of its
  /// own, which revoking the key does not erase. Its info.credits is set
  /// when the key's lineage has credits (refills need not be applied: the Validator only
  /// asks whether there are credits).
  [[nodiscard]] virtual std::optional<KeyRecord> find(std::string_view public_key) = 0;

  /// The account's keys, newest first (created_at descending, then most recently
  /// inserted first). Empty when the account has none.
  [[nodiscard]] virtual std::vector<KeyInfo> list(const Uuid& account_id) = 0;

  /// Sets the status of key `key_id` if and only if it belongs to `account_id` (the
  /// bundled stores also add 1 to its version when the status changes). Returns the key
  /// as it now is, or nullopt when that account has no such key. KeyManager uses it
  /// only for stores whose replace() is not supported.
  virtual std::optional<KeyInfo> set_status(const Uuid& account_id, const Uuid& key_id,
                                            KeyStatus status) = 0;

  /// Deletes key `key_id` if and only if it belongs to `account_id`. Returns the key
  /// as it was, or nullopt when that account has no such key.
  virtual std::optional<KeyInfo> remove(const Uuid& account_id, const Uuid& key_id) = 0;

  /// The key `key_id` if it belongs to `account_id`, else nullopt.
  /// Default: searches list(account_id).
  [[nodiscard]] virtual std::optional<KeyInfo> get(const Uuid& account_id, const Uuid& key_id);

  /// Up to `limit` of the account's keys in the order (created_at descending, key_id
  /// descending), starting just after `after` (from the first when nullopt), and only
  /// those with status `status` when given. Keys inserted meanwhile never make a page
  /// skip or repeat a key that was there before: the position is a value, not an offset.
  /// Default: sorts and filters list(account_id).
  [[nodiscard]] virtual std::vector<KeyInfo> list_page(const Uuid& account_id,
                                                       const std::optional<PagePosition>& after,
                                                       std::size_t limit,
                                                       std::optional<KeyStatus> status);

  /// Compare-and-set of one key's changeable fields. If key `next.key_id` belongs to
  /// `account_id` and its version is `expected_version`, sets its title, description,
  /// metadata, scopes, rate_limits, status, expires_at, updated_at and rotated_to to those of
  /// `next` and its version to expected_version + 1, atomically, and records the change for
  /// changes_since(). The other fields of `next` are ignored.
  /// Default: throws Error(not_supported) (update, disable and enable need it).
  virtual WriteResult replace(const Uuid& account_id, const KeyInfo& next,
                              std::uint64_t expected_version);

  /// replace(account_id, old_next, expected_version) and insert(successor) in one
  /// atomic step: both or neither. REQUIRES: successor.info.account_id == account_id
  /// (KeyManager::rotate always passes the same account). The successor has the old
  /// key's lineage_id: it shares the lineage's credits, which are not created again.
  /// Throws Error(already_exists) as insert() does (and writes nothing).
  /// Default: throws Error(not_supported) (rotate needs it).
  virtual WriteResult rotate(const Uuid& account_id, const KeyInfo& old_next,
                             std::uint64_t expected_version, const KeyRecord& successor);

  /// Revokes every key of the account that is not revoked yet, setting updated_at to
  /// `at` and adding 1 to each one's version, and records the changes. Returns those
  /// keys as they now are. Bundled stores do it in one transaction.
  /// Default: set_status() on each key list() returns: not atomic (a failure part way
  /// leaves some keys revoked; calling it again finishes the job).
  virtual std::vector<KeyInfo> revoke_all(const Uuid& account_id, TimePoint at);

  /// Records last use for each entry, keeping the later of the stored and given
  /// times. Unknown key ids are ignored. Called from a background thread in batches.
  virtual void record_last_use(const std::vector<LastUse>& uses) = 0;

  /// For each change whose key still has exactly the digest `from` (bytes and pepper
  /// id), sets its digest to `to`; changes whose key is gone or has another digest are
  /// skipped. Touches nothing else: not the version, the status or the revision (the
  /// key's verdict does not change). Returns how many digests it rewrote. Called from a
  /// background thread in batches (ValidatorOptions::rehash_on_use).
  /// Default: throws Error(not_supported); keys then keep verifying under the old pepper.
  virtual std::size_t replace_digests(const std::vector<DigestChange>& changes);

  /// How many keys hold a digest under each pepper id, ascending by id; ids no key uses
  /// are left out. An operator drops an old pepper when its count reaches 0.
  /// Default: throws Error(not_supported).
  [[nodiscard]] virtual std::vector<PepperCount> pepper_counts();

  /// Takes between `min` and `max` credits (as many as the balance allows) from the
  /// lineage's balance, after applying the refills due at `now` (refilled()), in one
  /// atomic step; or takes none when the balance is below `min`. take_credits(l, c, c,
  /// now) charges a request of cost c; a larger max takes a lease. Concurrent callers,
  /// in any process, never take more than the balance between them. Refills are
  /// written at most once per period, whoever applies them.
  /// Default: throws Error(not_supported); keys with credits then fail admission.
  virtual CreditTake take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                  TimePoint now);

  /// Adds `n` credits back to the lineage's balance (a lease's unspent rest), if its
  /// balance still belongs to refill period `period` (a refill since then has replaced
  /// or topped it up; the credits expired with their period). Never beyond kMaxCredits.
  /// Default: throws Error(not_supported).
  virtual void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period);

  /// return_credits(), only onto the balance the credits were taken from: nothing when
  /// the lineage's balance has been set since (its generation is no longer `generation`,
  /// CreditTake::generation). Every bundled limiter gives credits back through this.
  /// Default: return_credits(lineage_id, n, period), which cannot tell a balance set
  /// since the take from the one it replaced (SECURITY.md, Known limits).
  virtual void return_credits_checked(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                                      std::uint64_t generation);

  /// True when this store keeps a generation per balance and return_credits_checked()
  /// checks it. A limiter trusts CreditTake::generation only then, and otherwise gives
  /// credits back with return_credits(): a store that wraps another and forwards
  /// take_credits() and return_credits() alone passes the inner store's generations on
  /// without their check. A store that forwards return_credits_checked() forwards this
  /// too. Default: false.
  [[nodiscard]] virtual bool checks_credit_generations() const noexcept;

  /// Changes the credits of the lineage of key `key_id`, if that key belongs to
  /// `account_id`; see CreditsOp. Records the change for changes_since() of every key of
  /// the lineage when it creates or removes credits (the keys' verdicts change).
  /// Returns the key as it now is, or nullopt when the account has no such key. Throws
  /// Error(conflict) for `add`, or a `configure` without `remaining`, on a lineage without
  /// credits. A `configure` that sets the balance also marks it as belonging to the
  /// current refill period, so a refill due is not applied over it.
  /// Default: throws Error(not_supported).
  virtual std::optional<KeyInfo> change_credits(const Uuid& account_id, const Uuid& key_id,
                                                const CreditsChange& change);

  /// \name The audit trail
  /// A store that keeps an audit trail writes the events a ChangeAudit builds in the
  /// same transaction as the change: an event never exists without its change, and a
  /// change that fails leaves no event. Each `*_audited` write does what the write of
  /// the same name does, and calls `audit.event(before, after)` for each key it writes.
  /// Their defaults call that write and never `audit`: a store written before the audit
  /// trail existed keeps working, and its changes go to observers only.
  /// @{

  /// True when this store writes audit events with its changes and can read them back
  /// (audit_events(), prune_audit()). Default: false.
  [[nodiscard]] virtual bool keeps_audit() const noexcept { return false; }

  /// insert(), and the key's event (before nullptr). Default: insert(record).
  virtual void insert_audited(const KeyRecord& record, const ChangeAudit& audit);

  /// replace(), and when applied the key's event. Default: replace().
  virtual WriteResult replace_audited(const Uuid& account_id, const KeyInfo& next,
                                      std::uint64_t expected_version, const ChangeAudit& audit);

  /// rotate(), and when applied the old key's event, then the successor's (before
  /// nullptr). Default: rotate().
  virtual WriteResult rotate_audited(const Uuid& account_id, const KeyInfo& old_next,
                                     std::uint64_t expected_version, const KeyRecord& successor,
                                     const ChangeAudit& audit);

  /// remove(), and when a key was deleted its event (after nullptr). Default: remove().
  virtual std::optional<KeyInfo> remove_audited(const Uuid& account_id, const Uuid& key_id,
                                                const ChangeAudit& audit);

  /// revoke_all(), and one event per key it revokes. Default: revoke_all().
  virtual std::vector<KeyInfo> revoke_all_audited(const Uuid& account_id, TimePoint at,
                                                  const ChangeAudit& audit);

  /// change_credits(), and when the key exists the event of key `key_id` (its before
  /// and after differ in credits only). Default: change_credits().
  virtual std::optional<KeyInfo> change_credits_audited(const Uuid& account_id, const Uuid& key_id,
                                                        const CreditsChange& change,
                                                        const ChangeAudit& audit);

  /// replace_digests(), and for each digest it rewrites, that key's event: `before` and
  /// `after` both point at the key as it is (a KeyInfo holds no digest; the ChangeAudit
  /// knows the pepper ids from `changes`). Default: replace_digests().
  virtual std::size_t replace_digests_audited(const std::vector<DigestChange>& changes,
                                              const ChangeAudit& audit);

  /// take_credits(), and when it writes a refill (the balance of a new refill period),
  /// the event of the lineage's newest key (latest created_at, then greatest key_id in
  /// Uuid order; none when the lineage
  /// has no key left): `before` holds that key with its credits as they were stored,
  /// `after` the same key with the credits as the refill leaves them, before the take.
  /// Default: take_credits().
  virtual CreditTake take_credits_audited(const Uuid& lineage_id, std::uint64_t min,
                                          std::uint64_t max, TimePoint now,
                                          const ChangeAudit& audit);

  /// Up to range.limit of the account's audit events, newest first (time descending,
  /// then event_id descending), filtered and started as `range` says. Events are
  /// returned as they were written.
  /// Default: throws Error(not_supported).
  [[nodiscard]] virtual std::vector<AuditEvent> audit_events(const Uuid& account_id,
                                                             const AuditRange& range);

  /// Deletes every audit event (of every account) older than `before`; returns how
  /// many. A store may delete in batches, each its own transaction (SqliteStore and
  /// PostgresStore do, oldest first): when one fails, the batches before it stay
  /// deleted, and a second call deletes the rest. Events written while it runs are
  /// deleted and counted too when they are dated before `before`; and of two prunes
  /// run at once, one may return while the other is still deleting what they share.
  /// Default: throws Error(not_supported).
  virtual std::uint64_t prune_audit(TimePoint before);
  /// @}

  /// A number that changes whenever any writer, in this process or another, changes or
  /// deletes a key (revoke, delete, replace, rotate, revoke_all; not last use). Validators poll it
  /// to drop cached verdicts that may be stale. Default: 0 forever, for stores that nothing outside
  /// this process can change.
  [[nodiscard]] virtual std::uint64_t revision() { return 0; }

  /// The public keys changed or deleted after revision `since`, with the revision they
  /// run up to, read in one consistent snapshot. A Validator calls it when revision()
  /// moved, to drop only those keys' cached verdicts. nullopt when the store cannot
  /// tell (it keeps no change log, or `since` is older than the log reaches, or newer
  /// than the store): the Validator then drops every cached verdict.
  /// Default: nullopt.
  [[nodiscard]] virtual std::optional<StoreChanges> changes_since(std::uint64_t since) {
    (void)since;
    return std::nullopt;
  }

  /// What data this object stands for, within this process. KeyManager::revoke() and
  /// remove() erase the key from the cache of every Validator whose store has the same
  /// identity before they return. Two objects over the same data (two SqliteStore
  /// objects on one file) should return the same pointer; it must stay the same, and
  /// stay unique to that data, for as long as this object lives. Default: `this`.
  [[nodiscard]] virtual const void* identity() const noexcept { return this; }

  /// What Validator reads on a cache miss: find(), except that only the fields a
  /// verdict is made of need be filled: the digest, and info's key_id, account_id,
  /// public_key, status, expires_at, metadata, scopes, lineage_id, rate_limits and
  /// whether there are credits. The others (title, description, created_at, updated_at,
  /// last_used_at, version, rotated_from, rotated_to) may be left as a default KeyInfo
  /// has them, so a store can read less; a bundled store then does not check them
  /// either (a row damaged only there still validates, where find() fails). The timing
  /// rule is find()'s: a miss costs what a hit costs. Default: find().
  [[nodiscard]] virtual std::optional<KeyRecord> find_for_validation(std::string_view public_key);
};

}  // namespace apikeys

#endif  // APIKEYS_STORE_HPP
