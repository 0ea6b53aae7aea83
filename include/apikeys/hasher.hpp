// apikeys::Hasher turns secrets into digests; HmacSha256Hasher is the bundled one:
// HMAC-SHA256 keyed by a server-side pepper, with several peppers accepted for
// verification so the pepper can be rotated (new keys use the current one).
// Thread-safety: implementations must be safe to call from many threads at once.
// Ownership: HmacSha256Hasher copies the peppers and wipes its copies when it dies.
#ifndef APIKEYS_HASHER_HPP
#define APIKEYS_HASHER_HPP

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"
#include "apikeys/types.hpp"

namespace apikeys {

/// Interface: keyed digests of secrets. A digest must depend on every byte of the
/// secret and on a server-side key, and be 32 bytes.
class APIKEYS_EXPORT Hasher {
 public:
  Hasher() = default;
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  virtual ~Hasher();

  /// The pepper id that hash() uses.
  [[nodiscard]] virtual std::uint32_t current_pepper_id() const noexcept = 0;
  /// Digest of `secret` under the current pepper. May throw Error(crypto).
  [[nodiscard]] virtual Digest hash(std::string_view secret) const = 0;
  /// Digest of `secret` under pepper `pepper_id`; nullopt when that id is unknown.
  /// May throw Error(crypto).
  [[nodiscard]] virtual std::optional<Digest> hash_with(std::string_view secret,
                                                        std::uint32_t pepper_id) const = 0;
  /// True when `secret` hashes to `stored` under stored.pepper_id; compares in
  /// constant time. Unknown pepper id or any failure: false. The Validator does not
  /// call it (it calls hash_with(), so that a failure answers `error` rather than a
  /// wrong secret); KeyManager uses it for its signed page cursors.
  [[nodiscard]] virtual bool verify(std::string_view secret, const Digest& stored) const noexcept;
  /// Every pepper id this hasher knows, the current one first. The Validator uses it
  /// to do the same work for an unknown public key as for a key under another pepper.
  /// Default: just current_pepper_id().
  [[nodiscard]] virtual std::vector<std::uint32_t> pepper_ids() const;
};

/// The pepper id HmacSha256Hasher gives a legacy pepper, and that
/// KeyManager::import_keys() stores imported digests under by default. A hasher built
/// with a legacy pepper refuses an ordinary Pepper with this id.
inline constexpr std::uint32_t kLegacyPepperId = 0xFFFFFFFFu;

/// One server-side key for the HMAC. `bytes` must be at least 32 bytes of
/// high-entropy data (e.g. 32 random bytes, hex-decoded from configuration).
///
/// The current pepper (the one that makes new digests) must also pass a fixed check
/// that refuses placeholders such as all zeros, "aaaa...", 00 01 00 01..., a block
/// written twice or a short key padded with zeros. Its bytes must have
///   1. at least 8 distinct byte values;
///   2. no byte value in half or more of the bytes;
///   3. no period of at most half their length (no p <= size/2 with
///      bytes[i] == bytes[i + p] for every i), i.e. not a shorter sequence repeated.
/// A pepper drawn from a CSPRNG is refused with a probability below 1e-27 as 32 raw
/// bytes, 1e-25 as 43 base62 or 44 base64 characters, and 2e-19 as 64 hex characters
/// used undecoded. The check cannot tell a secret from a guessable one ("correct horse
/// battery staple..." passes): it catches mistakes, it does not replace a CSPRNG.
/// Retired peppers (any other id) need only the 32 bytes, so digests made under a
/// pepper this check now refuses still verify while keys move to a new current pepper.
struct Pepper {
  std::uint32_t id = 0;    ///< Stored with each digest (Digest::pepper_id).
  std::string_view bytes;  ///< Copied by the hasher; the caller wipes its own copy.
};

/// HMAC-SHA256 with precomputed inner/outer states per pepper, so one digest costs two
/// SHA-256 compressions and no allocation. Thread-safe and immutable once built.
class APIKEYS_EXPORT HmacSha256Hasher final : public Hasher {
 public:
  /// Throws Error(invalid_argument) when `peppers` is empty, a pepper is shorter than
  /// 32 bytes, the current pepper fails the check described at Pepper, two peppers
  /// share an id, or `current_id` is not among them. The message names the pepper id
  /// and the rule, never the bytes.
  HmacSha256Hasher(const std::vector<Pepper>& peppers, std::uint32_t current_id);
  /// As above, plus the pepper of a system this library replaces (the reference Python
  /// service keyed its HMAC with the raw bytes of a configuration string) under id
  /// kLegacyPepperId. It only verifies, never makes new digests, and may be any length
  /// from 1 to 4096 bytes; shorter than 32 is weak (legacy_pepper_is_short()), and the
  /// CLI warns. Throws as above, and Error(invalid_argument) when `legacy_pepper` is
  /// empty or longer than 4096 bytes, or when a pepper in `peppers` uses kLegacyPepperId.
  HmacSha256Hasher(const std::vector<Pepper>& peppers, std::uint32_t current_id,
                   std::string_view legacy_pepper);
  /// Shorthand for one pepper with id 1 (the current one, so the check at Pepper applies).
  explicit HmacSha256Hasher(std::string_view pepper);
  ~HmacSha256Hasher() override;

  [[nodiscard]] std::uint32_t current_pepper_id() const noexcept override;
  [[nodiscard]] Digest hash(std::string_view secret) const override;
  [[nodiscard]] std::optional<Digest> hash_with(std::string_view secret,
                                                std::uint32_t pepper_id) const override;
  [[nodiscard]] bool verify(std::string_view secret, const Digest& stored) const noexcept override;
  [[nodiscard]] std::vector<std::uint32_t> pepper_ids() const override;
  /// True when a legacy pepper was given and is shorter than 32 bytes.
  [[nodiscard]] bool legacy_pepper_is_short() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_HASHER_HPP
