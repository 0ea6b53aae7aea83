// apikeys::KeyFormat describes what keys look like; apikeys::KeyGenerator makes new
// public/secret pairs; CsprngKeyGenerator is the bundled one (OpenSSL RAND_bytes,
// base62 by rejection sampling, so every character is equally likely).
// Thread-safety: KeyFormat is a value; CsprngKeyGenerator is safe from any thread.
// Ownership: generate() returns values the caller owns; the secret wipes itself.
#ifndef APIKEYS_KEY_GENERATOR_HPP
#define APIKEYS_KEY_GENERATOR_HPP

#include <cstddef>
#include <string>
#include <string_view>

#include "apikeys/export.hpp"
#include "apikeys/types.hpp"

namespace apikeys {

/// The shape of keys: prefix + `length` base62 characters ([0-9A-Za-z]).
struct APIKEYS_EXPORT KeyFormat {
  std::string public_prefix = "pk_";  ///< Default "pk_"; e.g. "pk_live_".
  std::string secret_prefix = "sk_";  ///< Default "sk_"; e.g. "sk_live_".
  std::size_t length = 32;            ///< Default 32 (190 bits); 22 (128 bits) to 128.

  /// Throws Error(invalid_argument) unless: prefixes are 1-32 characters of
  /// [A-Za-z0-9_], differ from each other, and 22 <= length <= 128.
  void check() const;
  /// True when `key` is public_prefix followed by exactly `length` base62 characters.
  [[nodiscard]] bool is_public_key(std::string_view key) const noexcept;
  /// True when `key` is secret_prefix followed by exactly `length` base62 characters.
  [[nodiscard]] bool is_secret_key(std::string_view key) const noexcept;
};

/// A freshly generated pair. The secret is shown to the user once, then dropped.
struct KeyPair {
  std::string public_key;   ///< "pk_..."
  SecretString secret_key;  ///< "sk_..."
};

/// Interface: makes key pairs. Implementations must use a CSPRNG and produce keys that
/// `format.is_public_key` / `format.is_secret_key` accept; they may throw Error(crypto).
class APIKEYS_EXPORT KeyGenerator {
 public:
  KeyGenerator() = default;
  KeyGenerator(const KeyGenerator&) = delete;
  KeyGenerator& operator=(const KeyGenerator&) = delete;
  virtual ~KeyGenerator();

  /// REQUIRES: format.check() passes. Safe to call from several threads at once.
  [[nodiscard]] virtual KeyPair generate(const KeyFormat& format) = 0;
};

/// The bundled generator: OpenSSL RAND_bytes, base62 by rejection sampling.
/// Thread-safe; stateless.
class APIKEYS_EXPORT CsprngKeyGenerator final : public KeyGenerator {
 public:
  CsprngKeyGenerator() = default;
  ~CsprngKeyGenerator() override;
  [[nodiscard]] KeyPair generate(const KeyFormat& format) override;
};

/// Appends `count` uniformly random base62 characters from the CSPRNG to `out`.
/// Throws Error(crypto) if the CSPRNG fails.
APIKEYS_EXPORT void append_random_base62(std::string& out, std::size_t count);

}  // namespace apikeys

#endif  // APIKEYS_KEY_GENERATOR_HPP
