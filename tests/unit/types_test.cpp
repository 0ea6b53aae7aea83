// Tests of the value types in apikeys/types.hpp and apikeys/error.hpp: Uuid,
// constant_time_equal, SecretString, format_utc and the to_string() names.
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "apikeys/cache.hpp"
#include "apikeys/error.hpp"
#include "apikeys/types.hpp"
#include "apikeys/validation_code.hpp"
#include "catch.hpp"
#include "test_support.hpp"

using apikeys::Digest;
using apikeys::Uuid;

namespace {

constexpr std::string_view kLower = "0123abcd-ef45-6789-abcd-ef0123456789";
constexpr std::string_view kUpper = "0123ABCD-EF45-6789-ABCD-EF0123456789";
constexpr std::array<std::uint8_t, 16> kBytes = {0x01, 0x23, 0xab, 0xcd, 0xef, 0x45, 0x67, 0x89,
                                                 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89};

std::string fmt_ms(std::int64_t ms) { return apikeys::format_utc(apikeys::from_unix_millis(ms)); }

}  // namespace

TEST_CASE("Uuid::parse accepts the canonical form in either case", "[types]") {
  SECTION("lower case") {
    const auto u = Uuid::parse(kLower);
    REQUIRE(u.has_value());
    CHECK(u->bytes() == kBytes);
  }
  SECTION("upper case") {
    const auto u = Uuid::parse(kUpper);
    REQUIRE(u.has_value());
    CHECK(u->bytes() == kBytes);
  }
  SECTION("nil and all-f") {
    const auto nil = Uuid::parse("00000000-0000-0000-0000-000000000000");
    REQUIRE(nil.has_value());
    CHECK(nil->is_nil());
    CHECK(*nil == Uuid());
    const auto ff = Uuid::parse("ffffffff-ffff-ffff-ffff-ffffffffffff");
    REQUIRE(ff.has_value());
    CHECK_FALSE(ff->is_nil());
    for (std::uint8_t b : ff->bytes()) CHECK(b == 0xff);
  }
}

TEST_CASE("Uuid::parse agrees with to_string() on every byte and refuses every non-digit",
          "[types]") {
  // Each byte value at each position round-trips, in both cases.
  for (std::size_t pos = 0; pos < 16; ++pos) {
    for (int v = 0; v < 256; ++v) {
      std::array<std::uint8_t, 16> bytes = kBytes;
      bytes[pos] = static_cast<std::uint8_t>(v);
      const Uuid id(bytes);
      std::string text = id.to_string();
      REQUIRE(Uuid::parse(text) == id);
      for (char& c : text) c = static_cast<char>(c >= 'a' && c <= 'f' ? c - 'a' + 'A' : c);
      REQUIRE(Uuid::parse(text) == id);
    }
  }
  // Every byte that is not a hex digit, at every digit position, is refused.
  const std::string good(kLower);
  for (std::size_t i = 0; i < good.size(); ++i) {
    if (good[i] == '-') continue;
    for (int c = 0; c < 256; ++c) {
      const bool digit = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
      std::string text = good;
      text[i] = static_cast<char>(c);
      INFO("position " << i << ", byte " << c);
      REQUIRE(Uuid::parse(text).has_value() == digit);
    }
  }
}

