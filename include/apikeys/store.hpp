// apikeys::Store is where key records live. Bundled: MemoryStore, SqliteStore;
// users plug in their own by implementing this interface.
// Thread-safety: every method may be called from many threads at once; an
// implementation must make that safe. Ownership: components hold stores through
// std::shared_ptr; records are returned by value.
#ifndef APIKEYS_STORE_HPP
#define APIKEYS_STORE_HPP

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
  /// The public keys revoked or deleted after the given revision, up to `revision`,
  /// oldest first; a key changed twice may appear twice.
  std::vector<std::string> public_keys;
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

  /// Sets the status of key `key_id` if and only if it belongs to `account_id`.
  /// Returns the key as it now is, or nullopt when that account has no such key.
  virtual std::optional<KeyInfo> set_status(const Uuid& account_id, const Uuid& key_id,
                                            KeyStatus status) = 0;

  /// Deletes key `key_id` if and only if it belongs to `account_id`. Returns the key
  /// as it was, or nullopt when that account has no such key.
  virtual std::optional<KeyInfo> remove(const Uuid& account_id, const Uuid& key_id) = 0;

  /// Records last use for each entry, keeping the later of the stored and given
  /// times. Unknown key ids are ignored. Called from a background thread in batches.
  virtual void record_last_use(const std::vector<LastUse>& uses) = 0;

  /// A number that changes whenever any writer, in this process or another, revokes or
  /// deletes a key. Validators poll it to drop cached verdicts that may be stale.
  /// Default: 0 forever, for stores that nothing outside this process can change.
  [[nodiscard]] virtual std::uint64_t revision() { return 0; }

  /// The public keys revoked or deleted after revision `since`, with the revision they
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
