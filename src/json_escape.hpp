// Private: JSON text made safe to show, for the CLI's output and the audit trail's
// `before` and `after`.
// Thread-safety and ownership: a pure function over the caller's text.
#ifndef APIKEYS_SRC_JSON_ESCAPE_HPP
#define APIKEYS_SRC_JSON_ESCAPE_HPP

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "text.hpp"

namespace apikeys::detail {

// `json` (UTF-8 JSON text) with every character that a terminal could act on, or that
// hides or reorders text, written as a \uXXXX escape: C0 controls (but tab and newline
// between tokens, JSON's whitespace; a carriage return there becomes a space), DEL, C1
// controls, U+2028 and U+2029, and the invisible and bidirectional characters
// (is_invisible_format(), and the soft hyphen, interlinear annotations and tag
// characters, invisible too); a byte that is not UTF-8 becomes \ufffd. Everything else
// is kept. In valid JSON such characters stand only inside strings, where the escape
// means the same: a parser reads the same values. A stored metadata value (spliced as
// stored) or a title written to a store by other means then cannot move a terminal's
// cursor, rewrite its screen, or break a log's line. Inline: the CLI uses it too, and
// the shared library exports no detail functions.
// With `one_line`, tabs and newlines between tokens become spaces too: the text then
// holds no line break at all, for one line of a log or a trail.
inline std::string escape_json_text(std::string_view json, bool one_line = false) {
  const auto escaped = [](std::uint32_t cp) {
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 ||
           is_invisible_format(cp) || cp == 0x00AD || (cp >= 0xFFF9 && cp <= 0xFFFB) ||
           (cp >= 0xE0000 && cp <= 0xE007F);
  };
  std::string out;
  out.reserve(json.size());
  // Where the text is: a tab or newline between tokens is JSON's whitespace (stored
  // metadata may hold some), kept as it is, and so is a carriage return, printed as a
  // space; inside a string none of them may stand raw.
  bool in_string = false;
  bool after_backslash = false;
  for (std::size_t i = 0; i < json.size();) {
    const auto c = static_cast<unsigned char>(json[i]);
    const bool was_in_string = in_string;
    if (after_backslash) {
      after_backslash = false;
    } else if (c == '"') {
      in_string = !in_string;
    } else if (c == '\\' && in_string) {
      after_backslash = true;
    }
    std::size_t len = c < 0x80                ? 1
                      : c >= 0xC2 && c < 0xE0 ? 2
                      : c >= 0xE0 && c < 0xF0 ? 3
                      : c >= 0xF0 && c < 0xF5 ? 4
                                              : 0;
    std::uint32_t cp = len == 1 ? c : c & (0x7Fu >> len);
    for (std::size_t k = 1; k < len; ++k) {
      const auto b = i + k < json.size() ? static_cast<unsigned char>(json[i + k]) : 0;
      if ((b & 0xC0) != 0x80) {
        len = 0;
        break;
      }
      cp = (cp << 6) | (b & 0x3Fu);
    }
    // Overlong, surrogate and out-of-range forms are not UTF-8 either.
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
      len = 0;
    }
    if (len == 0) {
      out += "\\ufffd";
      ++i;
      continue;
    }
    if (!was_in_string && (c == '\r' || (one_line && (c == '\t' || c == '\n')))) {
      out += ' ';  // whitespace still, but it cannot send the cursor back over the line
    } else if ((!was_in_string && (c == '\t' || c == '\n')) || !escaped(cp)) {
      out.append(json, i, len);
    } else {
      // Past U+FFFF (the tag characters), JSON writes a surrogate pair.
      char buf[16];
      if (cp > 0xFFFF) {
        const std::uint32_t v = cp - 0x10000;
        (void)std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x",
                            static_cast<unsigned>(0xD800 + (v >> 10)),
                            static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
      } else {
        (void)std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
      }
      out += buf;
    }
    i += len;
  }
  return out;
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_JSON_ESCAPE_HPP