TEST_CASE("Uuid::parse rejects everything but the canonical form", "[types]") {
  const std::string good(kLower);
  SECTION("wrong lengths") {
    CHECK_FALSE(Uuid::parse("").has_value());
    CHECK_FALSE(Uuid::parse(good.substr(0, 35)).has_value());
    CHECK_FALSE(Uuid::parse(good + "0").has_value());
    CHECK_FALSE(Uuid::parse(good + " ").has_value());
    CHECK_FALSE(Uuid::parse(" " + good).has_value());
    CHECK_FALSE(Uuid::parse("{" + good + "}").has_value());
    CHECK_FALSE(Uuid::parse("urn:uuid:" + good).has_value());
  }
  SECTION("missing or misplaced dashes") {
    CHECK_FALSE(Uuid::parse("0123abcdef4567890abcdef0123456789").has_value());
    // 32 hex digits, no dashes at all.
    CHECK_FALSE(Uuid::parse("0123abcdef456789abcdef0123456789").has_value());
    // Right length (36) but a dash moved by one place.
    CHECK_FALSE(Uuid::parse("0123abc-def45-6789-abcd-ef0123456789").has_value());
    // Right length, a dash replaced by a hex digit and a hex digit by a dash.
    CHECK_FALSE(Uuid::parse("0123abcd0ef45-6789-abcd-ef012345678-").has_value());
    // Underscores instead of dashes.
    CHECK_FALSE(Uuid::parse("0123abcd_ef45_6789_abcd_ef0123456789").has_value());
  }
  SECTION("non-hex characters") {
    for (std::size_t i = 0; i < good.size(); ++i) {
      if (good[i] == '-') continue;
      for (char bad : {'g', 'G', 'z', ' ', '+', 'x'}) {
        std::string s = good;
        s[i] = bad;
        CHECK_FALSE(Uuid::parse(s).has_value());
      }
    }
  }
  SECTION("embedded NUL") {
    std::string s = good;
    s[5] = '\0';
    CHECK_FALSE(Uuid::parse(s).has_value());
    // A NUL after a valid UUID must not be ignored as a C-string terminator.
    std::string t = good;
    t.push_back('\0');
    CHECK_FALSE(Uuid::parse(t).has_value());
  }
  SECTION("high-bit bytes") {
    std::string s = good;
    s[0] = '\xc3';
    CHECK_FALSE(Uuid::parse(s).has_value());
  }
  SECTION("a 10 KB string") {
    std::string big;
    while (big.size() < 10 * 1024) big += good;
    CHECK_FALSE(Uuid::parse(big).has_value());
  }
}

TEST_CASE("Uuid::to_string is lower-case canonical and round-trips", "[types]") {
  const auto from_upper = Uuid::parse(kUpper);
  REQUIRE(from_upper.has_value());
  CHECK(from_upper->to_string() == kLower);
  CHECK(Uuid(kBytes).to_string() == kLower);
  CHECK(Uuid().to_string() == "00000000-0000-0000-0000-000000000000");
  for (int i = 0; i < 100; ++i) {
    const Uuid u = Uuid::random();
    const std::string s = u.to_string();
    REQUIRE(s.size() == 36);
    const auto back = Uuid::parse(s);
    REQUIRE(back.has_value());
    CHECK(*back == u);
  }
}

TEST_CASE("Uuid comparisons follow the bytes", "[types]") {
  std::array<std::uint8_t, 16> a{};
  std::array<std::uint8_t, 16> b{};
  b[15] = 1;
  CHECK(Uuid(a) == Uuid(a));
  CHECK(Uuid(a) != Uuid(b));
  CHECK(Uuid(a) < Uuid(b));
  CHECK_FALSE(Uuid(b) < Uuid(a));
  CHECK(Uuid(a).is_nil());
  CHECK_FALSE(Uuid(b).is_nil());
}

