// apikeys::KeyManager is the key lifecycle: create, list, revoke, remove, and
// validation through its Validator. Request rules are checked here, before the store.
// Thread-safety: every method is safe from many threads at once.
// Ownership: shares ownership of its store, hasher, generator, cache and clock.
#ifndef APIKEYS_KEY_MANAGER_HPP
#define APIKEYS_KEY_MANAGER_HPP

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"
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
  /// Trimmed of ASCII white space; then 1 to 255 Unicode code points of valid UTF-8,
  /// with no control characters and none of the invisible characters above.
  std::string title;
  /// Optional (empty: none). Valid UTF-8, at most kMaxDescriptionCodePoints code
  /// points, no control characters other than tab, line feed and carriage return, and
  /// none of the invisible characters above.
  std::string description;
  /// Optional lifetime in days, 1 to 365. nullopt: never expires.
  std::optional<int> expires_in_days;
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

/// The key lifecycle (create, list, revoke, remove) over a Store, with validation
/// through its own Validator. Safe from many threads at once.
class APIKEYS_EXPORT KeyManager {
 public:
  static constexpr std::size_t kMaxTitleCodePoints = 255;         ///< Longest title.
  static constexpr std::size_t kMaxDescriptionCodePoints = 1024;  ///< Longest description.
  static constexpr int kMaxExpiryDays = 365;                      ///< Longest lifetime.

  /// Throws Error(invalid_argument) if store or hasher is null or the format is bad.
  KeyManager(std::shared_ptr<Store> store, std::shared_ptr<Hasher> hasher,
             KeyManagerOptions options = {});
  ~KeyManager();
  KeyManager(const KeyManager&) = delete;
  KeyManager& operator=(const KeyManager&) = delete;

  /// Creates a key for `account_id`. Throws Error(invalid_argument) for a bad request
  /// (nothing is written), Error(busy/storage/crypto) for failures below.
  [[nodiscard]] CreatedKey create(const Uuid& account_id, const CreateRequest& request);

  /// The account's keys, newest first, without secrets or digests.
  [[nodiscard]] std::vector<KeyInfo> list(const Uuid& account_id);

  /// Revokes the key. When it returns, no validate() in this process accepts the key:
  /// not this manager's, nor that of any other Validator whose store has the same
  /// Store::identity() (the same store object, or another SqliteStore on the same
  /// file), whatever cache it has. Other processes: see revision_poll_interval.
  /// Throws whatever a cache's erase throws (Error(busy) from an unreachable Redis),
  /// after the store change has committed and every other cache was erased; retrying
  /// is safe.
  /// Throws Error(not_found) when the account has no such key (another account's key
  /// included). Revoking a revoked key succeeds.
  KeyInfo revoke(const Uuid& account_id, const Uuid& key_id);

  /// Deletes the key; same guarantees and errors as revoke().
  KeyInfo remove(const Uuid& account_id, const Uuid& key_id);

  /// Shorthands for validator().validate(...).
  [[nodiscard]] ValidationResult validate(std::string_view public_key,
                                          std::string_view secret_key) const noexcept;
  /// Shorthand for validator().validate(token), token being "pk_...:sk_...".
  [[nodiscard]] ValidationResult validate(std::string_view token) const noexcept;

  /// The Validator this manager validates with and invalidates on revoke and remove.
  [[nodiscard]] Validator& validator() noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Checks a CreateRequest against the rules above and returns it normalised (title
/// trimmed). Throws Error(invalid_argument) naming the rule broken (not the value).
[[nodiscard]] APIKEYS_EXPORT CreateRequest normalize_request(const CreateRequest& request);

}  // namespace apikeys

#endif  // APIKEYS_KEY_MANAGER_HPP
