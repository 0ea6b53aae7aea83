// Tests of the private hex helper (src/hex.hpp) that the library, the CLI and the tests
// share: encoding in either letter case, strict decoding, and a round trip of every byte.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "catch.hpp"

#include "../../src/hex.hpp"

using apikeys::detail::hex_decode;
using apikeys::detail::hex_encode;
using apikeys::detail::hex_value;
using apikeys::detail::HexCase;

namespace {

// Every byte value once, in order.
std::string all_bytes() {
  std::string s(256, '\0');
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i);
  return s;
}

}  // namespace

TEST_CASE("hex: encodes in lower case, or upper on request", "[hex]") {
  CHECK(hex_encode(std::string_view("")).empty());
  const std::string_view sample("\x00\x01\x7f\x80\xab\xff", 6);
  CHECK(hex_encode(sample) == "00017f80abff");
  CHECK(hex_encode(sample, HexCase::upper) == "00017F80ABFF");

  SECTION("into a caller's buffer, writing exactly 2n characters") {
    const std::array<std::uint8_t, 3> bytes{0xde, 0xad, 0x01};
    std::array<char, 8> out{};
    out.fill('#');
    hex_encode(bytes.data(), bytes.size(), out.data());
    CHECK(std::string_view(out.data(), out.size()) == "dead01##");
    hex_encode(bytes.data(), bytes.size(), out.data(), HexCase::upper);
    CHECK(std::string_view(out.data(), out.size()) == "DEAD01##");
  }
}

TEST_CASE("hex: every byte survives a round trip in either case", "[hex]") {
  const std::string bytes = all_bytes();
  for (const HexCase letters : {HexCase::lower, HexCase::upper}) {
    const std::string hex = hex_encode(bytes, letters);
    REQUIRE(hex.size() == 512);
    const std::optional<std::string> back = hex_decode(hex);
    REQUIRE(back.has_value());
    CHECK(*back == bytes);
  }
  // Mixed case decodes too.
  CHECK(hex_decode("aBcDeF") == std::optional<std::string>("\xab\xcd\xef"));
}

TEST_CASE("hex: decoding rejects odd lengths and anything but hex digits", "[hex]") {
  CHECK(hex_decode("") == std::optional<std::string>(""));
  CHECK_FALSE(hex_decode("0").has_value());
  CHECK_FALSE(hex_decode("abc").has_value());
  for (const std::string_view bad : {"0g", "g0", "0x12", " 012", "012 ", "-1", "zz", "0:"}) {
    INFO(bad);
    CHECK_FALSE(hex_decode(bad).has_value());
  }
  SECTION("a bad digit anywhere, including a NUL or a byte above 0x7F") {
    for (std::size_t at = 0; at < 8; ++at) {
      for (const char c : {'\0', 'G', '@', '`', '/', ':', static_cast<char>(0xE0)}) {
        std::string hex = "0123abCD";
        hex[at] = c;
        INFO("at " << at << ", byte " << static_cast<int>(static_cast<unsigned char>(c)));
        CHECK_FALSE(hex_decode(hex).has_value());
        std::array<std::uint8_t, 4> out{};
        CHECK_FALSE(hex_decode(hex, out.data()));
      }
    }
  }
  SECTION("hex_value agrees with the decoder on every byte") {
    int digits = 0;
    for (int b = 0; b < 256; ++b) {
      const char c = static_cast<char>(b);
      const bool is_digit =
          (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
      const char pair[2] = {'0', c};
      CHECK(hex_decode(std::string_view(pair, 2)).has_value() == is_digit);
      CHECK((hex_value(c) >= 0) == is_digit);
      if (is_digit) ++digits;
    }
    CHECK(digits == 22);
    static_assert(hex_value('f') == 15 && hex_value('F') == 15 && hex_value('9') == 9, "");
    static_assert(hex_value('g') == -1, "");
  }
}
