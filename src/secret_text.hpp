// Private: whether a text holds a secret key, the one rule for every place that refuses
// to keep or show one (the CLI's titles, descriptions, metadata, actor ids and scanned
// file names; import_keys()'s rows), and JSON text decoded for that check.
// Thread-safety and ownership: a pure function over the caller's text.
#ifndef APIKEYS_SRC_SECRET_TEXT_HPP
#define APIKEYS_SRC_SECRET_TEXT_HPP

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>

#include "hex.hpp"

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

// Appends JSON text `text` to `out` with its string escapes decoded as far as a search
// for a secret key or the pepper needs: \" \\ \/ as themselves, \b \f \n \r \t as the
// control characters they stand for (their letters are base62 and would extend a run),
// a \u escape of an ASCII character as that character, and any other \u escape (or a
// malformed one) as \x01, which breaks a run. What it appends is never longer than
// `text`: a caller that reserved that much first, and wipes `out` after, leaves no
// unwiped copy behind.
inline void decode_json_escapes(std::string_view text, std::string& out) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\' || i + 1 == text.size()) {
      out.push_back(text[i]);
      continue;
    }
    const char e = text[++i];
    if (e != 'u') {
      switch (e) {
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        default: out.push_back(e); break;
      }
      continue;
    }
    int value = 0;
    std::size_t digits = 0;
    while (digits < 4 && i + 1 < text.size() && hex_value(text[i + 1]) >= 0) {
      value = value * 16 + hex_value(text[++i]);
      ++digits;
    }
    out.push_back(digits == 4 && value < 0x80 ? static_cast<char>(value) : '\x01');
  }
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_SECRET_TEXT_HPP
