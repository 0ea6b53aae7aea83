// fuzz_request: KeyManager's request rules (normalize_request and create) on arbitrary
// titles and descriptions. A reference implementation of the documented rules (ASCII
// trim; 1-255 / 0-1024 code points of valid UTF-8 per Unicode table 3-7; no C0, DEL or
// C1 controls; tab, LF and CR allowed in descriptions; no bidirectional formatting or
// zero-width characters) must agree on accept/refuse; an
// accepted request is stored and listed back byte-exactly; a refusal is
// Error(invalid_argument) whose message never echoes the submitted text.
// Input: expiry byte, title \0 description.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "fuzz_support.hpp"

namespace {

bool ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::string_view ref_trim(std::string_view s) {
  while (!s.empty() && ascii_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && ascii_space(s.back())) s.remove_suffix(1);
  return s;
}

// Decodes per Unicode 15, table 3-7 (well-formed UTF-8 byte sequences); calls
// `on_code_point` for each. False on any ill-formed sequence.
template <class F>
bool ref_decode(std::string_view s, F&& on_code_point) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  auto in = [](unsigned char b, unsigned lo, unsigned hi) { return b >= lo && b <= hi; };
  while (p < end) {
    const unsigned b0 = p[0];
    const std::size_t left = static_cast<std::size_t>(end - p);
    std::uint32_t cp = 0;
    std::size_t len = 0;
    if (b0 <= 0x7F) {
      cp = b0;
      len = 1;
    } else if (in(p[0], 0xC2, 0xDF) && left >= 2 && in(p[1], 0x80, 0xBF)) {
      cp = ((b0 & 0x1Fu) << 6) | (p[1] & 0x3Fu);
      len = 2;
    } else if (left >= 3 &&
               ((b0 == 0xE0 && in(p[1], 0xA0, 0xBF)) ||
                ((in(p[0], 0xE1, 0xEC) || in(p[0], 0xEE, 0xEF)) && in(p[1], 0x80, 0xBF)) ||
                (b0 == 0xED && in(p[1], 0x80, 0x9F))) &&
               in(p[2], 0x80, 0xBF)) {
      cp = ((b0 & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
      len = 3;
    } else if (left >= 4 &&
               ((b0 == 0xF0 && in(p[1], 0x90, 0xBF)) ||
                (in(p[0], 0xF1, 0xF3) && in(p[1], 0x80, 0xBF)) ||
                (b0 == 0xF4 && in(p[1], 0x80, 0x8F))) &&
               in(p[2], 0x80, 0xBF) && in(p[3], 0x80, 0xBF)) {
      cp = ((b0 & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
      len = 4;
    } else {
      return false;
    }
    on_code_point(cp);
    p += len;
  }
  return true;
}

// The code points CreateRequest documents as refused in both fields, one by one.
bool ref_invisible(std::uint32_t cp) {
  static constexpr std::uint32_t kRefused[] = {
      0x061C, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C,
      0x202D, 0x202E, 0x2060, 0x2066, 0x2067, 0x2068, 0x2069, 0xFEFF, 0x2061,
      0x2062, 0x2063, 0x2064, 0x034F, 0x180E, 0x115F, 0x1160, 0x3164, 0xFFA0};
  for (const std::uint32_t r : kRefused) {
    if (cp == r) return true;
  }
  return false;
}

// The documented rule for one text field.
bool ref_text_ok(std::string_view s, std::size_t max_code_points, bool allow_tab_newline) {
  std::size_t n = 0;
  bool control = false;
  bool invisible = false;
  const bool utf8 = ref_decode(s, [&](std::uint32_t cp) {
    ++n;
    const bool allowed = allow_tab_newline && (cp == '\t' || cp == '\n' || cp == '\r');
    if ((cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F)) && !allowed) control = true;
    if (ref_invisible(cp)) invisible = true;
  });
  return utf8 && n <= max_code_points && !control && !invisible;
}

// Every refusal message normalize_request may give (key_manager.cpp). Requiring one of
// these exactly proves that no part of the submitted text was echoed.
bool is_rule_message(std::string_view m) {
  static const std::string_view kRules[] = {
      "title must not be empty or blank",
      "title must be valid UTF-8",
      "title must be at most 255 characters",
      "title must not contain control characters",
      "title must not contain bidirectional formatting or zero-width characters",
      "description must be valid UTF-8",
      "description must be at most 1024 characters",
      "description must not contain control characters other than tab and newline",
      "description must not contain bidirectional formatting or zero-width characters",
      "expires_in_days must be between 1 and 365",
  };
  for (std::string_view r : kRules) {
    if (m == r) return true;
  }
  return false;
}

struct Fixture {
  std::shared_ptr<apikeys::MemoryStore> store = std::make_shared<apikeys::MemoryStore>();
  apikeys::KeyManager manager{store, std::make_shared<apikeys::HmacSha256Hasher>(fuzz::kPepper),
                              [] {
                                apikeys::KeyManagerOptions o;
                                o.validation.record_last_use = false;
                                return o;
                              }()};
  apikeys::Uuid account = *apikeys::Uuid::parse("12345678-1234-4234-8234-123456789abc");
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Fixture fx;
  fuzz::Reader in(data, size);
  const std::uint8_t expiry = in.byte();
  apikeys::CreateRequest request;
  request.title = std::string(in.field());
  request.description = std::string(in.rest());
  // 0: none; otherwise -2..400 so both edges (0, 1, 365, 366) are reachable.
  if (expiry != 0) request.expires_in_days = static_cast<int>(expiry) * 403 / 255 - 2;

  const std::string_view title = ref_trim(request.title);
  const bool want = !title.empty() && ref_text_ok(title, 255, false) &&
                    ref_text_ok(request.description, 1024, true) &&
                    (!request.expires_in_days ||
                     (*request.expires_in_days >= 1 && *request.expires_in_days <= 365));

  std::optional<apikeys::CreateRequest> normalized;
  try {
    normalized = apikeys::normalize_request(request);
  } catch (const apikeys::Error& e) {
    FUZZ_CHECK(e.code() == apikeys::ErrorCode::invalid_argument);
    // The message names the rule, never the value (the value might be a pasted secret).
    FUZZ_CHECK(is_rule_message(e.what()));
  }
  FUZZ_CHECK(normalized.has_value() == want);
  if (!normalized) {
    // create() applies the same rules and writes nothing.
    bool refused = false;
    try {
      (void)fx.manager.create(fx.account, request);
    } catch (const apikeys::Error& e) {
      refused = e.code() == apikeys::ErrorCode::invalid_argument;
    }
    FUZZ_CHECK(refused);
    FUZZ_CHECK(fx.store->size() == 0);
    return 0;
  }
  FUZZ_CHECK(normalized->title == title);
  FUZZ_CHECK(normalized->description == request.description);
  FUZZ_CHECK(normalized->expires_in_days == request.expires_in_days);

  // Stored and listed back byte-exactly, then deleted so the store stays empty.
  const apikeys::CreatedKey created = fx.manager.create(fx.account, request);
  FUZZ_CHECK(created.info.title == title);
  FUZZ_CHECK(created.info.description == request.description);
  const std::vector<apikeys::KeyInfo> listed = fx.manager.list(fx.account);
  FUZZ_CHECK(listed.size() == 1);
  FUZZ_CHECK(listed[0].title == title);
  FUZZ_CHECK(listed[0].description == request.description);
  FUZZ_CHECK(listed[0].expires_at.has_value() == request.expires_in_days.has_value());
  FUZZ_CHECK(fx.manager.validate(created.info.public_key, created.secret_key.reveal()).ok());
  (void)fx.manager.remove(fx.account, created.info.key_id);
  FUZZ_CHECK(fx.store->size() == 0);
  return 0;
}
