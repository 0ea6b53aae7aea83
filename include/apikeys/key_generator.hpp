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

/// The shape of keys: prefix + `length` base62 characters ([0-9A-Za-z]), then, when
/// `checksum` is set, kChecksumLength more base62 characters that encode the CRC-32
/// (IEEE 802.3, as zlib computes it) of everything before them, prefix included, as a
/// fixed-width big-endian base62 number. A checksum lets a scanner find leaked keys
/// with almost no false positives, and lets validate() refuse a mistyped or invented
/// key before any HMAC, cache or store work. KeyFormat::branded() makes such a format.
/// Thread-safety and ownership: a plain value; share it read-only between threads.
struct APIKEYS_EXPORT KeyFormat {
  /// Base62 characters of checksum after the random part of a checksummed key.
  static constexpr std::size_t kChecksumLength = 6;
  /// Shortest and longest brand accepted by branded().
  static constexpr std::size_t kMinBrand = 2;
  static constexpr std::size_t kMaxBrand = 16;  ///< Longest brand.
  /// Longest prefix check() accepts.
  static constexpr std::size_t kMaxPrefix = 32;
  /// Fewest and most random characters check() accepts (131 and 762 bits).
  static constexpr std::size_t kMinLength = 22;
  static constexpr std::size_t kMaxLength = 128;  ///< Most random characters.
  /// The longest key, public or secret, of any format check() accepts.
  static constexpr std::size_t kMaxKeySize = kMaxPrefix + kMaxLength + kChecksumLength;

  std::string public_prefix = "pk_";  ///< Default "pk_"; e.g. "pk_live_".
  std::string secret_prefix = "sk_";  ///< Default "sk_"; e.g. "sk_live_".
  std::size_t length = 32;            ///< Default 32 (190 bits); 22 (128 bits) to 128.
  bool checksum = false;              ///< Default false: no checksum characters.

  /// The branded, checksummed format: "{brand}_pk_" and "{brand}_sk_", 32 random base62
  /// characters, then the 6-character checksum. `brand` is 2 to 16 characters of
  /// [a-z0-9]. Throws Error(invalid_argument) otherwise (the message does not repeat it).
  [[nodiscard]] static KeyFormat branded(std::string_view brand);

  /// Throws Error(invalid_argument) unless: prefixes are 1-32 characters of
  /// [A-Za-z0-9_], differ from each other, and 22 <= length <= 128.
  void check() const;
  /// True when `key` is public_prefix followed by exactly `length` base62 characters
  /// and, with `checksum`, a checksum that matches.
  [[nodiscard]] bool is_public_key(std::string_view key) const noexcept;
  /// True when `key` is secret_prefix followed by exactly `length` base62 characters
  /// and, with `checksum`, a checksum that matches.
  [[nodiscard]] bool is_secret_key(std::string_view key) const noexcept;
  /// Characters in a whole public key of this format (prefix, random part, checksum).
  [[nodiscard]] std::size_t public_key_size() const noexcept {
    return public_prefix.size() + length + (checksum ? kChecksumLength : 0);
  }
};

/// Appends to `key` (a prefix and random part) the kChecksumLength base62 characters
/// of its CRC-32, as KeyFormat describes. For KeyGenerator implementations. When `key`
/// must grow, its old buffer is wiped before it is freed (it may hold a secret).
APIKEYS_EXPORT void append_key_checksum(std::string& key);

/// A freshly generated pair. The secret is shown to the user once, then dropped.
struct KeyPair {
  std::string public_key;   ///< "pk_..."
  SecretString secret_key;  ///< "sk_..."
};

/// Interface: makes key pairs. Implementations must use a CSPRNG and produce keys that
/// `format.is_public_key` / `format.is_secret_key` accept (with format.checksum, end
/// each with append_key_checksum()); they may throw Error(crypto). KeyManager refuses,
/// with Error(crypto), a pair that its format does not accept.
/// Thread-safety: generate() may be called from several threads at once.
/// Ownership: the caller owns the returned pair.
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

/// Appends `count` uniformly random base62 characters from the CSPRNG to `out`. When
/// `out` must grow, its old buffer is wiped before it is freed (it may hold a secret).
/// Throws Error(crypto) if the CSPRNG fails.
APIKEYS_EXPORT void append_random_base62(std::string& out, std::size_t count);

}  // namespace apikeys

#endif  // APIKEYS_KEY_GENERATOR_HPP
