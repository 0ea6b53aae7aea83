// apikeys::find_keys finds API keys in text (source files, logs, tickets), for secret
// scanning: every string with the branded format and a valid checksum, and every
// string with the legacy "pk_"/"sk_" + 32 base62 shape (which anything random may
// have, so such findings are flagged as legacy).
// Thread-safety: find_keys() is a pure function, safe from any thread.
// Ownership: FoundKey values own their strings and hold no whole secret.
#ifndef APIKEYS_SCAN_HPP
#define APIKEYS_SCAN_HPP

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/export.hpp"

namespace apikeys {

/// One key found in a text.
/// Thread-safety and ownership: a plain value that owns its strings. It never holds a
/// whole secret key: `shown` is a short prefix of one.
struct FoundKey {
  std::size_t offset = 0;  ///< Where the key starts in the text, in bytes.
  std::size_t length = 0;  ///< The key's length in bytes.
  bool secret = false;     ///< True for a secret key ("..._sk_..."), false for a public one.
  /// True for the legacy shape ("pk_"/"sk_" + 32 base62, no checksum): it may be a key
  /// of ours, or any other string that happens to have that shape.
  bool legacy = false;
  std::string brand;  ///< The brand of a branded key; empty for a legacy one.
  /// What may be shown: a public key whole; for a secret, its prefix and the first 4
  /// characters after it, then "...".
  std::string shown;
};

/// Every key in `text`, in order of offset. A branded key is "{brand}_pk_" or
/// "{brand}_sk_" (brand: 2 to 16 of [a-z0-9]), 32 base62 characters and a 6-character
/// CRC-32 checksum that matches (KeyFormat::branded); a legacy key is "pk_" or "sk_" and
/// 32 base62 characters. Either must stand alone: no letter, digit or '_' right before
/// it, and no letter or digit right after it (a '_' may follow). A brand is the whole
/// run of [a-z0-9] before "_pk_"/"_sk_" (in "xacme_sk_..." it is "xacme", so an "acme"
/// key glued to an "x" fails its checksum). Never throws except std::bad_alloc.
[[nodiscard]] APIKEYS_EXPORT std::vector<FoundKey> find_keys(std::string_view text);

}  // namespace apikeys

#endif  // APIKEYS_SCAN_HPP
