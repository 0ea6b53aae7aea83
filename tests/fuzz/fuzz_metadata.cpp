// fuzz_metadata: the metadata check (detail::metadata_error, check_metadata) against a
// reference written here: a small recursive-descent reader of strict JSON (RFC 8259)
// that counts depth, decodes member names (escapes included) to find duplicates, and
// checks UTF-8 by hand; nothing shared with the library's parser. The two must agree on
// accept or refuse, and on which rule refuses; messages name a rule, never the text.
// Input: the metadata text, whole.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/error.hpp"
#include "fuzz_support.hpp"
#include "metadata.hpp"

namespace {

constexpr const char* kBytes = "metadata must be at most 4096 bytes";
constexpr const char* kUtf8 = "metadata must be valid UTF-8";
constexpr const char* kJson = "metadata must be valid JSON";
constexpr const char* kObject = "metadata must be a JSON object";
constexpr const char* kDepth = "metadata must nest at most 8 levels deep";
constexpr const char* kDuplicate = "metadata must not repeat a member name within one object";

bool ref_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (b < 0x80) {
      ++i;
      continue;
    } else if (b >= 0xC2 && b <= 0xDF) {
      n = 1;
      cp = b & 0x1Fu;
    } else if (b >= 0xE0 && b <= 0xEF) {
      n = 2;
      cp = b & 0x0Fu;
    } else if (b >= 0xF0 && b <= 0xF4) {
      n = 3;
      cp = b & 0x07u;
    } else {
      return false;
    }
    if (s.size() - i - 1 < n) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0u) != 0x80u) return false;
      cp = (cp << 6) | (c & 0x3Fu);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)) return false;  // overlong
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;                        // surrogate
    if (cp > 0x10FFFF) return false;
    i += n + 1;
  }
  return true;
}

// Strict JSON reader. fail() keeps the first rule broken, in reading order.
class Reader {
 public:
  explicit Reader(std::string_view text) : s_(text) {}

  const char* check() {
    skip_ws();
    if (pos_ == s_.size()) return kJson;
    if (s_[pos_] != '{') return kObject;
    if (!value(0)) return error_;
    skip_ws();
    if (pos_ != s_.size()) return kJson;
    return nullptr;
  }

 private:
  bool fail(const char* rule) {
    if (error_ == nullptr) error_ = rule;
    return false;
  }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool eat(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return fail(kJson);
    pos_ += word.size();
    return true;
  }

  // `depth`: how many objects and arrays enclose this value.
  bool value(int depth) {
    skip_ws();
    if (pos_ == s_.size()) return fail(kJson);
    switch (s_[pos_]) {
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case '"': {
        std::string ignored;
        return string(ignored);
      }
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number();
    }
  }

  bool object(int depth) {
    ++pos_;  // '{'
    if (depth > 8) return fail(kDepth);
    std::set<std::string> names;
    skip_ws();
    if (eat('}')) return true;
    for (;;) {
      skip_ws();
      if (pos_ == s_.size() || s_[pos_] != '"') return fail(kJson);
      std::string name;
      if (!string(name)) return false;
      if (!names.insert(name).second) return fail(kDuplicate);
      skip_ws();
      if (!eat(':')) return fail(kJson);
      if (!value(depth)) return false;
      skip_ws();
      if (eat('}')) return true;
      if (!eat(',')) return fail(kJson);
    }
  }

  bool array(int depth) {
    ++pos_;  // '['
    if (depth > 8) return fail(kDepth);
    skip_ws();
    if (eat(']')) return true;
    for (;;) {
      if (!value(depth)) return false;
      skip_ws();
      if (eat(']')) return true;
      if (!eat(',')) return fail(kJson);
    }
  }

  bool hex4(std::uint32_t& out) {
    if (s_.size() - pos_ < 4) return fail(kJson);
    out = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[pos_++];
      out <<= 4;
      if (c >= '0' && c <= '9') {
        out |= static_cast<std::uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        out |= static_cast<std::uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        out |= static_cast<std::uint32_t>(c - 'A' + 10);
      } else {
        return fail(kJson);
      }
    }
    return true;
  }

  static void put_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // A string, decoded into `out` (the text is valid UTF-8 already).
  bool string(std::string& out) {
    ++pos_;  // '"'
    for (;;) {
      if (pos_ == s_.size()) return fail(kJson);
      const char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return fail(kJson);
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ == s_.size()) return fail(kJson);
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = 0;
          if (!hex4(cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(kJson);  // a lone low surrogate
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            std::uint32_t low = 0;
            if (!eat('\\') || !eat('u') || !hex4(low)) return fail(kJson);
            if (low < 0xDC00 || low > 0xDFFF) return fail(kJson);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: return fail(kJson);
      }
    }
  }

  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, whose value must be finite.
  bool number() {
    const std::size_t start = pos_;
    const auto digit = [&] { return pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9'; };
    eat('-');
    if (!digit()) return fail(kJson);
    if (!eat('0')) {
      while (digit()) ++pos_;
    }
    if (eat('.')) {
      if (!digit()) return fail(kJson);
      while (digit()) ++pos_;
    }
    if (eat('e') || eat('E')) {
      if (!eat('+')) eat('-');
      if (!digit()) return fail(kJson);
      while (digit()) ++pos_;
    }
    const std::string token(s_.substr(start, pos_ - start));
    if (!std::isfinite(std::strtod(token.c_str(), nullptr))) return fail(kJson);
    return true;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
  const char* error_ = nullptr;
};

const char* ref_error(std::string_view text) {
  if (text.empty()) return nullptr;
  if (text.size() > 4096) return kBytes;
  if (!ref_utf8(text)) return kUtf8;
  // The library refuses any NUL before it parses (its parser would take one for the end
  // of the text); the reader below would refuse it too, only perhaps under another rule.
  if (text.find('\0') != std::string_view::npos) return kJson;
  return Reader(text).check();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const char* expected = ref_error(text);
  const char* got = apikeys::detail::metadata_error(text);
  if ((expected == nullptr) != (got == nullptr) ||
      (expected != nullptr && std::string_view(expected) != got)) {
    std::fprintf(stderr, "reference: %s\nlibrary:   %s\n", expected ? expected : "accepted",
                 got ? got : "accepted");
  }
  FUZZ_CHECK((expected == nullptr) == (got == nullptr));
  if (got != nullptr) FUZZ_CHECK(std::string_view(expected) == got);
  try {
    apikeys::detail::check_metadata(text);
    FUZZ_CHECK(got == nullptr);
  } catch (const apikeys::Error& e) {
    FUZZ_CHECK(got != nullptr && std::string_view(e.what()) == got);
    FUZZ_CHECK(e.code() == apikeys::ErrorCode::invalid_argument);
  }
  return 0;
}
