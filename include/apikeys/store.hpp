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

  /// Adds a record atomically: afterwards it is wholly visible or not at all.
  /// Throws Error(already_exists) if the public key or key id is taken.
  virtual void insert(const KeyRecord& record) = 0;

  /// The record whose public key is `public_key`, or nullopt.
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
  /// metadata, scopes, status, expires_at, updated_at and rotated_to to those of `next`
  /// and its version to expected_version + 1, atomically, and records the change for
  /// changes_since(). The other fields of `next` are ignored.
  /// Default: throws Error(not_supported) (update, disable and enable need it).
  virtual WriteResult replace(const Uuid& account_id, const KeyInfo& next,
                              std::uint64_t expected_version);

  /// replace(account_id, old_next, expected_version) and insert(successor) in one
  /// atomic step: both or neither. REQUIRES: successor.info.account_id == account_id
  /// (KeyManager::rotate always passes the same account). Throws Error(already_exists) as insert()
  /// does (and writes nothing). Default: throws Error(not_supported) (rotate needs it).
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
};

}  // namespace apikeys

#endif  // APIKEYS_STORE_HPP
