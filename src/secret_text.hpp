// Private: whether a text holds a secret key, the one rule for every place that refuses
// to keep or show one (the CLI's titles, descriptions, actor ids and scanned file names;
// import_keys()'s titles and descriptions).
// Thread-safety and ownership: a pure function over the caller's text.
#ifndef APIKEYS_SRC_SECRET_TEXT_HPP
#define APIKEYS_SRC_SECRET_TEXT_HPP

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace apikeys::detail {

// True when `text` holds a secret key: "sk_" and 32 base62 characters anywhere, glued
// to other text too. Every secret find_keys() finds has that in it (a legacy one is it;
// a branded one is "{brand}_sk_", 32 base62 characters and its checksum). Inline: the
// CLI uses it too, and the shared library exports no detail functions.
inline bool holds_secret_key(std::string_view text) noexcept {
  constexpr std::string_view kPrefix = "sk_";
  constexpr std::size_t kBody = 32;
  const auto base62 = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  };
  for (std::size_t at = text.find(kPrefix); at != std::string_view::npos;
       at = text.find(kPrefix, at + 1)) {
    const std::string_view body = text.substr(at + kPrefix.size(), kBody);
    if (body.size() == kBody && std::all_of(body.begin(), body.end(), base62)) return true;
  }
  return false;
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_SECRET_TEXT_HPP
