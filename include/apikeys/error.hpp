// apikeys::Error is the one exception type thrown by management calls
// (create, list, revoke, remove, store and hasher construction). Callers branch on
// code(), never on what(). No message ever contains a secret or a pepper.
// Thread-safety: immutable after construction; safe to share. Ownership: a value.
#ifndef APIKEYS_ERROR_HPP
#define APIKEYS_ERROR_HPP

#include <stdexcept>
#include <string>

#include "apikeys/export.hpp"

namespace apikeys {

/// Why a management call failed.
enum class ErrorCode {
  invalid_argument,  ///< The request broke a documented rule (title, expiry, format, UUID...).
  not_found,         ///< No such key for this account (another account's key included).
  already_exists,    ///< A unique field (public key, key id) is taken.
  busy,              ///< The store is locked or timed out: the same call may succeed later.
  storage,           ///< The store failed (I/O, corruption, read-only, full disk...).
  crypto,            ///< The cryptographic library failed (CSPRNG, HMAC).
  /// The backend cannot do this: a Store or Cache written against an older version of
  /// its interface, reached through a newer operation whose default body cannot do the
  /// job (see doc/extending.md), or a backend that refuses an operation by design.
  /// Retrying will not help.
  not_supported,
  /// The key is not in the state the call needs: its version is not the expected one
  /// (another change came first), or the change is not allowed from its state (enabling
  /// or disabling a revoked key, rotating one that is disabled, expired or rotated).
  /// Read the key again before deciding whether to retry.
  conflict,
};

/// Returns a stable lower-case name for `code` ("invalid_argument", ...).
APIKEYS_EXPORT const char* to_string(ErrorCode code) noexcept;

/// The exception thrown by management calls. what() is safe to log.
class APIKEYS_EXPORT Error : public std::runtime_error {
 public:
  /// An error of category `code`; `message` must not contain a secret.
  Error(ErrorCode code, const std::string& message);
  ~Error() override;
  /// Copies code and message.
  Error(const Error&) = default;
  /// Copies code and message.
  Error& operator=(const Error&) = default;

  /// The category of the failure; the only thing callers should branch on.
  [[nodiscard]] ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace apikeys

#endif  // APIKEYS_ERROR_HPP
