// Private text helpers: UTF-8 checks and trimming for request validation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "hex.hpp"

namespace apikeys::detail {

/// Number of code points when `s` is valid UTF-8 (no overlongs, no surrogates, no
/// code point above U+10FFFF); nullopt otherwise. Stops early (returning nullopt) once
/// the count would exceed `limit`, so huge inputs cost only what the limit allows.
std::optional<std::size_t> utf8_length(std::string_view s, std::size_t limit) noexcept;

/// True when `s` contains a C0 control character or DEL (other than those in `allowed`)
/// or a C1 control character (U+0080..U+009F, for UTF-8 input).
bool has_control(std::string_view s, std::string_view allowed) noexcept;

/// True for a code point that renders as nothing yet reorders or joins the text around
/// it: bidi marks, embeddings, overrides and isolates; zero-width spaces and joiners;
/// and the other invisible ones (the grapheme joiner, the Mongolian vowel separator,
/// invisible math operators, Hangul fillers). Variation selectors are not: emoji need
/// U+FE0F. Inline: the CLI uses it too, and the shared library exports no detail
/// functions.
constexpr bool is_invisible_format(std::uint32_t cp) noexcept {
  return cp == 0x034F || cp == 0x061C || cp == 0x115F || cp == 0x1160 || cp == 0x180E ||
         (cp >= 0x200B && cp <= 0x200F) || (cp >= 0x202A && cp <= 0x202E) ||
         (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0x3164 ||
         cp == 0xFEFF || cp == 0xFFA0;
}

/// True when `s` contains a bidirectional formatting character (U+061C ARABIC LETTER
/// MARK, U+200E/U+200F LRM/RLM, U+202A-U+202E embeddings and overrides, U+2066-U+2069
/// isolates) or a zero-width one (U+200B-U+200D, U+2060 WORD JOINER, U+FEFF): any
/// is_invisible_format() code point.
/// REQUIRES: `s` is valid UTF-8 (utf8_length accepted it).
bool has_bidi_or_zero_width(std::string_view s) noexcept;

/// True when `s` contains U+2028 LINE SEPARATOR or U+2029 PARAGRAPH SEPARATOR, which
/// break a line where a reader of a log or a trail expects none.
bool has_line_separator(std::string_view s) noexcept;

/// `s` without leading and trailing ASCII white space.
std::string_view trim_ascii(std::string_view s) noexcept;

// The two escapes below, inline: the CLI uses them too, and the shared library exports
// no detail functions.
namespace text_internal {

inline bool kept(unsigned char b, bool backslash) noexcept {
  return b >= 0x20 && b < 0x7F && (b != '\\' || !backslash);
}

inline std::string escaped(std::string_view s, bool backslash) {
  // Sized exactly first: the text may be a secret pasted in the wrong place, and a
  // string that grew would leave a copy of its start in the block it left.
  std::size_t size = 0;
  for (const char c : s) size += kept(static_cast<unsigned char>(c), backslash) ? 1 : 4;
  std::string out;
  out.reserve(size);
  for (const char c : s) {
    const auto b = static_cast<unsigned char>(c);
    if (kept(b, backslash)) {
      out.push_back(c);
      continue;
    }
    char hex[2];
    hex_encode(&b, 1, hex);
    out += "\\x";
    out.append(hex, 2);
  }
  return out;
}

}  // namespace text_internal

/// `s` as an error message or a terminal may show it: printable ASCII as it is, and
/// every other byte, and the backslash, as \xNN (lower-case hex), so the result is one
/// line of printable ASCII that maps back to `s`. A path or name printed raw could
/// carry terminal escape sequences or a newline that forges a line of a log.
inline std::string escape_unprintable(std::string_view s) {
  return text_internal::escaped(s, true);
}

/// escape_unprintable() that keeps the backslash: for a message that may already hold
/// text escaped that way (a file name in SqliteStore's errors), which a second pass
/// would mangle. No byte outside printable ASCII survives it; what it gives up is that
/// "\x1b" typed by a user and an escaped ESC read the same.
inline std::string escape_controls(std::string_view s) { return text_internal::escaped(s, false); }

}  // namespace apikeys::detail