TEST_CASE("Uuid::random is version 4, variant 10xx, and unique", "[types]") {
  std::set<std::array<std::uint8_t, 16>> seen;
  for (int i = 0; i < 10'000; ++i) {
    const Uuid u = Uuid::random();
    const auto& b = u.bytes();
    REQUIRE((b[6] >> 4) == 4);
    REQUIRE((b[8] & 0xC0) == 0x80);
    REQUIRE_FALSE(u.is_nil());
    const std::string s = u.to_string();
    REQUIRE(s[14] == '4');
    REQUIRE((s[19] == '8' || s[19] == '9' || s[19] == 'a' || s[19] == 'b'));
    seen.insert(b);
  }
  CHECK(seen.size() == 10'000);
}

TEST_CASE("constant_time_equal compares every byte and the pepper id", "[types]") {
  Digest a;
  for (std::size_t i = 0; i < a.bytes.size(); ++i)
    a.bytes[i] = static_cast<std::uint8_t>(i * 7 + 1);
  a.pepper_id = 3;
  Digest b = a;
  CHECK(apikeys::constant_time_equal(a, b));
  CHECK(apikeys::constant_time_equal(b, a));

  SECTION("first byte differs") {
    b.bytes[0] ^= 0x01;
    CHECK_FALSE(apikeys::constant_time_equal(a, b));
  }
  SECTION("last byte differs") {
    b.bytes[31] ^= 0x80;
    CHECK_FALSE(apikeys::constant_time_equal(a, b));
  }
  SECTION("every single byte matters") {
    for (std::size_t i = 0; i < b.bytes.size(); ++i) {
      Digest c = a;
      c.bytes[i] = static_cast<std::uint8_t>(c.bytes[i] + 1);
      CHECK_FALSE(apikeys::constant_time_equal(a, c));
    }
  }
  SECTION("pepper id differs") {
    b.pepper_id = 4;
    CHECK_FALSE(apikeys::constant_time_equal(a, b));
    b.pepper_id = 3u + (1u << 31);  // Only a high bit differs.
    CHECK_FALSE(apikeys::constant_time_equal(a, b));
  }
  SECTION("default digests are equal") { CHECK(apikeys::constant_time_equal(Digest{}, Digest{})); }
}

TEST_CASE("SecretString holds bytes and moves out cleanly", "[types]") {
  SECTION("default is empty") {
    const apikeys::SecretString s;
    CHECK(s.empty());
    CHECK(s.size() == 0);
    CHECK(s.reveal().empty());
  }
  SECTION("reveal returns the bytes, embedded NUL included") {
    const std::string raw("sk_abc\0def", 10);
    const apikeys::SecretString s(raw);
    CHECK(s.size() == 10);
    CHECK_FALSE(s.empty());
    CHECK(s.reveal() == raw);
  }
  SECTION("the secret does not alias the source buffer") {
    std::string raw = "sk_0123456789";
    const apikeys::SecretString s(raw);
    raw.assign(raw.size(), 'x');
    CHECK(s.reveal() == "sk_0123456789");
  }
  SECTION("move construction empties the source") {
    apikeys::SecretString a("sk_secret_value");
    apikeys::SecretString b(std::move(a));
    CHECK(b.reveal() == "sk_secret_value");
    CHECK(b.size() == 15);
    CHECK(a.empty());  // NOLINT(bugprone-use-after-move): the contract under test.
    CHECK(a.size() == 0);
    CHECK(a.reveal().empty());
  }
  SECTION("move assignment replaces and empties the source") {
    apikeys::SecretString a("sk_first");
    apikeys::SecretString b("sk_second_longer");
    b = std::move(a);
    CHECK(b.reveal() == "sk_first");
    CHECK(a.empty());  // NOLINT(bugprone-use-after-move)
    apikeys::SecretString c;
    c = std::move(b);
    CHECK(c.reveal() == "sk_first");
    CHECK(b.empty());  // NOLINT(bugprone-use-after-move)
    // A moved-from object may be assigned again.
    b = apikeys::SecretString("sk_again");
    CHECK(b.reveal() == "sk_again");
  }
  SECTION("empty input") {
    const apikeys::SecretString s{std::string_view()};
    CHECK(s.empty());
  }
}

TEST_CASE("format_utc writes RFC 3339 UTC with milliseconds", "[types]") {
  CHECK(fmt_ms(0) == "1970-01-01T00:00:00.000Z");
  CHECK(fmt_ms(1) == "1970-01-01T00:00:00.001Z");
  CHECK(fmt_ms(1'700'000'000'123) == "2023-11-14T22:13:20.123Z");
  CHECK(fmt_ms(1'735'689'600'000) == "2025-01-01T00:00:00.000Z");
  SECTION("leap days") {
    CHECK(fmt_ms(951'825'600'001) == "2000-02-29T12:00:00.001Z");
    CHECK(fmt_ms(1'709'208'000'999) == "2024-02-29T12:00:00.999Z");
  }
  SECTION("beyond 32-bit time_t") {
    CHECK(fmt_ms(4'102'444'800'000) == "2100-01-01T00:00:00.000Z");
  }
  SECTION("before 1970: the millisecond part still counts forward") {
    CHECK(fmt_ms(-1) == "1969-12-31T23:59:59.999Z");
    CHECK(fmt_ms(-86'400'000) == "1969-12-31T00:00:00.000Z");
    CHECK(fmt_ms(-2'208'988'800'000) == "1900-01-01T00:00:00.000Z");
  }
  SECTION("sub-millisecond precision is truncated") {
    const auto t = apikeys::from_unix_millis(1'700'000'000'123) + std::chrono::microseconds(999);
    CHECK(apikeys::format_utc(t) == "2023-11-14T22:13:20.123Z");
  }
}

TEST_CASE("unix millisecond conversions round-trip", "[types]") {
  for (std::int64_t ms : {std::int64_t{0}, std::int64_t{1}, std::int64_t{-1},
                          std::int64_t{1'700'000'000'123}, std::int64_t{4'102'444'800'000}}) {
    CHECK(apikeys::to_unix_millis(apikeys::from_unix_millis(ms)) == ms);
  }
}

TEST_CASE("from_unix_millis saturates beyond TimePoint's range", "[types]") {
  // A corrupt or foreign database can hold any 64-bit number; converting it must not
  // overflow (UBSan found this through the corrupted-file fault test).
  using apikeys::TimePoint;
  CHECK(apikeys::from_unix_millis(std::numeric_limits<std::int64_t>::max()) == TimePoint::max());
  CHECK(apikeys::from_unix_millis(std::numeric_limits<std::int64_t>::min()) == TimePoint::min());
  CHECK(apikeys::from_unix_millis(107'874'663'835'634) == TimePoint::max());
  const std::int64_t last = apikeys::to_unix_millis(TimePoint::max());
  CHECK(apikeys::to_unix_millis(apikeys::from_unix_millis(last)) == last);
  CHECK(apikeys::from_unix_millis(last + 1) == TimePoint::max());
  const std::int64_t first = apikeys::to_unix_millis(TimePoint::min());
  CHECK(apikeys::to_unix_millis(apikeys::from_unix_millis(first)) == first);
  CHECK(apikeys::from_unix_millis(first - 1) == TimePoint::min());
}

TEST_CASE("to_string names every enumerator", "[types]") {
  using apikeys::ErrorCode;
  using apikeys::KeyStatus;
  using apikeys::ValidationCode;
  CHECK(std::string(apikeys::to_string(ErrorCode::invalid_argument)) == "invalid_argument");
  CHECK(std::string(apikeys::to_string(ErrorCode::not_found)) == "not_found");
  CHECK(std::string(apikeys::to_string(ErrorCode::already_exists)) == "already_exists");
  CHECK(std::string(apikeys::to_string(ErrorCode::busy)) == "busy");
  CHECK(std::string(apikeys::to_string(ErrorCode::storage)) == "storage");
  CHECK(std::string(apikeys::to_string(ErrorCode::crypto)) == "crypto");
  CHECK(std::string(apikeys::to_string(ErrorCode::not_supported)) == "not_supported");
  CHECK(std::string(apikeys::to_string(ErrorCode::conflict)) == "conflict");

  CHECK(std::string(apikeys::to_string(KeyStatus::active)) == "active");
  CHECK(std::string(apikeys::to_string(KeyStatus::revoked)) == "revoked");
  CHECK(std::string(apikeys::to_string(KeyStatus::disabled)) == "disabled");

  CHECK(std::string(apikeys::to_string(ValidationCode::valid)) == "valid");
  CHECK(std::string(apikeys::to_string(ValidationCode::malformed)) == "malformed");
  CHECK(std::string(apikeys::to_string(ValidationCode::not_found)) == "not_found");
  CHECK(std::string(apikeys::to_string(ValidationCode::wrong_secret)) == "wrong_secret");
  CHECK(std::string(apikeys::to_string(ValidationCode::expired)) == "expired");
  CHECK(std::string(apikeys::to_string(ValidationCode::revoked)) == "revoked");
  CHECK(std::string(apikeys::to_string(ValidationCode::error)) == "error");
  CHECK(std::string(apikeys::to_string(ValidationCode::disabled)) == "disabled");
  CHECK(std::string(apikeys::to_string(ValidationCode::insufficient_scope)) ==
        "insufficient_scope");
  CHECK(std::string(apikeys::to_string(ValidationCode::rate_limited)) == "rate_limited");
  CHECK(std::string(apikeys::to_string(ValidationCode::usage_exceeded)) == "usage_exceeded");

  SECTION("values outside the enumeration still give a non-null string") {
    CHECK(apikeys::to_string(static_cast<ErrorCode>(99)) != nullptr);
    CHECK(apikeys::to_string(static_cast<KeyStatus>(99)) != nullptr);
    CHECK(apikeys::to_string(static_cast<ValidationCode>(99)) != nullptr);
  }
}

TEST_CASE("Every ValidationCode up to the last has its own name", "[types]") {
  using apikeys::ValidationCode;
  constexpr auto last = static_cast<unsigned>(apikeys::kLastValidationCode);
  static_assert(last == 10, "moves only with the checklist in validation_code.hpp");
  std::set<std::string> names;
  for (unsigned v = 0; v <= last; ++v) {
    const auto code = static_cast<ValidationCode>(v);
    CHECK(apikeys::is_known_validation_code(static_cast<std::uint8_t>(v)));
    const std::string name = apikeys::to_string(code);
    CHECK(!name.empty());
    // Only `error` itself may be called "error" (the fallback for unknown values).
    CHECK((name != "error" || code == ValidationCode::error));
    names.insert(name);
  }
  CHECK(names.size() == last + 1);
  CHECK_FALSE(apikeys::is_known_validation_code(static_cast<std::uint8_t>(last + 1)));
  CHECK_FALSE(apikeys::is_known_validation_code(255));
}

TEST_CASE("ValidationCode values are stable", "[types]") {
  using apikeys::ValidationCode;
  CHECK(static_cast<int>(ValidationCode::valid) == 0);
  CHECK(static_cast<int>(ValidationCode::malformed) == 1);
  CHECK(static_cast<int>(ValidationCode::not_found) == 2);
  CHECK(static_cast<int>(ValidationCode::wrong_secret) == 3);
  CHECK(static_cast<int>(ValidationCode::expired) == 4);
  CHECK(static_cast<int>(ValidationCode::revoked) == 5);
  CHECK(static_cast<int>(ValidationCode::error) == 6);
  CHECK(static_cast<int>(ValidationCode::disabled) == 7);
  CHECK(static_cast<int>(ValidationCode::insufficient_scope) == 8);
  CHECK(static_cast<int>(ValidationCode::rate_limited) == 9);
  CHECK(static_cast<int>(ValidationCode::usage_exceeded) == 10);
  CHECK(static_cast<int>(apikeys::KeyStatus::disabled) == 2);
}

TEST_CASE("Error carries its code and message", "[types]") {
  const apikeys::Error e(apikeys::ErrorCode::not_found, "no such key");
  CHECK(e.code() == apikeys::ErrorCode::not_found);
  CHECK(std::string(e.what()).find("no such key") != std::string::npos);

  SECTION("copies keep the code") {
    const apikeys::Error copy = e;
    CHECK(copy.code() == apikeys::ErrorCode::not_found);
    apikeys::Error assigned(apikeys::ErrorCode::busy, "x");
    assigned = e;
    CHECK(assigned.code() == apikeys::ErrorCode::not_found);
  }
  SECTION("caught as std::runtime_error and as Error") {
    REQUIRE_THROWS_AS(throw apikeys::Error(apikeys::ErrorCode::busy, "later"), std::runtime_error);
    try {
      throw apikeys::Error(apikeys::ErrorCode::storage, "disk");
    } catch (const apikeys::Error& caught) {
      CHECK(caught.code() == apikeys::ErrorCode::storage);
    }
  }
}
