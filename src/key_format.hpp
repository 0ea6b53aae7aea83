// detail::FormatCheck: KeyFormat's key checks with the work that depends only on the
// format done once (the CRC-32 of each prefix), for the Validator's format step.
// Thread-safety: immutable once built; share it read-only between threads.
// Ownership: a value; it keeps its own copy of the format.
#ifndef APIKEYS_SRC_KEY_FORMAT_HPP
#define APIKEYS_SRC_KEY_FORMAT_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "apikeys/key_generator.hpp"

namespace apikeys::detail {

class FormatCheck {
 public:
  /// REQUIRES: format.check() passes.
  explicit FormatCheck(KeyFormat format);

  [[nodiscard]] const KeyFormat& format() const noexcept { return format_; }
  /// format().public_key_size(): a public key of any other size has another format.
  [[nodiscard]] std::size_t public_size() const noexcept { return public_size_; }

  /// Sets pk_ok to format().is_public_key(pk); returns pk_ok && format().is_secret_key(sk)
  /// (sk is looked at only when pk_ok). Same answers as KeyFormat's, with the prefixes'
  /// CRC-32s precomputed; a key whose prefix and size are right is read in full, so the
  /// time does not depend on where in it a character or the checksum is wrong.
  bool check_pair(std::string_view pk, std::string_view sk, bool& pk_ok) const noexcept;

 private:
  // A prefix of at most 16 characters, zero-padded to 16, and the mask of its bytes:
  // compared with one 16-byte load of a key whose size is right.
  struct Head {
    std::array<char, 16> bytes{};
    int mask = 0;  // bit i set for i >= prefix size: bytes that need not match
    bool usable = false;
  };
  // True when `key` is `size` characters and starts with `prefix` (`head`).
  bool shape(std::string_view key, std::string_view prefix, std::size_t size,
             const Head& head) const noexcept;

  KeyFormat format_;
  std::size_t public_size_ = 0;
  std::uint32_t public_crc_ = 0;  // CRC-32 of format_.public_prefix
  std::uint32_t secret_crc_ = 0;  // CRC-32 of format_.secret_prefix
  Head public_head_;
  Head secret_head_;
};

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_KEY_FORMAT_HPP
